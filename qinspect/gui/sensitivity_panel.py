"""Sensitivity: which quantizer groups hurt the output most, and promoting the worst in one step.

"Run sensitivity" calls `core.sensitivity.sensitivity` in a worker on the project's calibration
data (output SQNR with only that group quantized, and with only that group kept in float). The
ranking shows as a sortable table and a bar plot of the scores; "Promote top k" pushes one
`SetEdits` (one undo step) from `core.sensitivity.promote_changes`.

Object names: ``sensitivityPanel`` (the dock, set by the window), ``sensitivityTable``,
``sensitivityPlot``, ``runSensitivityButton``, ``promoteCountSpin``, ``promotePrecisionCombo``,
``promoteButton``, ``sensitivityStatus``.

Signals: ``tensorsActivated(list, str)`` when a row is clicked (its group's tensors, and the
one to show first: the group's output activation);
``runFinished(bool)`` when a run ends (True: new results shown).
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..core.commands import SetEdits
from .events import listen

SAMPLES = 16
PRECISIONS = ("int16", "float16", "float32")
HEADERS = ("Rank", "Group", "Op", "Tensors", "SQNR only\nquantized", "SQNR only\nfloat", "Score")
RANK, GROUP, OP, TENSORS, ONLY_Q, ONLY_F, SCORE = range(len(HEADERS))
SORT_ROLE = Qt.UserRole + 1
BAR_BRUSH = (220, 90, 60, 200)
MAX_NAMED_BARS = 40  # more groups: the left axis shows ranks


def _db(value, negative_inf: str = "-inf") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "exact" if value > 0 else negative_inf
    return f"{value:.1f}"


def _sort_value(value):
    """Numbers sort as numbers (inf last when ascending); None sorts first."""
    if value is None:
        return -math.inf
    return float(value)


class SensitivityPanel(QWidget):
    tensorsActivated = Signal(list, str)
    runFinished = Signal(bool)

    def __init__(self, project, stack, start_job, parent=None):
        """`start_job(job, name, on_success, on_stop)` runs `job(progress)` in a worker (the window's)."""
        super().__init__(parent)
        self.setObjectName("sensitivityContent")
        self.project = project
        self.stack = stack
        self._start_job = start_job
        self.entries: list = []   # most sensitive first, as the core returned them
        self._index = None        # the model the entries are for
        self._thread = None
        self._build()
        listen(self, project, self._on_project)
        self._update_buttons()

    # --- construction -------------------------------------------------------------------------
    def _build(self) -> None:
        self.run_button = QPushButton("Run sensitivity", objectName="runSensitivityButton")
        self.run_button.setToolTip("For each quantizer group: the output SQNR when only it is quantized, "
                                   "and when only it is kept in float (Ctrl+Shift+R)")
        self.run_button.clicked.connect(lambda: self.run())  # clicked(bool) must not become the sample count
        self.status = QLabel(objectName="sensitivityStatus", wordWrap=True)
        self.k_spin = QSpinBox(objectName="promoteCountSpin", minimum=1, maximum=1, value=1)
        self.k_spin.setPrefix("top ")
        self.precision_combo = QComboBox(objectName="promotePrecisionCombo")
        self.precision_combo.addItems(PRECISIONS)
        self.promote_button = QPushButton("Promote top k", objectName="promoteButton")
        self.promote_button.setToolTip("Set the k most sensitive groups to the chosen precision in one undoable edit")
        self.promote_button.clicked.connect(lambda: self.promote_top())

        self.model = QStandardItemModel(0, len(HEADERS), self)
        self.model.setHorizontalHeaderLabels(HEADERS)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView(objectName="sensitivityTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(RANK, Qt.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.Interactive)
        header.setStretchLastSection(True)
        for col, width in ((RANK, 42), (GROUP, 90), (OP, 60), (TENSORS, 130), (ONLY_Q, 76), (ONLY_F, 76)):
            header.resizeSection(col, width)
        for col, tip in ((ONLY_Q, "Output SQNR (dB) with only this group quantized, everything else float"),
                         (ONLY_F, "Output SQNR (dB) with only this group kept float, everything else as planned"),
                         (SCORE, "Only-float minus only-quantized SQNR: higher = more sensitive")):
            self.model.horizontalHeaderItem(col).setToolTip(tip)
        self.table.clicked.connect(self._on_clicked)
        self.table.activated.connect(self._on_clicked)

        self.plot = pg.PlotWidget()
        self.plot.setObjectName("sensitivityPlot")
        self.plot.setMenuEnabled(False)
        # Short enough for a narrow panel; what a bar measures is in the tooltip.
        self.plot.setLabel("bottom", "longer = more sensitive (dB)")
        self.plot.setToolTip("Each bar: the group's score minus the least sensitive group's, in dB.\n"
                             "Score: output SQNR with only this group float minus with only it quantized.")
        self.plot.showGrid(x=True, alpha=0.3)
        self.plot.invertY(True)  # rank 1 (most sensitive) on top
        # Horizontal bars: one per group, its name on the left axis.
        self.bars = pg.BarGraphItem(x0=[], y=[], width=[], height=0.8, brush=BAR_BRUSH, pen=None)
        self.plot.addItem(self.bars)

        top = QHBoxLayout()
        top.addWidget(self.run_button)
        top.addWidget(self.status, 1)
        top.addWidget(self.k_spin)
        top.addWidget(self.precision_combo)
        top.addWidget(self.promote_button)
        split = QSplitter(Qt.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.plot)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([640, 300])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(split, 1)

    # --- public API ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    def run(self, samples: int = SAMPLES) -> bool:
        """Rank the quantizer groups in a worker; `runFinished` tells how it ended."""
        from . import messages

        project = self.project
        if self._thread is not None:
            return False
        if project.index is None or not project.stats:
            messages.notify(self, "warning", "Not calibrated", "Calibrate the model first (Ctrl+R).")
            return False
        if not project.data_spec:
            messages.notify(self, "warning", "No calibration data",
                            "Sensitivity runs on the calibration data; calibrate the model first (Ctrl+R).")
            return False
        index, encodings = project.index, dict(project.encodings)
        spec, options = project.data_spec, dict(project.data_options)

        def job(progress):
            from ..core.calib.data import open_data
            from ..core.analysis.sensitivity import sensitivity

            data = open_data(spec, index.inputs, **options)
            try:
                return sensitivity(index, encodings, data, samples=samples, progress=progress)
            finally:
                data.close()

        self.status.setText(f"Ranking quantizer groups on {samples} samples…")
        self._thread = self._start_job(job, "sensitivity", partial(self._done, index), self._stopped)
        self._update_buttons()
        return True

    def set_entries(self, entries, index=None) -> None:
        """Show a ranking (most sensitive first)."""
        self.entries = list(entries)
        self._index = index if index is not None else self.project.index
        self.table.setSortingEnabled(False)
        self.model.removeRows(0, self.model.rowCount())
        for rank, e in enumerate(self.entries):
            g = e.group
            cells = [(str(rank + 1), rank), (g.name, g.name), (g.op_type, g.op_type),
                     (", ".join(g.tensors), ", ".join(g.tensors)),
                     (_db(e.only_quantized_sqnr), _sort_value(e.only_quantized_sqnr)),
                     (_db(e.only_float_sqnr), _sort_value(e.only_float_sqnr)),
                     (_db(e.score, "not quantized"), _sort_value(e.score))]
            row = []
            for col, (text, key) in enumerate(cells):
                item = QStandardItem(text)
                item.setData(key, SORT_ROLE)
                item.setData(rank, Qt.UserRole)
                if col in (RANK, ONLY_Q, ONLY_F, SCORE):
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if col == TENSORS:
                    item.setToolTip("\n".join(g.tensors))
                row.append(item)
            self.model.appendRow(row)
        self.table.setSortingEnabled(True)
        self.bars.setOpts(x0=np.zeros(len(self.entries)), y=np.arange(1, len(self.entries) + 1),
                          width=bar_lengths([e.score for e in self.entries]), height=0.8)
        axis = self.plot.getAxis("left")
        if 0 < len(self.entries) <= MAX_NAMED_BARS:
            axis.setTicks([[(i + 1, _short(e.group.name)) for i, e in enumerate(self.entries)]])
        else:
            axis.setTicks(None)  # rank numbers
        self.plot.enableAutoRange()
        self.k_spin.setMaximum(max(1, len(self.entries)))
        self._update_buttons()

    def top_groups(self, k: int | None = None) -> list:
        k = self.k_spin.value() if k is None else k
        return [e.group for e in self.entries[:k]]

    def promote_top(self, k: int | None = None, precision: str | None = None) -> bool:
        """Set the k most sensitive groups to `precision` as ONE undoable SetEdits."""
        from ..core.analysis.sensitivity import promote_changes
        from . import messages

        if not self.entries or self._index is not self.project.index:
            return False
        k = self.k_spin.value() if k is None else int(k)
        precision = precision or self.precision_combo.currentText()
        changes = promote_changes(self.top_groups(k), precision)
        if not changes:
            return False
        try:
            self.stack.push(SetEdits(changes, f"promote top {k} to {precision}"))
        except ValueError as exc:
            messages.notify(self, "error", "Cannot promote", str(exc))
            return False
        return True

    def select_row(self, rank: int) -> list[str]:
        """Select a ranked entry (0 = most sensitive) as a click does; returns its tensors."""
        if not 0 <= rank < len(self.entries):
            return []
        targets = self.project.index.targets if self.project.index is not None else {}
        names = [t for t in self.entries[rank].group.tensors if t in targets]
        acts = [t for t in names if targets[t].kind == "activation"]
        self.tensorsActivated.emit(names, acts[0] if acts else (names[0] if names else ""))
        return names

    # --- internals ----------------------------------------------------------------------------
    def _on_clicked(self, proxy_index) -> None:
        rank = self.proxy.index(proxy_index.row(), RANK).data(Qt.UserRole)
        if rank is not None:
            self.select_row(int(rank))

    def _done(self, index, entries) -> None:
        self._thread = None
        if index is not self.project.index:  # another model was opened meanwhile
            self.status.setText("")
            self._update_buttons()
            self.runFinished.emit(False)
            return
        self.set_entries(entries, index)
        self.status.setText(f"{len(self.entries)} groups ranked; score: how much the output SQNR depends on the group")
        self.runFinished.emit(True)

    def _stopped(self) -> None:
        self._thread = None
        self.status.setText("Sensitivity stopped; the previous ranking is kept." if self.entries else "")
        self._update_buttons()
        self.runFinished.emit(False)

    def _update_buttons(self) -> None:
        if not shiboken6.isValid(self):
            return
        ready = self.project.index is not None and bool(self.project.stats)
        self.run_button.setEnabled(ready and self._thread is None)
        current = bool(self.entries) and self._index is self.project.index
        for w in (self.k_spin, self.precision_combo, self.promote_button):
            w.setEnabled(current)

    def _on_project(self, event: str, names) -> None:
        if not shiboken6.isValid(self):
            return
        if event in ("model", "index"):
            self.set_entries([], self.project.index)
            self.status.setText("")
        self._update_buttons()


def _short(name: str, n: int = 14) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def bar_lengths(scores) -> np.ndarray:
    """Bars measured from the least sensitive group: most scores are negative (quantizing one group
    alone costs less than the whole plan does), so raw scores gave the least sensitive the longest
    bar. A sliver (a twentieth of the spread) keeps the least sensitive bar visible."""
    s = np.array([_finite(v) for v in scores], dtype=float)
    if s.size == 0:
        return s
    spread = float(s.max() - s.min())
    return s - s.min() + (spread / 20 if spread > 0 else 1.0)


def _finite(value) -> float:
    if value is None:
        return 0.0
    v = float(value)
    return v if math.isfinite(v) else 0.0
