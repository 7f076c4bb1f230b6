"""The dialog that picks calibration data and options (every DATA form of design section 5)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.quant.ranges import SCHEMES

DATA_FILTER = "Calibration data (*.npy *.npz *.txt);;All files (*)"


def _floats(text: str):
    text = text.strip()
    return tuple(float(v) for v in text.split(",")) if text else None


class CalibrationDialog(QDialog):
    """Collects `data` (a DATA spec string) and calibration options; see `values()`."""

    def __init__(self, parent=None, data: str = "", scheme: str = "tf", folder: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Calibrate")
        self.setObjectName("calibrationDialog")
        self.folder = folder  # where the file dialogs start when the field holds no path yet
        self.data_edit = QLineEdit(data)
        self.data_edit.setObjectName("dataEdit")
        self.data_edit.setMinimumWidth(480)  # real paths are long
        self.data_edit.setToolTip(data)
        self.data_edit.setPlaceholderText("file.npy, file.npz, list.txt, an image folder, or random:N")
        browse_file = QPushButton("File…")
        browse_file.clicked.connect(self._browse_file)
        browse_folder = QPushButton("Image folder…")
        browse_folder.clicked.connect(self._browse_folder)
        row = QHBoxLayout()
        row.addWidget(self.data_edit, 1)
        row.addWidget(browse_file)
        row.addWidget(browse_folder)
        data_row = QWidget()
        data_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)

        self.samples = QSpinBox(objectName="samplesSpin", minimum=0, maximum=10_000_000, value=0)
        self.samples.setSpecialValueText("all")
        self.batch = QSpinBox(objectName="batchSpin", minimum=1, maximum=4096, value=8)
        self.scheme = QComboBox(objectName="schemeCombo")
        self.scheme.addItems(SCHEMES)
        self.scheme.setItemData(SCHEMES.index("tf_adjusted"),
                                "QNN's TF Adjusted: 8-bit asymmetric per-tensor weights keep both ends of their range "
                                "(set a weight's Symmetric and Per channel off in the editor); elsewhere it is tf",
                                Qt.ToolTipRole)
        self.scheme.setCurrentText(scheme)
        self.exact = QCheckBox("Bin every value (slower)", objectName="exactHistogramsCheck")
        self.exact.setToolTip("By default each batch adds a subsample of 16,384 values per tensor to its "
                              "histogram; min, max and counts are always exact.")

        form = QFormLayout()
        form.addRow("Data", data_row)
        form.addRow("Samples", self.samples)
        form.addRow("Batch size", self.batch)
        form.addRow("Range scheme", self.scheme)
        form.addRow("Histograms", self.exact)

        images = QGroupBox("Images (for a folder of images)")
        image_form = QFormLayout(images)
        self.image_size = QLineEdit(objectName="imageSizeEdit", placeholderText="model's size, or e.g. 224x224")
        self.mean = QLineEdit(objectName="meanEdit", placeholderText="0, or e.g. 0.485,0.456,0.406")
        self.std = QLineEdit(objectName="stdEdit", placeholderText="1, or e.g. 0.229,0.224,0.225")
        self.layout_combo = QComboBox(objectName="layoutCombo")
        self.layout_combo.addItems(["NCHW", "NHWC"])
        self.channels = QComboBox(objectName="channelsCombo")
        self.channels.addItems(["rgb", "bgr", "gray"])
        image_form.addRow("Size (HxW)", self.image_size)
        image_form.addRow("Mean", self.mean)
        image_form.addRow("Std", self.std)
        image_form.addRow("Layout", self.layout_combo)
        image_form.addRow("Channels", self.channels)

        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setText("Calibrate")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(images)
        layout.addWidget(buttons)

    def start_folder(self) -> str:
        """The folder of the path in the field, else the model's."""
        text = self.data_edit.text().strip()
        if text and not text.startswith("random:"):
            here = Path(text).expanduser()
            folder = here if here.is_dir() else here.parent
            if folder.is_dir():
                return str(folder)
        return self.folder

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Calibration data", self.start_folder(), DATA_FILTER)
        if path:
            self.data_edit.setText(path)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images", self.start_folder())
        if path:
            self.data_edit.setText(path)

    def values(self) -> tuple[str, dict]:
        """(data spec, options for MainWindow.calibrate). Raises ValueError for unreadable fields."""
        options = {"batch_size": self.batch.value(), "scheme": self.scheme.currentText()}
        if self.exact.isChecked():
            options["exact_histograms"] = True
        if self.samples.value():
            options["samples"] = self.samples.value()
        size = self.image_size.text().strip().lower().replace("x", ",")
        if size:
            try:
                parts = [int(v) for v in size.split(",")]
            except ValueError:
                raise ValueError("image size takes HxW in pixels, e.g. 224x224") from None
            options["image_size"] = (parts[0], parts[-1])
        try:
            if _floats(self.mean.text()):
                options["mean"] = _floats(self.mean.text())
            if _floats(self.std.text()):
                options["std"] = _floats(self.std.text())
        except ValueError:
            raise ValueError("mean and std take numbers separated by commas, e.g. 0.5,0.5,0.5") from None
        options["layout"] = self.layout_combo.currentText()
        options["channels"] = self.channels.currentText()
        return self.data_edit.text().strip(), options
