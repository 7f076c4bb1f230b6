"""The Compare panel's plot: one tensor's values with A's and B's encoding ranges over them.

The values are the calibration histogram for an activation, the initializer's values for a weight
or bias, and B's values overlaid when B has its own model (after fine-tuning): its weights where
they differ, and its activations histogrammed on the comparison's samples, scaled to A's count. Each
side's range is a span with its edges at the grid's min and max (over channels: the lowest min and
the highest max), A's solid blue, B's dashed orange, so equal ranges still show both. The legend
is a label above the plot, so it never covers the data.

Object names: ``compareHistogram`` (the PlotWidget), ``compareLegend``, ``compareHistogramInfo``,
``compareLogCheck``.
"""
from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from .histogram import CURVE
from .histogram_display import display_bins, rebin, wants_log
from .widgets import ElidedLabel

A_COLOR = CURVE            # the main histogram's blue
B_COLOR = (245, 150, 40)   # orange: apart from blue for most colour vision too
SPAN_ALPHA = 28            # faint: the histogram under a span stays readable


def side_text(letter: str, side) -> str:
    """A legend entry: "A [0, 6.18] 8-bit", "B [-0.5, 0.5] 8-bit per channel", "B float16"."""
    if side is None or side.min is None:
        what = "no encoding" if side is None or side.encoding == "none" else side.encoding
        return f"{letter} {what} (no range)"
    text = f"{letter} [{side.min:.4g}, {side.max:.4g}] {side.bw}-bit"
    return text + (" per channel" if side.encoding.endswith("/ch") else "")


def _hex(color) -> str:
    return "#" + "".join(f"{c:02x}" for c in color[:3])


class ComparePlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._name: str | None = None
        self._shown = None  # the arguments of the last show(), to redraw on a log toggle
        self._log_user: bool | None = None  # the user's choice of axis; None: chosen per tensor
        self._data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.info = ElidedLabel(objectName="compareHistogramInfo")
        self.log_check = QCheckBox("Log scale", objectName="compareLogCheck")
        self.log_check.clicked.connect(self._on_log_clicked)
        self.legend = QLabel(objectName="compareLegend", wordWrap=True)
        self.legend.setTextFormat(Qt.RichText)
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("compareHistogram")
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "value")
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)  # "value (x0.001)" under weights read badly
        self.plot.setMinimumSize(160, 100)
        # B outlined only: a fill over A's would tint it into a third colour
        self.curves = {"A": self.plot.plot(stepMode="center", fillLevel=0, pen=A_COLOR, brush=A_COLOR + (170,)),
                       "B": self.plot.plot(stepMode="center", pen=pg.mkPen(*B_COLOR, width=2))}
        self.spans = {}
        for letter, color, style in (("A", A_COLOR, Qt.SolidLine), ("B", B_COLOR, Qt.DashLine)):
            pen = pg.mkPen(*color, width=2, style=style)
            span = pg.LinearRegionItem(movable=False, brush=color + (SPAN_ALPHA,), pen=pen, hoverPen=pen,
                                       hoverBrush=color + (SPAN_ALPHA,))
            span.setZValue(5 if letter == "A" else 6)  # B's dashes over A's line when the ranges are equal
            self.plot.addItem(span)
            self.spans[letter] = span
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.info, 1)
        top.addWidget(self.log_check)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 0, 2, 2)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.legend)
        layout.addWidget(self.plot, 1)
        self.clear("Select a tensor in the table to see its values and both ranges.")

    # --- what tests and the panel read ---------------------------------------------------------
    @property
    def tensor(self) -> str | None:
        return self._name

    def ranges(self) -> dict[str, tuple[float, float] | None]:
        """Each side's range as drawn (None: no range shown, e.g. a float encoding)."""
        return {k: (tuple(float(v) for v in span.getRegion()) if span.isVisible() else None)
                for k, span in self.spans.items()}

    def histogram_data(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(edges, counts) of the statistics behind each drawn histogram: "A", and "B" when overlaid."""
        return dict(self._data)

    def legend_texts(self) -> list[str]:
        return list(self._legend)

    # --- drawing ----------------------------------------------------------------------------------
    def clear(self, text: str = "") -> None:
        self._name, self._shown, self._data, self._legend = None, None, {}, []
        for curve in self.curves.values():
            curve.setData([], [])
        for span in self.spans.values():
            span.hide()
        self.info.setText(text)
        self.legend.setText("")
        self.plot.setXRange(0, 1, padding=0)
        self.plot.setYRange(0, 1, padding=0)

    def show_values(self, name: str, what: str, stats: dict, sides: dict) -> None:
        """Draw `stats` ("A", and "B" to overlay; TensorStats) with `sides`' ranges ("A", "B": diff
        Sides). `what` starts the info line."""
        self._name, self._shown = name, (name, what, stats, sides)
        self._data = {k: (s.edges, s.counts.copy()) for k, s in stats.items()}
        a = stats["A"]
        width = self.plot.width()
        if "B" in stats and stats["B"].count:
            b = stats["B"]
            lo, hi = min(a.min, b.min), max(a.max, b.max)
            edges = display_bins(a, width)[0]
            edges = np.linspace(lo, hi, len(edges)) if hi > lo else edges
            counts = {"A": rebin(a, edges), "B": rebin(b, edges)}  # one set of bins: the shapes compare
            if b.count != a.count:  # B's activations come from fewer samples: compare shapes, not totals
                counts["B"] = counts["B"] * (a.count / b.count)
        else:
            edges, c = display_bins(a, width)
            counts = {"A": c}
        if self._log_user is None:
            self.log_check.setChecked(any(wants_log(c) for c in counts.values()))
        log = self.log_check.isChecked()
        top = 1.0
        for k, curve in self.curves.items():
            if k in counts:
                y = np.log10(1.0 + counts[k]) if log else counts[k]
                curve.setData(edges, y)
                top = max(top, float(y.max(initial=0.0)))
            else:
                curve.setData([], [])
        self.plot.setLabel("left", "log10(1 + count)" if log else "count")

        data_lo, data_hi = float(edges[0]), float(edges[-1])
        view_lo, view_hi, off = data_lo, data_hi, []
        span = max(data_hi - data_lo, abs(data_lo), abs(data_hi), 1e-12)
        self._legend = []
        parts = []
        for letter, color in (("A", A_COLOR), ("B", B_COLOR)):
            side = sides.get(letter)
            text = side_text(letter, side)
            self._legend.append(text)
            entry = html.escape(text).replace(" ", "&nbsp;")  # a narrow plot wraps between entries only
            parts.append(f'<span style="color:{_hex(color)}">&#9632;</span>&nbsp;{entry}')
            item = self.spans[letter]
            if side is None or side.min is None:  # float or not quantized: nothing to draw
                item.hide()
                continue
            item.setRegion((side.min, side.max))
            item.show()
            # Widen the view to a range, but by at most the data's own span: an int32 bias grid
            # reaches 1e5 times past its values and would squash them to a line.
            view_lo = max(min(view_lo, side.min), data_lo - span)
            view_hi = min(max(view_hi, side.max), data_hi + span)
            if side.min < data_lo - span or side.max > data_hi + span:
                off.append(letter)
        self.legend.setText("&nbsp;&nbsp; ".join(parts))
        pad = 0.04 * (view_hi - view_lo) if view_hi > view_lo else max(abs(view_lo), 1.0) * 0.05
        self.plot.setXRange(view_lo - pad, view_hi + pad, padding=0)
        self.plot.setYRange(0, top * 1.05, padding=0)
        if off:  # first: the tensor's name is known from the table, a cut-off range is not
            what = (" and ".join(f"{k}'s" for k in off) + (" ranges run" if len(off) > 1 else " range runs")
                    + " off this scale · " + what)
        self.info.setText(what)

    def _on_log_clicked(self, checked: bool) -> None:
        self._log_user = checked  # the user's choice now wins over the automatic one
        if self._shown is not None:
            self.show_values(*self._shown)
