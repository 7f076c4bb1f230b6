"""What the menu actions do before they call the window's methods: file dialogs, the calibration
dialog, drag and drop. Tests call the methods directly and never open these dialogs."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from . import messages
from .calibration_dialog import CalibrationDialog

EXAMPLE_MODEL = Path(__file__).resolve().parents[2] / "resources" / "digits_cnn.onnx"
EXAMPLE_DATA = EXAMPLE_MODEL.with_name("digits_calib.npz")
ONNX_FILTER = "ONNX models (*.onnx);;All files (*)"
JSON_FILTER = "Encodings JSON (*.json);;All files (*)"
SESSION_FILTER = "qinspect sessions (*.qinspect);;All files (*)"


class FileActionsMixin:
    """Mixed into MainWindow; uses its project, open_model, import_encodings, export_* and calibrate."""

    # --- drag and drop ---------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if any(u.toLocalFile().endswith((".onnx", ".qinspect", ".json")) for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for url in event.mimeData().urls():
            path = url.toLocalFile()
            if path.endswith(".onnx"):
                self.open_model(path)
            elif path.endswith(".qinspect"):
                self.open_session(path)
            elif path.endswith(".json"):
                self.import_encodings(path)
            event.acceptProposedAction()
            return

    # --- dialogs (not used by tests: they call the methods above directly) ------------------------
    def _ask_open(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open ONNX model", "", ONNX_FILTER)
        if path:
            self.open_model(path)

    def _ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import encodings", "", JSON_FILTER)
        if path:
            self.import_encodings(path)

    def _default_path(self, suffix: str) -> str:
        path = self.project.model_path
        return str(Path(path).with_suffix(suffix)) if path else ""

    def _ask_export_encodings(self) -> None:
        from .export_dialog import ask_encodings_export

        choice = ask_encodings_export(self, self._default_path(".encodings.json"))
        if choice:
            self.export_encodings(*choice)

    def _ask_export_qdq(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export QDQ model", self._default_path(".qdq.onnx"), ONNX_FILTER)
        if path:
            self.export_qdq(path)

    def _ask_open_session(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open session", "", SESSION_FILTER)
        if path:
            self.open_session(path)

    def _ask_save_session(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", self._default_path(".qinspect"), SESSION_FILTER)
        if path:
            self.save_session(path)

    def _ask_calibrate(self) -> None:
        if self.project.index is None:
            messages.notify(self, "warning", "No model", "Open a model before calibrating.")
            return
        default = self.project.data_spec or (str(EXAMPLE_DATA) if self.project.model_path == str(EXAMPLE_MODEL) else "")
        dialog = CalibrationDialog(self, default, self.project.plan.defaults.act_scheme)

        def accepted():
            try:
                data, options = dialog.values()
            except ValueError as exc:
                messages.notify(self, "error", "Calibration options", str(exc))
                return
            if not data:
                messages.notify(self, "warning", "No data", "Choose calibration data first.")
                return
            self.calibrate(data, **options)

        dialog.accepted.connect(accepted)
        dialog.open()

