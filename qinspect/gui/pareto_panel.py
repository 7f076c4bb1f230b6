"""Mixed precision search: the Pareto front of output error against cost, one click to apply.

"Search" runs `core.search.pareto_search` in a worker (candidate precisions from the check boxes)
and draws its points, cost against output SQNR (accuracy in the tooltip when the data has labels).
Clicking a point applies its `changes` as one undoable `SetEdits`.

"Meet target" (the target row, `pareto_target`) runs `analysis.to_target.search_to_target` with
the same candidates in a worker and applies the plan it finds as one undoable `SetEdits`; the plot
marks all-cheapest, all-dearest, the chosen plan and the target's line, and the info says what
was reached, or, when nothing can reach it, which groups limit it and the fix.

Object names: ``paretoPanel`` (the dock, set by the window), ``paretoPlot``, ``paretoSearchButton``,
``paretoCandidate_int8`` / ``_int16`` / ``_float16`` / ``_float32``, ``paretoInfo``, and the
target row's ``paretoTargetSqnr``, ``paretoDropCheck``, ``paretoMaxDrop``, ``paretoMeetButton``.

The current plan is drawn as a star (`set_current`, fed by the window's live error).

Signals: ``searchFinished(bool)`` when a search ends (True: new points shown);
``pointApplied(int)`` after a point was applied; ``targetFinished(bool)`` when a target search
ends (True: the target is met and the plan is the one found).
"""
from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ..core.commands import SetEdits
from ..core.errors import QInspectError
from .events import listen
from .pareto_target import TargetRow, describe_met, describe_unmet, goal_words
from .widgets import wrapped_tip

