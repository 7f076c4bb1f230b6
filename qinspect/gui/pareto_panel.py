"""Mixed precision search: the Pareto front of output error against cost, one click to apply.

"Search" runs `core.search.pareto_search` in a worker (candidate precisions from the check boxes)
and draws its points, cost against output SQNR (accuracy in the tooltip when the data has labels).
Clicking a point applies its `changes` as one undoable `SetEdits`.

Object names: ``paretoPanel`` (the dock, set by the window), ``paretoPlot``, ``paretoSearchButton``,
``paretoCandidate_int8`` / ``_int16`` / ``_float16`` / ``_float32``, ``paretoInfo``.

The current plan is drawn as a star (`set_current`, fed by the window's live error).

Signals: ``searchFinished(bool)`` when a search ends (True: new points shown);
``pointApplied(int)`` after a point was applied.
"""
from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.commands import SetEdits
from .events import listen
from .widgets import wrapped_tip

SAMPLES = 16
CANDIDATES = ("int8", "int16", "float16", "float32")
DEFAULT_CANDIDATES = ("int8", "int16", "float16")
POINT_BRUSH = pg.mkBrush(30, 110, 200, 200)
APPLIED_BRUSH = pg.mkBrush(230, 120, 0, 255)
CURRENT_BRUSH = pg.mkBrush(250, 220, 40, 230)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def describe_point(point) -> str:
    lines = [point.label or "point",
             f"cost {point.cost:.4g}", f"parameters {_fmt_bytes(point.param_bytes)}",
             f"output SQNR {point.output_sqnr:.1f} dB" if math.isfinite(point.output_sqnr) else "output SQNR exact"]
    if point.accuracy is not None:
        lines.append(f"top-1 {100 * point.accuracy:.1f}%")
    lines.append(f"{len(point.changes)} tensor edit(s)")
    return "\n".join(lines)


