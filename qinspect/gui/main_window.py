"""The main window: opens models, runs calibration and exports in workers, hosts the panels.

Scripts and tests drive it through `open_model`, `calibrate`, `export_encodings`, `export_qdq`,
`save_session`, `open_session` and `import_encodings`, which are what the menu actions call after
their file dialogs.

Panels (docks, View menu): the graph (`graphDock` holding `graphView`), sensitivity
(`sensitivityPanel`) and mixed precision search (`paretoPanel`). The live error (`LiveError`)
re-measures float vs quantized on a few calibration samples after calibration and after every
edit, fills the table's SQNR column, colours the graph and shows the output SQNR in the status
bar (`outputSqnrLabel`); `errorUpdated` is emitted when new numbers are shown.
"""
from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QDeadlineTimer, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFrame,
    QLabel,
    QMainWindow,
    QProgressBar,
    QScrollArea,
    QSplitter,
    QWidget,
)

from ..core.commands import CommandStack, SetDefaults, SetEdits
from ..core.errors import QInspectError
from ..core.plan import refusals
from ..core.project import Project
from . import messages, settings
from .error_panel import LiveError
from .file_actions import EXAMPLE_DATA, EXAMPLE_MODEL, FileActionsMixin
from .panels import PanelsMixin
from .ptq_actions import PtqActionsMixin
from .histogram import HistogramPanel
from .precision_editor import PrecisionEditor
from .target_bar import TargetBar, Verifier
from .tensor_table import TensorTable
from .widgets import ElidedLabel, took
from .workers import JobThread

__all__ = ["MainWindow", "EXAMPLE_MODEL", "EXAMPLE_DATA"]


