"""What the file menu does: file dialogs, the calibration dialog, drag and drop, and the exports
(in workers). Tests call the methods directly and never open these dialogs."""
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
        path, _ = QFileDialog.getOpenFileName(self, "Open ONNX model", self.start_folder(), ONNX_FILTER)
        if path:
            self.open_model(path)

    def _ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import encodings", self.start_folder(), JSON_FILTER)
        if path:
            self.import_encodings(path)

    def start_folder(self) -> str:
        """Where file dialogs open: the model's folder, except for the bundled example, whose folder is
        inside the installed package (nothing of the user's belongs there): then the home folder."""
        path = self.project.model_path
        if not path or Path(path).resolve() == EXAMPLE_MODEL.resolve():
            return str(Path.home())
        return str(Path(path).resolve().parent)

    def _default_path(self, suffix: str) -> str:
        path = self.project.model_path
        return str(Path(self.start_folder()) / Path(path).with_suffix(suffix).name) if path else ""

    def _ask_export_encodings(self) -> None:
        from .export_dialog import ask_encodings_export

        choice = ask_encodings_export(self, self._default_path(".encodings.json"), self.project.target)
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

    def _ask_save_session(self) -> bool:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", self._default_path(".qinspect"), SESSION_FILTER)
        return bool(path) and self.save_session(path)

    def _ask_calibrate(self) -> None:
        if self.project.index is None:
            messages.notify(self, "warning", "No model", "Open a model before calibrating.")
            return
        example = str(EXAMPLE_DATA) if self.project.model_path == str(EXAMPLE_MODEL) else ""
        # after a failed run the path the user typed is still there to correct
        default = self._last_data or self.project.data_spec or example
        dialog = CalibrationDialog(self, default, self.project.plan.defaults.act_scheme, self.start_folder())

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

    # --- exports ---------------------------------------------------------------------------------
    def export_encodings(self, path, version: str = "0.6.1", only_edited: bool = False,
                         bias_encodings: bool | None = None) -> bool:
        """Write the overrides JSON for the project's target in a worker; `exportFinished` tells how it
        ended. `bias_encodings` None follows the target (qnn-htp leaves derived biases out)."""
        from ..core.io.overrides import file_encodings, format_warnings, quantizer_args, write_overrides

        if not self._can_export():
            return False
        if only_edited and version in ("2.0.0", "2.1.0"):
            messages.notify(self, "warning", "Not exported", "A partial 2.0.0 file would make every tensor it leaves "
                            "out float (in 2.0.0 a missing entry means 'not quantized') and cannot state float "
                            "edits. Export all tensors in 2.0.0, or the edited ones in 1.0.0.")
            return False
        project, index = self.project, self.project.index
        encodings = file_encodings(index, dict(project.encodings), target=project.target,
                                   edited=project.plan.edited(), only_edited=only_edited,
                                   bias_encodings=bias_encodings, version=version)
        kinds = {n: index.targets[n].kind for n in encodings}
        target, args = project.target, quantizer_args(project.plan.defaults)
        warnings = format_warnings(encodings, version)
        self._start(
            lambda progress: write_overrides(path, encodings, kinds, version, args, protect=[index.path],
                                             target=target, partial=only_edited),
            "export",
            lambda out: self._exported(str(out), warnings),
            lambda: None,
        )
        return True

    def export_qdq(self, path) -> bool:
        """Write a QDQ ONNX model in a worker; `exportFinished` tells how it ended."""
        from ..core.io.qdq import export_qdq

        if not self._can_export():
            return False
        index, encodings, target = self.project.index, dict(self.project.encodings), self.project.target
        self._start(
            lambda progress: export_qdq(index, encodings, path, protect=[index.path], progress=progress,
                                        target=target),
            "QDQ export",
            lambda report: self._exported(str(path), report.warnings),
            lambda: None,
        )
        return True

    def _ask_export_qat(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export for QAT: choose an empty folder", self.start_folder())
        if folder:
            self.export_qat_start(folder)

    def export_qat_start(self, folder) -> bool:
        """Write what a QAT run starts from into `folder` in a worker (core/io/qat.py): model.onnx,
        encodings.json (1.0.0) and qat_plan.json with the frozen and float tensors marked."""
        from ..core.io.qat import write_qat_start
        from ..core.plan import PrecisionPlan

        if not self._can_export():
            return False
        index, encodings = self.project.index, dict(self.project.encodings)
        plan = PrecisionPlan.from_dict(self.project.plan.to_dict())
        self._start(lambda progress: write_qat_start(folder, index, encodings, plan), "QAT export",
                    lambda files: self._exported(str(folder)), lambda: None)
        return True

    def _ask_compare_qat(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Compare with a QAT result: the folder with its model and "
                                                  "encodings", self.start_folder())
        if folder:
            self.compare_qat_result(folder)

    def compare_qat_result(self, folder) -> bool:
        """What a QAT run ends with, as configuration B: the folder's fine-tuned model and its encodings
        in the Compare panel (against the window's encodings, on the calibration data)."""
        from ..core.errors import QInspectError
        from ..core.io.qat import qat_result_files

        try:
            model, encodings = qat_result_files(folder)
        except QInspectError as exc:
            messages.notify(self, "warning", "Not compared", str(exc))
            return False
        self._show_dock(self.compare_dock)
        return self.compare.compare_with(encodings, model=model)

    def _ask_export_report(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export report", self._default_path(".html"),
                                              "HTML reports (*.html);;All files (*)")
        if path:
            self.export_report(path)

    def export_report(self, path, samples: int = 64) -> bool:
        """Compare the project's encodings with the float model on the calibration data (a worker) and
        write an HTML report: the target, the plan's edits, the PTQ steps, the errors per output and
        tensor with histograms, and the sensitivity ranking when one was run (said to be the last)."""
        from ..core.analysis.compare import compare
        from ..core.calib.data import open_data
        from ..core.io.report import write_report
        from ..core.plan import PrecisionPlan

        if not self._can_export():
            return False
        project = self.project
        if not project.data_spec:
            messages.notify(self, "warning", "No data", "The report measures the error on the calibration data: "
                            "calibrate on a data file first.")
            return False
        index, encodings, target = project.index, dict(project.encodings), project.target
        spec, options = project.data_spec, dict(project.data_options)
        plan, steps = PrecisionPlan.from_dict(project.plan.to_dict()), list(project.steps)  # a snapshot
        ranking = list(self.sensitivity.entries) or None
        info = {"note": "as last run in the window (edits made since are not in it)"} if ranking else None

        def job(progress):
            with open_data(spec, index.inputs, **options) as data:
                comparison = compare(index, encodings, data, samples=samples, progress=progress, target=target)
            return write_report(path, comparison, protect=[index.path], model=index.path, data=str(spec),
                                target=target, plan=plan, steps=steps, sensitivity=ranking, sensitivity_info=info,
                                title=f"qinspect report: {Path(index.path or 'model').name}")

        self._start(job, "report", lambda out: self._exported(str(out)), lambda: None)
        return True

    def _can_export(self) -> bool:
        if self.project.index is None:
            messages.notify(self, "warning", "No model", "Open a model first.")
            return False
        if not self.project.stats:
            messages.notify(self, "warning", "Not calibrated", "Calibrate the model first (Calibration > Calibrate…).")
            return False
        return True

    def _exported(self, path: str, warnings=()) -> None:
        warnings = list(warnings)
        if warnings:
            messages.notify(self, "warning", "Exported with warnings", "\n".join(warnings[:20]))
        self.statusBar().showMessage(f"Wrote {path}", 8000)
        self.exportFinished.emit(True, path)
