"""The small dialog for exporting encodings: where, which format, all or only edited tensors, and
whether bias encodings go in (the target's default)."""
from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
)

from ..core.io.overrides import DEFAULT_VERSION, VERSIONS
from ..core.targets.profiles import get_target


class ExportEncodingsDialog(QDialog):
    def __init__(self, parent=None, path: str = "", target: str | None = None):
        super().__init__(parent)
        self.setWindowTitle("Export encodings")
        self.path = QLineEdit(path, objectName="exportPathEdit")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        self.version = QComboBox(objectName="versionCombo")
        self.version.addItems(VERSIONS)
        self.version.setCurrentText(DEFAULT_VERSION)
        self.version.setToolTip("0.6.1: QNN/SNPE --quantization_overrides (widest support); "
                                "1.0.0: AIMET 2.x default; 2.0.0: QAIRT Quantizer V2")
        self.only_edited = QCheckBox("Only the tensors I edited (a partial override file)", objectName="onlyEditedCheck")
        profile = get_target(target)
        self.biases = QCheckBox("Bias encodings", objectName="biasEncodingsCheck")
        self.biases.setChecked(profile.bias_encodings)
        self.biases.setToolTip(f"{profile.name}: " + ("writes them" if profile.bias_encodings else
                               "the converter derives int32 biases itself and AIMET's strict loader refuses "
                               "files that have them; edited biases are always written"))
        form = QFormLayout(self)
        form.addRow("File", row)
        form.addRow("Format", self.version)
        form.addRow("", self.only_edited)
        form.addRow("", self.biases)
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export encodings", self.path.text(), "JSON (*.json)")
        if path:
            self.path.setText(path)

    def values(self) -> tuple[str, str, bool, bool]:
        return (self.path.text().strip(), self.version.currentText(), self.only_edited.isChecked(),
                self.biases.isChecked())


def ask_encodings_export(parent, default_path: str, target: str | None = None):
    """(path, version, only_edited, bias_encodings), or None when the user cancels."""
    dialog = ExportEncodingsDialog(parent, default_path, target)
    if dialog.exec() != QDialog.Accepted or not dialog.values()[0]:
        return None
    return dialog.values()
