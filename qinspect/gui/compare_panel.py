"""Two configurations side by side in the window: the project's encodings (A) against an encodings
file, a saved session or the model before the last PTQ step (B), measured on the calibration data
in a worker (`core.analysis.diff`). B may bring its own model (the fine-tuned ONNX model a QAT run
ends with): it is prepared in the worker and the file is read against it, and each side is measured
against its own float model. A sortable table per tensor with both bitwidths, ranges, scales and
SQNRs, the cells that differ highlighted; both output SQNRs above it. The selected row's values
and both ranges are drawn beside the table (`compare_plot`).

What a row's plot shows is fixed when its comparison starts (A's model and statistics, B's model),
so a later edit, recalibration or another model in the window does not mix into it.

Object names: ``comparePanel`` (the dock, set by the window), ``compareTable``, ``compareStatus``,
``compareLoadButton``, ``compareBeforeButton``, ``compareModelButton``, ``compareModelLabel``,
``compareModelClear``, ``compareSplitter``, and the plot's (``compareHistogram``, ``compareLegend``, ...).
Signal: ``compared(bool)`` when a run ends (True: new results shown).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QHBoxLayout, QLabel, QPushButton, QSplitter,
                               QTableView, QToolButton, QVBoxLayout, QWidget)

from . import messages
from .compare_plot import ComparePlot
from .events import listen
from .widgets import ElidedLabel

SAMPLES = 32
HEADERS = ("Tensor", "Kind", "A encoding", "B encoding", "A range", "B range", "A scale", "B scale",
           "A SQNR", "B SQNR", "Change dB")
CHANGED = QColor(255, 236, 179)
SORT_ROLE = Qt.UserRole + 1
NO_MODEL = "B model: the window's"


def _num(value, digits: str = ".4g") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "exact" if value > 0 else "-inf"
    return format(value, digits)


def _range(side) -> str:
    return "" if side.min is None else f"[{side.min:.4g}, {side.max:.4g}]"


@dataclass
class Run:
    """One comparison and what its plots are drawn from."""
    result: object                 # core.analysis.diff.Diff
    path: str
    model: str | None              # B's own model, or None: B ran A's
    index_a: object
    stats: dict                    # A's calibration statistics when the comparison started
    index_b: object = None
    values: dict = field(default_factory=dict)  # (side, name) -> TensorStats of a constant's values
    stats_b: dict = field(default_factory=dict)  # B's own model's activation statistics (its samples)


class ComparePanel(QWidget):
    compared = Signal(bool)

    def __init__(self, project, start, parent=None):
        super().__init__(parent)
        self.project, self._start = project, start
        self.result = None
        self.run: Run | None = None
        self.b_model: str | None = None
        self._last_path: str | None = None
        self._pending = None  # the latest comparison started; an older one's result is dropped
        self.load_button = QPushButton("Compare with encodings file…", objectName="compareLoadButton")
        self.model_button = QPushButton("B model…", objectName="compareModelButton")
        self.model_button.setToolTip("B's own ONNX model (a QAT run's fine-tuned one); without it B runs the window's")
        self.model_label = ElidedLabel(NO_MODEL, objectName="compareModelLabel")
        self.model_label.setMaximumWidth(260)
        self.clear_button = QToolButton(objectName="compareModelClear", text="×")
        self.clear_button.setToolTip("B runs the window's model again")
        self.clear_button.setEnabled(False)
        self.before_button = QPushButton("Before last PTQ step", objectName="compareBeforeButton")
        self.before_button.setToolTip("B = the model before the last PTQ step, with its statistics, under the "
                                      "current plan")
        self.before_button.setEnabled(project.before is not None)
        self.status = QLabel("A: the window's encodings; B: an encodings file (a QAT run's, another session's).",
                             objectName="compareStatus")
        self.status.setWordWrap(True)
        self.model = QStandardItemModel(0, len(HEADERS), self)
        self.model.setHorizontalHeaderLabels(HEADERS)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView(objectName="compareTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().hide()  # the rows' load order says nothing once sorted
        self.plot = ComparePlot()
        self.splitter = QSplitter(Qt.Horizontal, objectName="compareSplitter")
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(self.plot)
        self.splitter.setChildrenCollapsible(False)
        self._split = False  # the table's share is set once, when the panel first has a width
        top = QHBoxLayout()
        for w in (self.load_button, self.before_button, self.model_button, self.model_label, self.clear_button):
            top.addWidget(w)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.status)  # its own line: beside the buttons it wrapped into a tall column
        layout.addWidget(self.splitter, 1)
        self.load_button.clicked.connect(self._ask)
        self.model_button.clicked.connect(self._ask_model)
        self.clear_button.clicked.connect(lambda: self._choose_model(None))
        self.before_button.clicked.connect(lambda: self.compare_with_before())
        listen(self, project, self._on_project)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._on_selection())
        self.proxy.layoutChanged.connect(self._on_selection)  # a re-sort keeps the row; check the plot follows

    def _on_project(self, event: str, names) -> None:
        self.before_button.setEnabled(self.project.before is not None)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._split and self.splitter.width() > 100:
            self._split = True
            width = self.splitter.width()
            self.splitter.setSizes([int(width * 0.55), width - int(width * 0.55)])

    # --- choosing -----------------------------------------------------------------------------------
    def _ask(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Compare with encodings", "",
                                              "Encodings or session (*.json *.qinspect);;All files (*)")
        if path:
            self.compare_with(path, model=self.b_model)

    def _ask_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "B's model", "", "ONNX models (*.onnx);;All files (*)")
        if path:
            self._choose_model(path)

    def _choose_model(self, path: str | None) -> None:
        """Set B's model (None: the window's) and compare again when a file was compared already."""
        self._set_model(path)
        if self._last_path is not None:
            self.compare_with(self._last_path, model=path)

    def _set_model(self, path) -> None:
        self.b_model = None if path is None else str(path)
        self.model_label.setText(NO_MODEL if path is None else f"B model: {os.path.basename(self.b_model)}")
        self.model_label.setToolTip(self.b_model or "B runs the window's model")
        self.clear_button.setEnabled(path is not None)

    # --- running ------------------------------------------------------------------------------------
    def compare_with(self, path, samples: int = SAMPLES, model=None) -> bool:
        """Measure the project's encodings (A) and the file's (B) on the calibration data in a worker.
        `model`: B's own model (the file is then read against it); None: B runs the window's model.
        The panel's B model becomes `model`."""
        from ..core.errors import QInspectError
        from ..core.io.overrides import read_overrides
        from ..core.plan import encodings_for_target
        from ..core.project import session_configuration

        if not self._calibrated():
            return False
        path, model = str(path), None if model is None else str(model)
        if model is not None and not os.path.isfile(model):
            messages.notify(self, "warning", "Not compared",
                            f"B's model {model} not found: choose the fine-tuned .onnx file with B model…")
            return False
        index, target = self.project.index, self.project.target
        session = path.endswith(".qinspect")  # B = a session: its encodings, its own model after PTQ steps
        if session and model is not None:
            messages.notify(self, "warning", "Not compared",
                            f"{path}: a session brings its own model; clear B model (×) to compare with it")
            return False
        try:
            if session:
                b = None  # opened in the job: it may re-prepare a rewritten model
            else:
                b, _ = read_overrides(path, None if model else index)  # with B's model: checked in the job
                b = b if model else encodings_for_target(index, b, target)
        except (QInspectError, ValueError) as exc:
            text = str(exc)
            messages.notify(self, "warning", "Not compared", text if text.startswith(path) else f"{path}: {text}")
            return False
        self._set_model(model)
        self._last_path = path

        def make_b(progress):
            if model is not None:
                index_b, b_enc = _read_b(model, path, index, target, progress)
                return b_enc, index_b, None
            if session:
                return (*session_configuration(path, index, target), None)
            return b, None, None

        return self._launch(path, model, make_b, samples)

    def compare_with_before(self, samples: int = SAMPLES) -> bool:
        """B = the project before its last PTQ step: that model and its statistics under the current
        plan, so what the step did shows tensor by tensor."""
        from ..core.plan import PrecisionPlan, derive_encodings

        if not self._calibrated():
            return False
        if self.project.before is None:
            messages.notify(self, "warning", "Nothing to compare",
                            "No PTQ step applied yet: apply one (Analysis > PTQ steps), then compare with before it.")
            return False
        index_b, stats_b, title = self.project.before
        plan = PrecisionPlan.from_dict(self.project.plan.to_dict())  # a snapshot for the worker
        self._set_model(None)
        self._last_path = None  # a B model chosen later has no file to read against

        def make_b(progress):
            return derive_encodings(index_b, stats_b, plan), index_b, dict(stats_b)

        return self._launch(f"before {title}", None, make_b, samples)

    def _calibrated(self) -> bool:
        project = self.project
        if project.index is None or not project.stats or not project.data_spec:
            messages.notify(self, "warning", "Nothing to compare",
                            "Calibrate the model first: the comparison runs on the calibration data.")
            return False
        return True

    def _launch(self, label: str, model: str | None, make_b, samples: int) -> bool:
        """Compare in a worker. `make_b(progress)` gives B's encodings, B's own model's index (None: the
        window's) and its activation statistics (None: calibrated here when B has its own model)."""
        from ..core.analysis.diff import diff
        from ..core.calib.calibrate import calibrate
        from ..core.calib.data import open_data

        project = self.project
        index = project.index
        a, stats = dict(project.encodings), dict(project.stats)
        spec, options = project.data_spec, dict(project.data_options)

        def job(progress):
            b_enc, index_b, stats_b = make_b(progress)
            with open_data(spec, index.inputs, **options) as data:
                result = diff(index, a, b_enc, data, index_b=index_b, samples=samples, progress=progress)
            if index_b is not None and stats_b is None:  # B's own model: its activations differ too
                with open_data(spec, index_b.inputs, samples=samples, **options) as data:
                    stats_b = calibrate(index_b, data, progress=progress).stats
            return Run(result, label, model, index, stats, index_b, stats_b=stats_b or {})

        token = self._pending = object()
        self.table.clearSelection()
        self.plot.clear("Comparing: select a row when the table is filled.")
        self.status.setText(f"comparing with {label}" + (f" on B's model {model}" if model else "") + "…")

        def stopped(text: str | None = None) -> None:  # failed(text) or cancelled()
            if token is self._pending:
                self._stopped(text)

        self._start(job, "comparison", lambda run: self._show(run, token), stopped)
        return True

    def _stopped(self, text: str | None) -> None:
        """Cancelled or failed (the window shows the failure's message)."""
        self.status.setText("Not compared" + (f": {text}" if text else " (cancelled)")
                            + ("; the table shows the last comparison" if self.result is not None else ""))
        self.compared.emit(False)

    def _show(self, run: Run, token) -> None:
        if token is not self._pending:
            return  # an older comparison ended after a newer one started
        self.run, self.result = run, run.result
        result = run.result
        outputs = "; ".join(f"{n}: A {_num(a, '.1f')} dB, B {_num(b, '.1f')} dB" for n, (a, b) in result.outputs.items())
        if result.accuracy is not None:  # the data have labels
            f, ta, tb = result.accuracy
            outputs += f" · top-1 A {ta:.1%}, B {tb:.1%} (float {f:.1%})"
        changed = sum(1 for t in result.tensors if t.changed)
        # File names only: the tooltip has the paths.
        model = f" on {os.path.basename(run.model)}" if run.model else ""
        self.status.setText(f"B = {os.path.basename(run.path)}{model} · {result.samples} samples · {outputs} · "
                            f"{changed} of {len(result.tensors)} tensors differ")
        self.status.setToolTip(f"B's encodings: {run.path}\nB's model: {run.model or 'the window’s'}")
        self.model.setRowCount(0)
        for t in result.tensors:
            cells = [(t.name, t.name, ()), (t.kind, t.kind, ()),
                     (t.a.encoding, t.a.encoding, ("encoding",)), (t.b.encoding, t.b.encoding, ("encoding",)),
                     (_range(t.a), t.a.min, ("range",)), (_range(t.b), t.b.min, ("range",)),
                     (_num(t.a.scale), t.a.scale, ("scale",)), (_num(t.b.scale), t.b.scale, ("scale",)),
                     (_num(t.a.sqnr_db, ".1f"), t.a.sqnr_db, ("sqnr",)), (_num(t.b.sqnr_db, ".1f"), t.b.sqnr_db, ("sqnr",)),
                     (_num(t.sqnr_change, "+.1f"), t.sqnr_change, ("sqnr",))]
            row = []
            for text, key, fields in cells:
                item = QStandardItem(text)
                item.setData(math.inf if key is None else key, SORT_ROLE)  # no value: last
                if any(f in t.changed for f in fields):
                    item.setBackground(CHANGED)
                row.append(item)
            self.model.appendRow(row)
        self.table.sortByColumn(HEADERS.index("Change dB"), Qt.AscendingOrder)  # where B loses most first
        self.table.resizeColumnsToContents()
        self.compared.emit(True)

    # --- the selected row's plot --------------------------------------------------------------------
    def select(self, name: str) -> bool:
        """Select `name`'s row (its plot follows); False when the table has no such row."""
        for r in range(self.proxy.rowCount()):
            if self.proxy.index(r, 0).data() == name:
                self.table.selectRow(r)
                self.table.scrollTo(self.proxy.index(r, 0))
                return True
        return False

    def selected(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].data() if rows else None

    def _on_selection(self) -> None:
        name = self.selected()
        if name is None:
            if self.plot.tensor is not None:
                self.plot.clear("Select a tensor in the table to see its values and both ranges.")
        elif name != self.plot.tensor:
            self._plot(name)

    def _plot(self, name: str) -> None:
        run = self.run
        row = next((t for t in run.result.tensors if t.name == name), None)
        if row is None:
            return
        stats, what = self._values(run, name, row.kind)
        if stats is None:
            self.plot.clear(f"{name}: no values to show (not calibrated)")
            return
        self.plot.show_values(name, what, stats, {"A": row.a, "B": row.b})

    def _values(self, run: Run, name: str, kind: str):
        """The statistics to draw ("A", and "B" when B's model holds other values) and the info line."""
        from ..core.quant.stats import TensorStats

        index = run.index_a
        if not index.is_constant(name):
            stats = run.stats.get(name) or run.stats.get(index.encoding_source(name))
            if stats is None or stats.count == 0:
                return None, ""
            b = None
            if run.stats_b:
                b = run.stats_b.get(name) or run.stats_b.get(run.index_b.encoding_source(name))
            if b is None or b.count == 0:
                source = "A's model's " if run.model else ""
                return {"A": stats}, f"{name}: {source}calibration histogram, {stats.count:,} values"
            return {"A": stats, "B": b}, (f"{name}: A's calibration histogram filled, B's model's outlined "
                                          f"({run.result.samples} samples, scaled to A's count)")

        def of(side, idx):
            key = (side, name)
            if key not in run.values:
                run.values[key] = TensorStats.of(idx.initializer(name))
            return run.values[key]

        out = {"A": of("A", index)}
        what = f"{name}: {out['A'].count:,} {kind} values"
        b = run.index_b
        if b is not None and b.is_constant(name):
            va, vb = index.initializer(name), b.initializer(name)
            if np.array_equal(va, vb):
                what += " (B's model holds the same values)"
            else:
                out["B"] = of("B", b)
                what = f"{name}: values of A's model filled, of B's outlined"
        return out, what


def _read_b(model: str, path: str, index, target, progress):
    """B's model prepared as the window's is, and the file's encodings read against it (in the job)."""
    from ..core.errors import Cancelled, ModelError, OverridesError, QInspectError
    from ..core.io.overrides import read_overrides
    from ..core.plan import encodings_for_target
    from ..core.ptq.prepare import prepare_model

    progress.update(0, 1, f"reading {os.path.basename(model)}")
    index_b = prepare_model(model, target)
    if progress.cancelled():
        raise Cancelled("comparison cancelled")
    want, got = [i.name for i in index.inputs], [i.name for i in index_b.inputs]
    if want != got:
        raise ModelError(f"B's model {model} takes inputs {got}, the calibration data feeds {want}: "
                         "choose the model trained from this one")
    try:
        b, _ = read_overrides(path, index_b)
        return index_b, encodings_for_target(index_b, b, target)
    except (QInspectError, ValueError) as exc:
        text = str(exc).removeprefix(f"{path}: ")
        raise OverridesError(f"{path} does not fit B's model {model} ({text}): choose the model these "
                             "encodings come from, or clear B's model") from None