class MainWindow(FileActionsMixin, PtqActionsMixin, PanelsMixin, QMainWindow):
    calibrationFinished = Signal(bool)  # True: new statistics applied; False: cancelled or failed
    ptqFinished = Signal(bool)  # True: a PTQ step's result was applied; False: refused, cancelled or failed
    exportFinished = Signal(bool, str)  # ok, path or error message
    errorUpdated = Signal()  # the live error shows new numbers (table SQNR column, status bar, graph)

    def __init__(self, project: Project | None = None):
        super().__init__()
        self.setObjectName("MainWindow")
        self.setWindowTitle("qinspect")
        self.setAcceptDrops(True)
        self.resize(1400, 850)
        self.project = project or Project()
        self.stack = CommandStack(self.project)
        self.jobs: list[JobThread] = []
        self._session_path: str | None = None  # where Save puts the session without asking
        self._unsaved_stats = False  # a calibration no saved session holds
        self._last_data: str | None = None  # the data of the last calibration started, failed ones too
        self.flagged: list = []  # calibration diagnostics (blown-up ranges) the user may keep in float
        self._calibration: JobThread | None = None

        self.table = TensorTable(self.project)
        self.histogram = HistogramPanel(self.project, self.stack)
        self.editor = PrecisionEditor(self.project, self.stack)
        right = QSplitter(Qt.Vertical)
        right.addWidget(self.histogram)
        # The editor scrolls rather than squeezing the histogram on a 768-pixel screen.
        editor_area = QScrollArea(objectName="editorScroll", widgetResizable=True, frameShape=QFrame.NoFrame)
        editor_area.setWidget(self.editor)
        editor_area.setMinimumHeight(120)
        right.addWidget(editor_area)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 2)
        right.setChildrenCollapsible(False)
        self.histogram.plot.setMinimumHeight(200)
        self.setCentralWidget(self.table)
        # The histogram and editor keep the window's full height: they sit in a fixed right dock
        # that owns the bottom-right corner, so the bottom panels (graph, sensitivity, search)
        # only take room under the table.
        self.inspector_dock = QDockWidget("Tensor", self)
        self.inspector_dock.setObjectName("inspectorDock")
        self.inspector_dock.setWidget(right)
        self.inspector_dock.setFeatures(QDockWidget.NoDockWidgetFeatures)
        self.inspector_dock.setTitleBarWidget(QWidget())
        self.addDockWidget(Qt.RightDockWidgetArea, self.inspector_dock)
        self.setCorner(Qt.BottomRightCorner, Qt.RightDockWidgetArea)
        self.setCorner(Qt.TopRightCorner, Qt.RightDockWidgetArea)
        self.resizeDocks([self.inspector_dock], [580], Qt.Horizontal)
        self.table.selectionChanged.connect(self._on_selection)

        self.progress = QProgressBar(objectName="calibrationProgress")
        self.progress.setMaximumWidth(260)
        self.progress.setVisible(False)
        self.eta = QLabel(objectName="etaLabel")
        self.summary = ElidedLabel(objectName="summaryLabel")
        self.live_error = LiveError(self.project, self)
        self.output_sqnr = self.live_error.label
        self.verifier = Verifier(self.project, self._start, self)
        self.statusBar().addWidget(self.summary, 1)
        self.statusBar().addPermanentWidget(self.verifier.label)
        self.statusBar().addPermanentWidget(self.output_sqnr)
        self.statusBar().addPermanentWidget(self.eta)
        self.statusBar().addPermanentWidget(self.progress)

        self._build_panels()
        self._build_actions()
        self.target_bar = TargetBar(self.project, self.stack, self)
        self.target_bar.addAction(self.actionVerify)
        self.addToolBar(self.target_bar)
        self.project.subscribe(self._on_project)
        self.stack.subscribe(self._update_undo)
        self.stack.subscribe(self._update_modified)
        self._update_undo()
        self._update_title()
        self._update_summary()

    # --- actions -------------------------------------------------------------------------------
    def _action(self, name, text, slot, shortcut=None, menu=None) -> QAction:
        action = QAction(text, self)
        action.setObjectName(name)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        self.addAction(action)  # shortcuts work even when the menu bar is hidden
        if menu is not None:
            menu.addAction(action)
        return action

    def _build_actions(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        self.actionOpenModel = self._action("actionOpenModel", "&Open model…", self._ask_open, QKeySequence.Open, file)
        self.recentMenu = file.addMenu("Open &recent")
        self.recentMenu.setObjectName("recentMenu")
        self.recentMenu.aboutToShow.connect(self._fill_recent)
        self.actionOpenExample = self._action("actionOpenExample", "Open the &example model", self.open_example, None, file)
        file.addSeparator()
        self.actionImportEncodings = self._action("actionImportEncodings", "&Import encodings…", self._ask_import, "Ctrl+I", file)
        self.actionExportEncodings = self._action("actionExportEncodings", "&Export encodings…", self._ask_export_encodings, "Ctrl+E", file)
        self.actionExportQdq = self._action("actionExportQdq", "Export &QDQ model…", self._ask_export_qdq, "Ctrl+Shift+E", file)
        self.actionExportReport = self._action("actionExportReport", "Export &report (HTML)…", self._ask_export_report,
                                               None, file)
        self.actionExportQat = self._action("actionExportQat", "Export for Q&AT…", self._ask_export_qat, None, file)
        self.actionCompareQat = self._action("actionCompareQat", "Compare with QAT res&ult…", self._ask_compare_qat,
                                             None, file)
        self.actionCompareQat.setToolTip("The fine-tuned model and encodings a QAT run saved in a folder, as B in "
                                         "the Compare panel")
        self.actionExportFloatModel = self._action("actionExportFloatModel", "Export &float model…",
                                                   self._ask_export_float_model, None, file)
        self.actionExportFloatModel.setToolTip("The float model as the target runs it, with the PTQ steps applied: "
                                               "the model the exported encodings name")
        file.addSeparator()
        self.actionOpenSession = self._action("actionOpenSession", "Open &session…", self._ask_open_session, "Ctrl+Shift+O", file)
        self.actionSaveSession = self._action("actionSaveSession", "&Save session…", self._ask_save_session, QKeySequence.Save, file)
        file.addSeparator()
        self._action("actionQuit", "&Quit", self.close, QKeySequence.Quit, file)
        edit = bar.addMenu("&Edit")
        self.actionUndo = self._action("actionUndo", "&Undo", self.stack.undo, QKeySequence.Undo, edit)
        self.actionRedo = self._action("actionRedo", "&Redo", self.stack.redo, "Ctrl+Shift+Z", edit)
        calib = bar.addMenu("&Calibration")
        self.actionCalibrate = self._action("actionCalibrate", "&Calibrate…", self._ask_calibrate, "Ctrl+R", calib)
        self.actionCancel = self._action("actionCancel", "C&ancel", self.cancel, "Esc", calib)
        self.actionCancel.setEnabled(False)
        calib.addSeparator()
        self.actionKeepFlaggedFloat = self._action(
            "actionKeepFlaggedFloat", "Keep &flagged tensors in float", self.keep_flagged_in_float, None, calib)
        self.actionKeepFlaggedFloat.setEnabled(False)
        self.actionKeepFlaggedFloat.setToolTip("Tensors whose ranges calibration found blown up (masks, sentinels)")
        analysis = bar.addMenu("&Analysis")
        self.actionRunSensitivity = self._action("actionRunSensitivity", "Run &sensitivity",
                                                 self._run_sensitivity, "Ctrl+Shift+R", analysis)
        self.actionParetoSearch = self._action("actionParetoSearch", "Mixed precision &search",
                                               self._run_pareto, "Ctrl+Shift+P", analysis)
        self.actionMeasureError = self._action("actionMeasureError", "Re-measure the &error",
                                               lambda: self.live_error.schedule(None), "F5", analysis)
        self.actionVerify = self._action("actionVerify", "&Verify in onnxruntime", lambda: self.verifier.run(),
                                         "Ctrl+Shift+V", analysis)
        self.actionVerify.setToolTip("Export the QDQ model for the target and run it in onnxruntime with default "
                                     "session options on the calibration data: its output SQNR next to the "
                                     "simulated one")
        analysis.addSeparator()
        self._build_ptq_menu(analysis)
        view = bar.addMenu("&View")
        self._dock_actions = {}
        for dock, name, key in ((self.graph_dock, "actionShowGraph", "Ctrl+1"),
                                (self.sensitivity_dock, "actionShowSensitivity", "Ctrl+2"),
                                (self.pareto_dock, "actionShowPareto", "Ctrl+3"),
                                (self.compare_dock, "actionShowCompare", "Ctrl+4")):
            action = self._action(name, dock.windowTitle(), lambda _=False, d=dock: self._toggle_dock(d), key, view)
            action.setCheckable(True)
            action.setChecked(True)
            self._dock_actions[dock] = action
            dock.visibilityChanged.connect(lambda _=False, d=dock, a=action: a.setChecked(not d.isHidden()))
        view.addSeparator()
        self.actionFitGraph = self._action("actionFitGraph", "&Fit the graph", self._fit_graph, "Ctrl+0", view)

    def _run_sensitivity(self) -> None:
        self._show_dock(self.sensitivity_dock)
        self.sensitivity.run()

    def _run_pareto(self) -> None:
        self._show_dock(self.pareto_dock)
        self.pareto.search()

    def _fit_graph(self) -> None:
        self._show_dock(self.graph_dock)
        self.graph.fit()

    def _on_error_updated(self, comparison) -> None:
        sqnr = self.live_error.sqnr
        self.table.set_sqnr(sqnr)
        self.graph_panel.set_sqnr(sqnr)
        outputs = [o.sqnr_db for o in comparison.outputs.values()]
        self.pareto.set_current(min(outputs) if outputs else None)
        self.pareto.set_labelled(comparison.accuracy_float is not None)
        self.errorUpdated.emit()

    def _select_tensors(self, names: list, primary: str = "") -> None:
        """Select tensors in the table (from the graph or a ranking); the histogram shows `primary`."""
        if not names:
            return
        self.table.select(names)
        if primary:
            self.histogram.show_tensor(primary)

    def _update_undo(self) -> None:
        self.actionUndo.setEnabled(self.stack.can_undo)
        self.actionRedo.setEnabled(self.stack.can_redo)
        self.actionUndo.setText(f"&Undo {self.stack.undo_label}".strip())
        self.actionRedo.setText(f"&Redo {self.stack.redo_label}".strip())

    def _fill_recent(self) -> None:
        self.recentMenu.clear()
        for path in settings.recent_files():
            action = self.recentMenu.addAction(path)
            action.triggered.connect(lambda _=False, p=path: self.open_model(p))
        if self.recentMenu.isEmpty():
            self.recentMenu.addAction("(none)").setEnabled(False)

    # --- opening ---------------------------------------------------------------------------------
    # --- unsaved work --------------------------------------------------------------------------
    @property
    def modified(self) -> bool:
        """Edits or statistics that no saved session holds."""
        return self.project.index is not None and (not self.stack.is_clean or self._unsaved_stats)

    def _update_modified(self) -> None:
        self.setWindowModified(self.modified)

    def _mark_saved(self, session_path) -> None:
        self._session_path = str(session_path)
        self._unsaved_stats = False
        self.stack.set_clean()
        self._update_modified()

    def maybe_save(self, what: str) -> bool:
        """Before work could be lost: ask Save / Discard / Cancel. True when it is fine to go on."""
        if not self.modified:
            return True
        answer = messages.ask(self, "Unsaved changes", f"The edits and statistics of {self._document_name()} "
                              f"are not saved in a session. Save them before you {what}?")
        if answer == "Cancel":
            return False
        if answer == "Save":
            return self._save_for_later()
        return True

    def _document_name(self) -> str:
        path = self.project.model_path
        return Path(path).name if path else "this model"

    def _save_for_later(self) -> bool:
        """Save to the session last saved or opened, else ask where."""
        if self._session_path:
            return self.save_session(self._session_path)
        return self._ask_save_session()

    def open_model(self, path) -> bool:
        """Open a model; a failure shows its cause and keeps what was open."""
        if self._busy("open a model") or not self.maybe_save("open another model"):
            return False
        try:
            self.project.open_model(str(path))
        except QInspectError as exc:
            messages.notify(self, "error", "Cannot open the model", str(exc))
            return False
        settings.add_recent_file(str(path))
        self.stack.clear()
        if self.project.index.notes:
            messages.notify(self, "info", "About this model", "\n".join(self.project.index.notes))
        return True

    def keep_flagged_in_float(self) -> bool:
        """Keep the tensors calibration flagged (blown-up ranges) in float, as one undoable edit."""
        targets = self.project.index.targets if self.project.index is not None else {}
        changes = {d.name: {"dtype": "float", "bw": d.float_bw} for d in self.flagged if d.name in targets}
        if not changes:
            return False
        self.stack.push(SetEdits(changes, f"keep {len(changes)} flagged tensor(s) in float"))
        return True

    def open_example(self) -> bool:
        return self.open_model(EXAMPLE_MODEL)

    def open_session(self, path) -> bool:
        if self._busy("open a session") or not self.maybe_save("open another session"):
            return False
        try:
            loaded = Project.from_session(path)
        except QInspectError as exc:
            messages.notify(self, "error", "Cannot open the session", str(exc))
            return False
        self.project.open_model(loaded.index)
        self.project.plan = loaded.plan
        self.project.steps = loaded.steps
        self.project.set_stats(loaded.stats, loaded.samples, loaded.data_spec, loaded.data_options)
        self.stack.clear()
        self._mark_saved(path)
        problems = refusals(loaded.index, loaded.plan)
        if problems:  # saved before a rule existed, or by a script: say so rather than refuse the session
            messages.notify(self, "warning", f"The session holds settings {loaded.plan.target} cannot run",
                            "\n".join(problems[:15]) + "\nChange them (or the target) before you export.")
        return True

    def save_session(self, path) -> bool:
        if not self._write(lambda: self.project.save_session(path), "Cannot save the session"):
            return False
        self._mark_saved(path)
        return True

    def import_encodings(self, path) -> bool:
        """Load an encodings/overrides file as one undoable edit of the plan."""
        from ..core.io.overrides import read_overrides

        if self.project.index is None:
            messages.notify(self, "warning", "No model", "Open a model before importing encodings.")
            return False
        try:
            encodings, warnings = read_overrides(path, self.project.index)
        except QInspectError as exc:
            messages.notify(self, "error", "Cannot import encodings", str(exc))
            return False
        if encodings:
            changes = {name: {"encoding": enc} for name, enc in encodings.items()}
            try:
                self.stack.push(SetEdits(changes, f"import {Path(path).name}"))
            except ValueError as exc:  # what the target cannot run: nothing was imported
                messages.notify(self, "error", "Cannot import encodings", f"{path}: {exc}")
                return False
        if warnings:
            messages.notify(self, "warning", "Some entries were ignored", "\n".join(warnings[:20]))
        return True

    # --- calibration -----------------------------------------------------------------------------
    def calibrate(self, data, **options) -> bool:
        """Start calibrating in a worker; `calibrationFinished` tells how it ended.

        Options: batch_size, samples, scheme, percentile, image_size, mean, std, layout, channels,
        exact_histograms (bin every value instead of a subsample of each batch).
        """
        from ..core.calib.calibrate import DEFAULT_HISTOGRAM_SAMPLE, calibrate
        from ..core.calib.data import open_data

        if self.project.index is None:
            messages.notify(self, "warning", "No model", "Open a model before calibrating.")
            return False
        if self._busy("calibrate"):
            return False
        index = self.project.index
        self._last_data = str(data)
        batch_size = int(options.pop("batch_size", 8))
        scheme = options.pop("scheme", None)
        percentile = options.pop("percentile", None)
        sample = None if options.pop("exact_histograms", False) else DEFAULT_HISTOGRAM_SAMPLE
        data_options = dict(options)

        def job(progress):
            source = open_data(str(data), index.inputs, **data_options)
            return calibrate(index, source, batch_size=batch_size, progress=progress, histogram_sample=sample)

        def done(result):
            self._calibration = None  # before any signal, so a handler may start the next run
            if self.project.index is not index:
                self.calibrationFinished.emit(False)  # the model changed meanwhile: stats are stale
                return
            self.project.set_stats(result.stats, result.samples, str(data), data_options)
            self._apply_scheme(scheme, percentile)
            self._unsaved_stats = True
            self._update_modified()
            self.flagged = list(result.diagnostics)
            self.actionKeepFlaggedFloat.setEnabled(bool(self.flagged))
            notes = list(result.warnings)
            notes += [f"{name}: no statistics ({why})" for name, why in list(result.skipped.items())[:10]]
            bad = [n for n, s in result.stats.items() if s.nonfinite_count]
            if bad:
                notes.append(f"{len(bad)} tensor(s) had NaN/Inf values, left out of their ranges: {', '.join(bad[:5])}")
            if self.flagged:
                notes.append("Calibration > Keep flagged tensors in float applies the suggested fix (undoable).")
            if notes:
                messages.notify(self, "warning", "Calibration finished with warnings", "\n".join(notes[:25]))
            self.statusBar().showMessage(f"Calibrated on {result.samples} samples in {took(result.seconds)}", 8000)
            self.calibrationFinished.emit(True)

        def stopped():
            self._calibration = None
            self.calibrationFinished.emit(False)

        self._calibration = self._start(job, "calibration", done, stopped)
        self.actionCancel.setEnabled(True)
        return True

    def _apply_scheme(self, scheme, percentile) -> None:
        """The dialog's range scheme for activations and weights, as `--scheme` does: one undoable step."""
        d = self.project.plan.defaults
        changes = {}
        if scheme and (d.act_scheme, d.param_scheme) != (scheme, scheme):
            changes.update(act_scheme=scheme, param_scheme=scheme)
        if percentile and float(percentile) != d.percentile:
            changes["percentile"] = float(percentile)
        if changes:
            what = f"scheme {scheme}" if scheme else f"percentile {float(percentile):g}"
            self.stack.push(SetDefaults(f"{what} for every tensor", **changes))

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    def _busy(self, what: str) -> bool:
        for job, name in ((self._calibration, "the calibration"), (getattr(self, "_ptq_thread", None), "the PTQ step")):
            if job is not None:
                messages.notify(self, "info", "Busy", f"Wait for {name} to finish (or cancel it) before you {what}.")
                return True
        return False

    def _write(self, fn, title: str) -> bool:
        try:
            path = fn()
        except (QInspectError, ValueError) as exc:
            messages.notify(self, "error", title, str(exc))
            return False
        self.statusBar().showMessage(f"Wrote {path}", 8000)
        return True

    # --- workers ---------------------------------------------------------------------------------
    def _start(self, job, name, on_success, on_stop) -> JobThread:
        thread = JobThread(job, self, name)
        thread.progressed.connect(self._on_progress)
        thread.succeeded.connect(on_success)
        thread.cancelled_.connect(lambda: self.statusBar().showMessage(f"{name.capitalize()} cancelled; nothing changed", 8000))
        thread.cancelled_.connect(on_stop)
        thread.failed.connect(lambda text: self._failed(name, text))
        thread.failed.connect(on_stop)
        thread.finished.connect(lambda: self._job_done(thread))
        self.jobs.append(thread)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.actionCancel.setEnabled(True)
        thread.start()
        return thread

    def _failed(self, name: str, text: str) -> None:
        messages.notify(self, "error", f"{name.capitalize()} failed", text)
        if name == "export" or name == "QDQ export":
            self.exportFinished.emit(False, text)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        job = self.sender()
        elapsed = time.monotonic() - getattr(job, "started_at", time.monotonic())
        if done and total > done:
            self.eta.setText(f"{done}/{total} · ETA {elapsed / done * (total - done):.0f} s")
        else:
            self.eta.setText(f"{done}/{total}")

    def _job_done(self, thread: JobThread) -> None:
        if thread in self.jobs:
            self.jobs.remove(thread)
        if thread is self._calibration:
            self._calibration = None
        if not self.jobs:
            self.progress.setVisible(False)
            self.eta.clear()
            self.actionCancel.setEnabled(False)
        thread.deleteLater()

    def wait_for_jobs(self, ms: int = 10_000) -> bool:
        """Block until every worker has stopped (for closing and for scripts)."""
        deadline = QDeadlineTimer(ms)
        done = all(job.wait(deadline) for job in list(self.jobs))
        return self.live_error.wait(max(0, deadline.remainingTime())) and done

    def closeEvent(self, event) -> None:
        if not self.maybe_save("quit"):
            event.ignore()
            return
        self.cancel()
        self.live_error.stop(5000)
        self.wait_for_jobs(5000)
        super().closeEvent(event)

    # --- project and selection ---------------------------------------------------------------------
    def _on_project(self, event: str, names) -> None:
        if event == "model":
            self.live_error.baseline = None
            self._session_path, self._unsaved_stats = None, False
            self.flagged = []
            self.actionKeepFlaggedFloat.setEnabled(False)
            self.stack.clear()
            self.histogram.show_tensor(None)
            self.editor.set_selection([])
        self._update_title()
        self._update_summary()

    def _update_title(self) -> None:
        path = self.project.model_path
        name = f" — {Path(path).name}" if path else ""
        self.setWindowTitle(f"qinspect{name} [{self.project.target}][*]")  # [*]: Qt's unsaved-changes mark

    def _on_selection(self, names: list) -> None:
        self.editor.set_selection(names)
        self.histogram.show_tensor(names[0] if names else None)
        self.graph.highlight_tensors(names)

    def _update_summary(self) -> None:
        index = self.project.index
        if index is None:
            self.summary.setText("No model. Open one with File > Open (Ctrl+O) or drop an .onnx file here.")
            return
        counts = {k: sum(t.kind == k for t in index.targets.values()) for k in ("activation", "weight", "bias")}
        parts = [
            Path(index.path).name if index.path else "model",
            f"{len(index.nodes)} nodes",
            f"{counts['activation']} activations, {counts['weight']} weights, {counts['bias']} biases",
        ]
        if self.project.stats:
            parts.append(f"calibrated on {self.project.samples} samples")
            quantized, floats = self.project.size_bytes()
            if floats:
                parts.append(f"params {quantized / 1024:.1f} KiB vs {floats / 1024:.1f} KiB float ({quantized / floats:.0%})")
        else:
            parts.append("not calibrated (Ctrl+R)")
        if self.project.steps:
            parts.append("PTQ: " + " → ".join(r.title for r in self.project.steps))
        self.summary.setText(" · ".join(parts))