SAMPLES = 16
CANDIDATES = ("int8", "int16", "float16", "float32")
DEFAULT_CANDIDATES = ("int8", "int16", "float16")
POINT_BRUSH = pg.mkBrush(30, 110, 200, 200)
APPLIED_BRUSH = pg.mkBrush(230, 120, 0, 255)
CURRENT_BRUSH = pg.mkBrush(250, 220, 40, 230)
REFERENCE_BRUSH = pg.mkBrush(150, 150, 150, 220)
TARGET_PEN = pg.mkPen(220, 60, 60, 200, width=1.5, style=Qt.DashLine)


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
    targetFinished = Signal(bool)

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
        self.target_result = None  # the last `TargetResult` shown (None: none, or cleared)
        self._target_sqnr: float | None = None  # its SQNR target, for the line
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
        bar.addStretch(1)
        self.target_row = TargetRow()
        self.target_row.meet_button.clicked.connect(lambda: self.meet_target())
        self.target_row.sqnr_spin.lineEdit().returnPressed.connect(lambda: self.meet_target())
        # the outcome of a search or a target, beside the plot; it scrolls rather than squeeze the plot
        self.info = QLabel(objectName="paretoInfo", wordWrap=True)
        self.info.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        self.info.setTextInteractionFlags(Qt.TextSelectableByMouse)
        info_area = QScrollArea(objectName="paretoInfoArea", widgetResizable=True, frameShape=QFrame.NoFrame)
        info_area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        info_area.setWidget(self.info)

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
        # a target's outcome: its line, all-cheapest and all-dearest (grey), the chosen plan (orange)
        self.target_line = self.plot.plot(pen=TARGET_PEN)
        self.target_text = pg.TextItem(color=(220, 60, 60), anchor=(0, 1))
        self.plot.addItem(self.target_text)
        self.target_marks = pg.ScatterPlotItem(size=12, hoverable=True, hoverSize=15, tip=self._target_tip)
        self.target_marks.setZValue(4)
        self.plot.addItem(self.target_marks)
        self.target_labels = [pg.TextItem(color=(200, 200, 200)) for _ in range(3)]  # cheapest, dearest, chosen
        for label in self.target_labels:
            self.plot.addItem(label)

        below = QHBoxLayout()
        below.addWidget(info_area, 2)
        below.addWidget(self.plot, 3)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(bar)
        layout.addWidget(self.target_row)
        layout.addLayout(below, 1)

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
        self.target_result = None  # its costs may be on another scale (other candidates)
        self._redraw()
        self._update_buttons()

    def set_labelled(self, labelled: bool) -> None:
        """Whether the calibration data has labels (the window knows from the live error)."""
        self.target_row.set_labelled(labelled)

    def meet_target(self, target_sqnr=..., max_accuracy_drop=..., candidates=None, samples: int = SAMPLES) -> bool:
        """Search for the cheapest plan that meets the target in a worker and apply it as one
        undoable step; `targetFinished` tells how it ended. The target and candidates default to
        the row's and the check boxes' values. False (with a message) when it cannot start."""
        from . import messages

        project = self.project
        if self._thread is not None:
            return False
        row_sqnr, row_drop = self.target_row.values()
        target_sqnr = row_sqnr if target_sqnr is ... else target_sqnr
        max_accuracy_drop = row_drop if max_accuracy_drop is ... else max_accuracy_drop
        if project.index is None or not project.stats:
            messages.notify(self, "warning", "Not calibrated",
                            "Meeting a target measures plans on the calibration data; calibrate the model "
                            "first (Ctrl+R).")
            return False
        if not project.data_spec:
            messages.notify(self, "warning", "No calibration data",
                            "These statistics have no calibration data behind them (imported, or calibrated "
                            "elsewhere), and meeting a target measures plans on it: calibrate (Ctrl+R).")
            return False
        candidates = tuple(c for c in CANDIDATES if c in (candidates or self.candidates()))
        if len(candidates) < 2:
            messages.notify(self, "warning", "Two candidates needed",
                            "Tick at least two candidate precisions: the cheapest is where every group "
                            "starts, the dearest is where the groups that need it move.")
            return False
        if target_sqnr is None and max_accuracy_drop is None:
            messages.notify(self, "warning", "No target", "Set a target output SQNR or a largest top-1 drop.")
            return False
        index, stats, plan = project.index, project.stats, copy.deepcopy(project.plan)
        spec, options = project.data_spec, dict(project.data_options)

        def job(progress):
            from ..core.analysis.search import effective_changes
            from ..core.analysis.to_target import search_to_target
            from ..core.calib.data import open_data

            data = open_data(spec, index.inputs, **options)
            try:
                result = search_to_target(index, dict(stats), plan, data, target_sqnr=target_sqnr,
                                          max_accuracy_drop=max_accuracy_drop, candidates=candidates,
                                          samples=samples, progress=progress)
            except ValueError as exc:  # a target these data cannot measure (no labels, say)
                raise QInspectError(f"{spec}: {exc}") from None
            finally:
                data.close()
            # only what changes the plan: the undo step and the bold rows are the plan's real edits
            changes = effective_changes(index, stats, plan, result.point.changes) if result.met else {}
            return result, changes

        goal = goal_words(target_sqnr, max_accuracy_drop)
        self.info.setText(f"Searching for the cheapest plan over {', '.join(candidates)} that meets {goal} "
                          f"on {samples} samples… (Esc cancels)")
        self.info.setToolTip("")
        done = partial(self._target_done, index, stats, plan, candidates, goal, (target_sqnr, max_accuracy_drop))
        self._thread = self._start_job(job, "mixed precision to a target", done, self._target_stopped)
        self._update_buttons()
        return True

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
        """The current plan's cost on the points' scale (or the last target's), None without either."""
        from ..core.analysis.cost import plan_cost

        if self._index is not self.project.index:
            return None
        if self.points:
            ref = self.points[0]
        elif self.target_result is not None:
            ref = self.target_result.point
        else:
            return None
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
            self._draw_current()
            self._draw_target()
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
        self._draw_target()
        self.plot.enableAutoRange()

    def _target_tip(self, x, y, data) -> str:
        return wrapped_tip(str(data)) if data else ""

    def _draw_target(self) -> None:
        r, target_sqnr = self.target_result, self._target_sqnr
        for label in self.target_labels:
            label.setText("")
        if r is None:
            self.target_marks.setData([])
            self.target_line.setData([], [])
            self.target_text.setText("")
            return
        spots = []
        # all-cheapest and all-dearest in grey, named beside them (right of the first, left of the last)
        for ref, anchor in ((r.cheapest, (-0.1, 0)), (r.dearest, (1.1, 0.5))):
            if math.isfinite(ref.sqnr):
                spots.append({"pos": (ref.cost, ref.sqnr), "brush": REFERENCE_BRUSH, "symbol": "s",
                              "pen": pg.mkPen("w"),
                              "data": f"{ref.label}\ncost {ref.cost:.2f}\noutput SQNR {ref.sqnr:.1f} dB"})
                label = self.target_labels[len(spots) - 1]
                label.setText(ref.label)
                label.setAnchor(anchor)
                label.setPos(ref.cost, ref.sqnr)
        p = r.point
        if r.met and p is not None and math.isfinite(p.output_sqnr):
            # bigger than the star that marks the current plan, which sits on it once applied
            spots.append({"pos": (p.cost, p.output_sqnr), "brush": APPLIED_BRUSH, "symbol": "d", "size": 22,
                          "pen": pg.mkPen("k"), "data": f"chosen for {r.goal}\ncost {p.cost:.2f}\n"
                                                        f"output SQNR {p.output_sqnr:.1f} dB"})
            label = self.target_labels[2]
            label.setText("chosen")
            label.setAnchor((0.5, 1.3))
            label.setPos(p.cost, p.output_sqnr)
        self.target_marks.setData(spots)
        xs = [r.cheapest.cost, r.dearest.cost] + [pt.cost for pt in self.points]
        if target_sqnr is not None:
            self.target_line.setData([min(xs), max(xs)], [target_sqnr, target_sqnr])
            self.target_text.setText(f"target {target_sqnr:g} dB")
            self.target_text.setPos(min(xs), target_sqnr)
            ys = [y for y in [r.cheapest.sqnr, r.dearest.sqnr] + [pt.output_sqnr for pt in self.points]
                  if math.isfinite(y)]
            # above the line, or below it when it is the plot's top (above, it would be cut off)
            self.target_text.setAnchor((0, 0) if not ys or target_sqnr >= max(ys) else (0, 1))
        else:
            self.target_line.setData([], [])
            self.target_text.setText("")
        self.plot.enableAutoRange()

    def _target_done(self, index, stats, plan, candidates, goal, target, payload) -> None:
        from . import messages

        self._thread = None
        self._update_buttons()
        result, changes = payload
        project = self.project
        if index is not project.index or stats is not project.stats or not _same_plan(plan, project.plan):
            self.info.setText(f"The model, its statistics or the plan changed while the search for {goal} ran; "
                              "nothing applied. Meet the target again.")
            self.targetFinished.emit(False)
            return
        if self.points and set(self.points[0].precisions.values()) != {candidates[0]}:
            self.set_points([], index)  # the front's costs are over another cheapest plan
        self.target_result, self._target_sqnr = result, target[0]
        self._redraw()
        if not result.met:
            text, tip = describe_unmet(result, candidates)
            self.info.setText(text)
            self.info.setToolTip(wrapped_tip(tip))
            self.targetFinished.emit(False)
            return
        if changes:
            try:
                self.stack.push(SetEdits(changes, f"mixed precision to {goal}"))
            except ValueError as exc:
                self.info.setText(f"The plan found for {goal} cannot be applied; nothing changed.")
                messages.notify(self, "error", "Cannot apply the plan found", str(exc))
                self.targetFinished.emit(False)
                return
        text, tip = describe_met(result, applied=bool(changes))
        self.info.setText(text)
        self.info.setToolTip(wrapped_tip(tip))
        self._draw_current()
        self.targetFinished.emit(True)

    def _target_stopped(self) -> None:
        self._thread = None
        self.info.setText("Target search stopped (cancelled, or failed: see the message); nothing applied.")
        self._update_buttons()
        self.targetFinished.emit(False)

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
        self.target_row.meet_button.setEnabled(ready and self._thread is None)

    def _on_project(self, event: str, names) -> None:
        if not shiboken6.isValid(self):
            return
        if event in ("model", "index"):
            self.set_points([], self.project.index)
            self.info.setText("")
            self.info.setToolTip("")
        if event in ("model", "stats"):
            self.set_labelled(False)  # until the live error has measured these data
        self._update_buttons()


def _same_plan(a, b) -> bool:
    return a.edits == b.edits and a.defaults == b.defaults and a.target == b.target
