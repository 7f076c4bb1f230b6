"""What the Analysis > PTQ steps menu does: a step's options dialog, the step in a worker
(statistics computed again there when it changed the activations), the result as one undoable
command, its notes, and the float model export. Tests call `run_ptq_step` directly."""
from __future__ import annotations

import copy

from PySide6.QtWidgets import QFileDialog

from . import messages
from .widgets import took
from ..core.commands import ApplyStep
from ..core.steps import ORDER, TITLES, refusal, run_step
from .file_actions import ONNX_FILTER
from .ptq_dialog import PtqDialog

SHORTCUTS = {"cle": "Ctrl+Alt+E", "seq-mse": "Ctrl+Alt+M", "adaround": "Ctrl+Alt+A", "bias-correction": "Ctrl+Alt+B"}
ACTION_NAMES = {"cle": "actionCle", "seq-mse": "actionSeqMse", "adaround": "actionAdaround",
                "bias-correction": "actionBiasCorrection"}


class PtqActionsMixin:
    """Mixed into MainWindow; uses its project, stack, _start, _busy, live_error and ptqFinished."""

    def _build_ptq_menu(self, analysis) -> None:
        menu = analysis.addMenu("&PTQ steps")
        menu.setObjectName("ptqMenu")
        menu.aboutToShow.connect(self._update_ptq_actions)
        self.ptq_actions = {}
        for step in ORDER:
            action = self._action(ACTION_NAMES[step], TITLES[step][0].upper() + TITLES[step][1:] + "…",
                                  lambda _=False, s=step: self._ask_ptq_step(s), SHORTCUTS[step], menu)
            self.ptq_actions[step] = action
        self._ptq_thread = None

    def ptq_refusal(self, step: str, options: dict | None = None) -> str | None:
        p = self.project
        if self._ptq_thread is not None:
            return "another PTQ step is running"
        if self._calibration is not None:
            return "a calibration is running"
        return refusal(step, p.index, [r.step for r in p.steps], bool(p.stats), bool(p.data_spec), options)

    def _update_ptq_actions(self) -> None:
        for step, action in self.ptq_actions.items():
            why = self.ptq_refusal(step)
            action.setToolTip(why or "")
            action.setStatusTip(why or "")

    def _ask_ptq_step(self, step: str) -> None:
        dialog = PtqDialog(step, self.ptq_refusal(step), self)
        dialog.accepted.connect(lambda: self.run_ptq_step(step, **dialog.values()))
        dialog.open()

    def run_ptq_step(self, step: str, **options) -> bool:
        """Run a step in a worker; `ptqFinished` tells how it ended. The result is one undoable edit."""
        from ..core.calib.calibrate import calibrate
        from ..core.calib.data import open_data

        if self._busy(f"run {TITLES[step]}"):
            return False
        why = self.ptq_refusal(step, options)
        if why:
            messages.notify(self, "warning", f"{TITLES[step][0].upper() + TITLES[step][1:]} not run", why)
            return False
        p = self.project
        # copies: the user may go on editing while the step runs in its thread
        index, plan, stats, done = p.index, copy.deepcopy(p.plan), dict(p.stats), [r.step for r in p.steps]
        spec, data_options = p.data_spec, dict(p.data_options)
        before = self.live_error.comparison

        def recalibrate(new_index, progress):
            source = open_data(spec, new_index.inputs, **data_options)
            try:
                result = calibrate(new_index, source, progress=progress)
            finally:
                source.close()
            return result.stats, result.samples

        def job(progress):
            data = open_data(spec, index.inputs, **data_options) if spec else None
            try:
                return run_step(step, index, plan, stats, data, options=options, done=done,
                                recalibrate=recalibrate if spec else None, progress=progress)
            finally:
                if data is not None:
                    data.close()

        def finished(outcome):
            self._ptq_thread = None
            if self.project.index is not index:
                self.ptqFinished.emit(False)  # the model changed meanwhile
                return
            self.stack.push(ApplyStep(outcome))
            if before is not None and before.outputs:
                self.live_error.baseline = (outcome.record.title, min(o.sqnr_db for o in before.outputs.values()))
            self.statusBar().showMessage(f"{outcome.record.title} in {took(outcome.record.seconds)} "
                                         "(Ctrl+Z undoes it)", 10000)
            messages.notify(self, "info", outcome.record.title[0].upper() + outcome.record.title[1:],
                            "\n".join(outcome.record.notes))
            self.ptqFinished.emit(True)

        def stopped():
            self._ptq_thread = None
            self.ptqFinished.emit(False)

        self._ptq_thread = self._start(job, TITLES[step], finished, stopped)
        return True

    # --- export -----------------------------------------------------------------------------------
    def export_float_model(self, path) -> bool:
        from ..core.io.qdq import save_model

        if self.project.index is None:
            messages.notify(self, "warning", "No model", "Open a model first.")
            return False
        return self._write(lambda: save_model(self.project.index, path), "Cannot export the float model")

    def _ask_export_float_model(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export float model", self._default_path(".float.onnx"), ONNX_FILTER)
        if path:
            self.export_float_model(path)