class ParetoPanel(QWidget):
    searchFinished = Signal(bool)
    pointApplied = Signal(int)

    def __init__(self, project, stack, start_job, parent=None):
        """`start_job(job, name, on_success, on_stop)` runs `job(progress)` in a worker (the window's)."""
        super().__init__(parent)
        self.setObjectName("paretoContent")
        self.project = project
        self.stack = stack
        self._start_job = start_job
        self.points: list = []
        self._index = None
        self._thread = None
        self.applied: int | None = None
        self._build()
        listen(self, project, self._on_project)
        self._update_buttons()

    def _build(self) -> None:
        self.search_button = QPushButton("Search", objectName="paretoSearchButton")
        self.search_button.setToolTip("Greedy mixed precision search guided by sensitivity (Ctrl+Shift+P)")
        self.search_button.clicked.connect(lambda: self.search())
        self.candidate_checks = {}
        bar = QHBoxLayout()
        bar.addWidget(self.search_button)
        bar.addWidget(QLabel("Candidates:"))
        for name in CANDIDATES:
            check = QCheckBox(name, objectName=f"paretoCandidate_{name}")
            check.setChecked(name in DEFAULT_CANDIDATES)
            self.candidate_checks[name] = check
            bar.addWidget(check)
        self.info = QLabel(objectName="paretoInfo", wordWrap=True)
        bar.addWidget(self.info, 1)

        self.plot = pg.PlotWidget()
        self.plot.setObjectName("paretoPlot")
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "cost (bit operations, relative to the cheapest plan)")
        self.plot.setLabel("left", "output SQNR (dB)")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.front = self.plot.plot(pen=pg.mkPen(120, 120, 120, 150, width=1, style=Qt.DashLine))
        self.scatter = pg.ScatterPlotItem(size=11, brush=POINT_BRUSH, pen=pg.mkPen("w"), hoverable=True,
                                          hoverSize=14, tip=self._tip)
        self.scatter.sigClicked.connect(self._on_clicked)
        self.plot.addItem(self.scatter)
        # The plan as it is now (its live output SQNR), to see where it sits against the front.
        self.current = pg.ScatterPlotItem(size=17, symbol="star", brush=CURRENT_BRUSH, pen=pg.mkPen("k"),
                                          hoverable=True, tip=lambda x, y, data: f"current plan\ncost {x:.4g}\n"
                                                                                 f"output SQNR {y:.1f} dB")
        self.current.setZValue(5)
        self.plot.addItem(self.current)
        self._current_sqnr: float | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(bar)
        layout.addWidget(self.plot, 1)

    # --- public API ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    def candidates(self) -> tuple[str, ...]:
        return tuple(n for n in CANDIDATES if self.candidate_checks[n].isChecked())

    def search(self, candidates=None, samples: int = SAMPLES) -> bool:
        """Search in a worker; `searchFinished` tells how it ended."""
        from . import messages

        project = self.project
        if self._thread is not None:
            return False
        if project.index is None or not project.stats or not project.data_spec:
            messages.notify(self, "warning", "Not calibrated",
                            "The search runs on the calibration data; calibrate the model first (Ctrl+R).")
            return False
        candidates = tuple(candidates or self.candidates())
        if not candidates:
            messages.notify(self, "warning", "No candidates", "Tick at least one candidate precision.")
            return False
        index, stats, plan = project.index, dict(project.stats), copy.deepcopy(project.plan)
        spec, options = project.data_spec, dict(project.data_options)

        def job(progress):
            from ..core.calib.data import open_data
            from ..core.analysis.search import pareto_search

            data = open_data(spec, index.inputs, **options)
            try:
                return pareto_search(index, stats, plan, data, candidates=candidates, samples=samples,
                                     progress=progress)
            finally:
                data.close()

        self.info.setText(f"Searching over {', '.join(candidates)} on {samples} samples…")
        self._thread = self._start_job(job, "mixed precision search", partial(self._done, index), self._stopped)
        self._update_buttons()
        return True

    def set_points(self, points, index=None) -> None:
        self.points = list(points)
        self._index = index if index is not None else self.project.index
        self.applied = None
        self._redraw()
        self._update_buttons()

    def apply_point(self, i: int) -> bool:
        """Apply point `i`'s changes as ONE undoable SetEdits; False if there is nothing to apply."""
        from . import messages

        if not 0 <= i < len(self.points) or self._index is not self.project.index:
            return False
        point = self.points[i]
        if not point.changes:
            self.info.setText(f"{point.label or 'this point'}: no edits to apply")
            return False
        try:
            self.stack.push(SetEdits(point.changes, f"apply mixed precision {point.label or i}"))
        except ValueError as exc:
            messages.notify(self, "error", "Cannot apply this point", str(exc))
            return False
        self.applied = i
        self._redraw()
        self.info.setText("Applied: " + describe_point(point).replace("\n", " · ") + " (Ctrl+Z undoes)")
        self.pointApplied.emit(i)
        return True

    def set_current(self, output_sqnr: float | None) -> None:
        """Mark the current plan (cost from the plan, `output_sqnr` from the live error)."""
        self._current_sqnr = output_sqnr
        self._draw_current()

    def current_cost(self) -> float | None:
        """The current plan's cost on the points' scale, or None without points."""
        from ..core.analysis.cost import plan_cost

        if not self.points or self._index is not self.project.index:
            return None
        ref = self.points[0]
        if not (ref.cost > 0 and ref.bit_ops > 0):
            return None
        return plan_cost(self.project.index, self.project.encodings).bit_ops * ref.cost / ref.bit_ops

    # --- internals ----------------------------------------------------------------------------
    def _draw_current(self) -> None:
        cost = self.current_cost() if self._current_sqnr is not None else None
        if cost is None or not math.isfinite(self._current_sqnr):
            self.current.setData([])
        else:
            self.current.setData(x=[cost], y=[self._current_sqnr])

    def _tip(self, x, y, data) -> str:
        if data is None or not 0 <= data < len(self.points):
            return ""
        return wrapped_tip(describe_point(self.points[data]) + "\nclick to apply")  # never off the window

    def _redraw(self) -> None:
        pts = self.points
        if not pts:
            self.scatter.setData([])
            self.front.setData([], [])
            self.current.setData([])
            return
        x = np.array([p.cost for p in pts], dtype=float)
        y = np.array([p.output_sqnr if math.isfinite(p.output_sqnr) else np.nan for p in pts], dtype=float)
        top = np.nanmax(y) + 5 if np.isfinite(y).any() else 100.0
        y = np.where(np.isnan(y), top, y)  # exact points on top of the plot
        brushes = [APPLIED_BRUSH if i == self.applied else POINT_BRUSH for i in range(len(pts))]
        self.scatter.setData(x=x, y=y, data=list(range(len(pts))), brush=brushes)
        order = np.argsort(x)
        self.front.setData(x[order], y[order])
        self._draw_current()
        self.plot.enableAutoRange()

    def _on_clicked(self, _item, points, _event=None) -> None:
        if len(points):
            self.apply_point(int(points[0].data()))

    def _done(self, index, points) -> None:
        self._thread = None
        if index is not self.project.index:
            self.info.setText("")
            self._update_buttons()
            self.searchFinished.emit(False)
            return
        self.set_points(points, index)
        acc = any(p.accuracy is not None for p in self.points)
        self.info.setText(f"{len(self.points)} points on the front; hover for details"
                          f"{' (with top-1 accuracy)' if acc else ''}, click one to apply it")
        self.searchFinished.emit(True)

    def _stopped(self) -> None:
        self._thread = None
        self.info.setText("Search stopped; the previous points are kept." if self.points else "")
        self._update_buttons()
        self.searchFinished.emit(False)

    def _update_buttons(self) -> None:
        if not shiboken6.isValid(self):
            return
        ready = self.project.index is not None and bool(self.project.stats)
        self.search_button.setEnabled(ready and self._thread is None)

    def _on_project(self, event: str, names) -> None:
        if not shiboken6.isValid(self):
            return
        if event in ("model", "index"):
            self.set_points([], self.project.index)
            self.info.setText("")
        self._update_buttons()
