"""The selected tensor's histogram with its encoding range, grid and clipped tails; drag to edit.

Every plot item is created once and updated with setData/setValue: rebuilding items per redraw
is what makes pyqtgraph panels slow (style guide rule 9). Dragging the range previews the
clipped mass and estimated error live and pushes one undoable command on release (rule 4).

What is drawn comes from `histogram_display`: display bins for the plot's width, spikes (a Relu's
zeros) drawn and labelled on their own, clipped tails shaded over the whole height with their
share, and a log axis chosen when counts span orders of magnitude (until the user picks one).
The header is one line; its tooltip holds the details.
"""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from ..core.commands import EditTensors
from ..core.plan import resolve
from ..core.quant.encoding import Encoding, clip_bounds, compute_encoding
from ..core.quant.estimate import ErrorEstimate, channel_encoding, histogram_error, values_error
from ..core.quant.stats import DEFAULT_BINS, TensorStats
from .events import listen
from .before_after import before_channel_ranges, before_histogram
from .histogram_display import display_bins, spikes, wants_log
from .messages import notify
from .widgets import ElidedLabel

MAX_GRID_LINES = 64  # denser grids are drawn as nothing: a solid block of lines says less
EXACT_ERROR_LIMIT = 2_000_000  # per-channel weights up to this many values get an exact error
SPIKE_RATIO = 20  # a bin this many times taller than all others (ReLU zeros) is cut off the top
CURVE = (90, 140, 230)
TAIL_BRUSH = (230, 60, 60, 170)
CLIP_SHADE = (230, 60, 60, 40)  # the clipped side, over the whole height: visible on a linear axis
SPIKE_BRUSH = (140, 200, 255, 235)  # lighter than the curve: a spike stands out on the dark plot
REGION_BRUSH = (255, 200, 0, 28)
BEFORE = (235, 235, 235, 200)  # dashed outlines of a tensor before the last PTQ step
CHANNEL_TITLE = "per channel: encoding range (lines), observed min/max (triangles)"
BEFORE_TITLE = "per channel: range (lines), min/max (triangles), before {} (dashed)"  # short: a title sets the width
SHORT_TITLES = {"cross-layer equalization": "CLE"}
BEFORE_ZOOM = 10.0  # a before-span wider than this many times the current one is left off-scale


def _with_before(lo: float, hi: float, b_lo: float, b_hi: float) -> tuple[float, float, bool]:
    """The span that shows both now and before, unless before was so much wider that now would
    shrink to a line (CLE on an outlier channel): then now's span, and True for "off-scale"."""
    if b_hi - b_lo > BEFORE_ZOOM * max(hi - lo, 1e-12):
        return lo, hi, True
    return min(lo, b_lo), max(hi, b_hi), False


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _describe(est: ErrorEstimate) -> str:
    if math.isnan(est.mse):
        return "no data to estimate the error"
    sqnr = "inf" if est.sqnr_db == math.inf else f"{est.sqnr_db:.1f}"
    return f"clipped {100 * est.clipped_fraction:.3g} % · SQNR {sqnr} dB"


def _y_top(y: np.ndarray, piled: set[int] = frozenset()) -> tuple[float, int | None]:
    """Top of the y range, and the index of a spike that is left to run off the top: a lone bin
    SPIKE_RATIO times taller than all others, or a bin of piled-up values (`piled`: a Relu's zeros)
    more than twice as tall as the rest."""
    if y.size < 2:
        return float(y.max(initial=0.0)), None
    tallest = int(np.argmax(y))
    rest = float(np.max(np.delete(y, list(piled | {tallest}))) if y.size > len(piled | {tallest}) else 0.0)
    ratio = 2.0 if tallest in piled else SPIKE_RATIO
    if rest > 0 and y[tallest] > ratio * rest:
        return 1.5 * rest, tallest
    return float(y[tallest]), None


def _display_bins(n: int) -> int:
    """Bins for a channel's own histogram: a few hundred weights in 2048 bins is a comb."""
    return int(np.clip(2 * math.sqrt(n), 16, DEFAULT_BINS))


def _view_span(lo: float, hi: float, encoding: Encoding | None) -> tuple[float, float]:
    """The data range widened to show the encoding range, but by at most the data's own span:
    an int32 bias grid reaches 1e5 times past its values and would squash them to a line."""
    if encoding is None:
        return lo, hi
    span = max(hi - lo, abs(lo), abs(hi), 1e-12)
    return max(min(lo, float(encoding.min.min())), lo - span), min(max(hi, float(encoding.max.max())), hi + span)



class _LeaveUndoToTheWindow(QObject):
    """Lets undo/redo keys reach the window's actions while a spin box has focus: its line edit
    would claim them (ShortcutOverride) to undo its own text, so Ctrl+Z seemed to do nothing."""

    def eventFilter(self, obj, event) -> bool:
        if (event.type() == QEvent.Type.ShortcutOverride and event.key() in (Qt.Key.Key_Z, Qt.Key.Key_Y)
                and event.modifiers() & Qt.KeyboardModifier.ControlModifier):
            event.ignore()  # not claimed: the window's Undo (Ctrl+Z) / Redo (Ctrl+Shift+Z) shortcut runs
            return True
        return False

class HistogramPanel(QWidget):
    """Histogram of one tensor with its encoding range as a draggable LinearRegionItem.

    Object names: `histogramPlot` (PlotWidget), `channelPlot` (per-channel ranges of a weight),
    `channelSpin` (-1 = whole tensor), `logScaleCheck`, `previewLabel`, `histogramInfo`.
    """

    def __init__(self, project, stack, parent=None):
        super().__init__(parent)
        self.setObjectName("histogramPanel")
        self.project = project
        self.stack = stack
        self._name: str | None = None
        self._stats: TensorStats | None = None  # what is drawn (tensor or one channel)
        self._encoding: Encoding | None = None  # per-tensor encoding the region shows, if any
        self._shown: Encoding | None = None  # the tensor's encoding when last drawn
        self._editable = False
        self._weight_stats: dict[str, TensorStats] = {}
        self._channel_stats: dict[tuple[str, int], TensorStats] = {}
        self._exact_errors: dict[tuple[str, int, Encoding], ErrorEstimate] = {}
        self._channel_ranges: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self._log_user: bool | None = None  # the user's choice of axis; None: chosen per tensor
        self._setting_log = False
        self._build()
        listen(self, project, self._on_project_event)
        self.show_tensor(None)

    # --- construction --------------------------------------------------------------------
    def _build(self) -> None:
        self.info = ElidedLabel(objectName="histogramInfo")  # one line; the details in its tooltip
        self.channel_spin = QSpinBox(objectName="channelSpin")
        self._undo_keys = _LeaveUndoToTheWindow(self)  # a spin box claims Ctrl+Z for its text
        for w in (self.channel_spin, self.channel_spin.lineEdit()):
            w.installEventFilter(self._undo_keys)
        self.channel_spin.setSpecialValueText("whole tensor")
        self.channel_spin.setRange(-1, -1)
        self.channel_spin.setToolTip("Channel whose histogram to show (-1: the whole tensor)")
        self.channel_spin.valueChanged.connect(lambda _: self._redraw(reset_view=True))
        self.log_check = QCheckBox("Log scale", objectName="logScaleCheck")
        self.log_check.toggled.connect(self._on_log_toggled)
        self.preview = QLabel(objectName="previewLabel", wordWrap=True)
        # Fixed heights: a label whose height follows its text would re-lay out (and repaint from
        # scratch) both plots on every selection change.
        lines = self.fontMetrics().lineSpacing()
        self.info.setFixedHeight(lines + 4)
        self.preview.setFixedHeight(2 * lines + 4)
        channel_label = QLabel("Channel:")

        self.plot = pg.PlotWidget()
        self.plot.setObjectName("histogramPlot")  # PlotWidget passes keyword arguments to its PlotItem
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "value")
        self.curve = self.plot.plot(stepMode="center", fillLevel=0, pen=CURVE, brush=CURVE + (130,))
        self.before_curve = self.plot.plot(stepMode="center", pen=pg.mkPen(*BEFORE, width=1, style=Qt.DashLine))
        self.tails = [self.plot.plot(stepMode="center", fillLevel=0, pen=None, brush=TAIL_BRUSH) for _ in range(2)]
        self.grid = self.plot.plot(connect="pairs", pen=pg.mkPen(60, 60, 60, 120, width=1))
        dashed = pg.mkPen(30, 130, 30, width=1, style=Qt.DashLine)
        self.min_line = pg.InfiniteLine(angle=90, pen=dashed, label="min", labelOpts={"position": 0.92})
        self.max_line = pg.InfiniteLine(angle=90, pen=dashed, label="max", labelOpts={"position": 0.92})
        self.region_item = pg.LinearRegionItem(brush=REGION_BRUSH, hoverBrush=REGION_BRUSH[:3] + (60,))
        # On top, or the filled histogram takes the mouse and the handles cannot be grabbed;
        # a faint brush keeps the histogram under it readable.
        self.region_item.setZValue(10)
        self.notice = pg.TextItem(anchor=(0.5, 0.5), color=(120, 120, 120))
        self.clip_shades = [pg.LinearRegionItem(movable=False, brush=CLIP_SHADE, pen=pg.mkPen(None)) for _ in range(2)]
        self.clip_labels = [pg.TextItem(anchor=a, color=(255, 130, 130)) for a in ((1, 0), (0, 0))]
        self.spike_bars = pg.BarGraphItem(x=[], height=[], width=1.0, brush=SPIKE_BRUSH, pen=None)
        self.spike_labels = [pg.TextItem(anchor=(0.5, 1.0), color=(170, 215, 255)) for _ in range(3)]
        for item in (*self.clip_shades, self.spike_bars, self.min_line, self.max_line, self.region_item,
                     self.notice, *self.clip_labels, *self.spike_labels):
            self.plot.addItem(item)
        for item in (*self.clip_shades, *self.clip_labels, *self.spike_labels):
            item.hide()
        self.region_item.sigRegionChanged.connect(self._on_region_changed)
        self.region_item.sigRegionChangeFinished.connect(self._on_region_finished)
        self.plot.getViewBox().sigXRangeChanged.connect(lambda *_: self._update_grid(self._encoding))

        self.channel_plot = pg.PlotWidget()
        self.channel_plot.setObjectName("channelPlot")
        self.channel_plot.setMenuEnabled(False)
        self.channel_plot.setLabel("bottom", "channel")
        self.channel_plot.setTitle(CHANNEL_TITLE, size="8pt")
        self.enc_min = self.channel_plot.plot(stepMode="center", pen=(230, 150, 0))
        self.enc_max = self.channel_plot.plot(stepMode="center", pen=(230, 150, 0))
        self.obs_min = self.channel_plot.plot(pen=None, symbol="t1", symbolSize=7, symbolBrush=CURVE)
        self.obs_max = self.channel_plot.plot(pen=None, symbol="t", symbolSize=7, symbolBrush=CURVE)
        before_pen = pg.mkPen(*BEFORE, width=1, style=Qt.DashLine)
        self.before_min = self.channel_plot.plot(pen=before_pen)  # observed ranges before the last PTQ step
        self.before_max = self.channel_plot.plot(pen=before_pen)
        self.channel_marker = pg.InfiniteLine(angle=90, pen=pg.mkPen(120, 120, 120, style=Qt.DotLine))
        self.channel_plot.addItem(self.channel_marker)
        self.channel_plot.setMaximumHeight(180)

        top = QHBoxLayout()
        top.addWidget(self.info, 1)
        top.addWidget(channel_label)
        top.addWidget(self.channel_spin)
        top.addWidget(self.log_check)
        self._channel_widgets = [channel_label, self.channel_spin, self.channel_plot]
        for w in self._channel_widgets[:2]:  # the header's controls keep their place; the plot gives its room
            policy = w.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            w.setSizePolicy(policy)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.channel_plot)
        layout.addWidget(self.preview)

    # --- public API ------------------------------------------------------------------------
    @property
    def tensor(self) -> str | None:
        return self._name

    def show_tensor(self, name: str | None) -> None:
        """Show `name`'s histogram (None clears the panel)."""
        if name != self._name:
            self._name = name
            self.channel_spin.blockSignals(True)
            self.channel_spin.setValue(-1)
            self.channel_spin.blockSignals(False)
        self._redraw(reset_view=True)

    def histogram_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of the statistics behind the plot: the tensor's, or the selected channel's."""
        if self._stats is None or self._stats.count == 0:
            return np.empty(0), np.empty(0)
        return self._stats.edges, self._stats.counts.copy()

    def display_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) as drawn: display bins for the plot's width (`histogram_display`)."""
        return display_bins(self._stats, self.plot.width())

    @property
    def log_scale(self) -> bool:
        return self.log_check.isChecked()

    def _on_log_toggled(self, checked: bool) -> None:
        if not self._setting_log:
            self._log_user = checked  # the user's choice now wins over the automatic one
        self._redraw(reset_view=True)

    def _set_log(self, on: bool, why: str) -> None:
        self._setting_log = True
        try:
            self.log_check.setChecked(on)
        finally:
            self._setting_log = False
        self.log_check.setToolTip(why)

    def region(self) -> tuple[float, float] | None:
        """The encoding range shown as the draggable region; None when no range is shown."""
        if not self.region_item.isVisible():
            return None
        lo, hi = self.region_item.getRegion()
        return float(lo), float(hi)

    # --- what to show ----------------------------------------------------------------------
    def _source(self) -> str:
        return self.project.index.encoding_source(self._name)

    def _target(self):
        return self.project.index.targets.get(self._source())

    def _tensor_stats(self, name: str) -> TensorStats | None:
        """Own stats first (an aliased tensor may have them), then its source's, then a constant's values."""
        index = self.project.index
        stats = self.project.stats.get(name)
        if stats is None:
            stats = self.project.stats.get(index.encoding_source(name))
        if stats is None and index.is_constant(name):
            if name not in self._weight_stats:
                self._weight_stats[name] = TensorStats.of(index.initializer(name))
            stats = self._weight_stats[name]
        return stats

    def _channel_axis(self, encoding: Encoding | None) -> int | None:
        """The channel axis of a weight with output channels, or of a constant with a per-channel
        encoding. Per-tensor weights get it too: their channels' spread under the one range is what
        cross-layer equalization is for."""
        if encoding is None or encoding.is_float or not self.project.index.is_constant(self._name):
            return None
        values = self.project.index.initializer(self._name)
        if len(encoding.scale) > 1:
            axis = encoding.axis
            return axis if axis is not None and values.ndim > axis and values.shape[axis] == len(encoding.scale) else None
        target = self.project.index.targets.get(self._name)
        axis = target.axis if target is not None and target.kind == "weight" else None
        return axis if axis is not None and values.ndim > axis and values.shape[axis] > 1 else None

    def _one_channel_stats(self, axis: int, channel: int) -> TensorStats:
        key = (self._name, channel)
        if key not in self._channel_stats:
            values = self.project.index.initializer(self._name)
            one = np.take(values, channel, axis=axis)
            self._channel_stats[key] = TensorStats.of(one, _display_bins(one.size))
        return self._channel_stats[key]

    # --- drawing ---------------------------------------------------------------------------
    def _redraw(self, reset_view: bool) -> None:
        name = self._name
        project = self.project
        self._shown = None
        if name is None or project.index is None:
            self._show_message("No tensor selected", "")
            return
        if name not in project.index.tensors and name not in project.index.targets:
            self._show_message(f"{name}: not a tensor of this model", "")
            return
        encoding = self._shown = project.encoding(name)
        axis = self._channel_axis(encoding)
        self._set_channel_view(encoding, axis)
        channel = self.channel_spin.value() if axis is not None else -1
        stats = self._one_channel_stats(axis, channel) if channel >= 0 else self._tensor_stats(name)
        info = self._info_text(stats, encoding, channel)
        if stats is None or stats.count == 0:
            self._show_message(info, "not calibrated")
            return
        self._stats = stats
        self.notice.hide()
        edges, counts = self.display_data()
        piles = spikes(stats)
        if self._log_user is None:
            auto = wants_log(counts)
            self._set_log(auto, "Chosen for this tensor: " + ("its counts span orders of magnitude" if auto else
                          "its counts are of one order") + ". Click to choose yourself.")
        log = self.log_check.isChecked()
        y = np.log10(1.0 + counts) if log else counts
        self.curve.setData(edges, y)
        before = before_histogram(project, name, len(counts), (axis, channel) if channel >= 0 else None)
        if before is None:
            self.before_curve.setData([], [])
        else:
            b_edges, b_counts, step = before
            self.before_curve.setData(b_edges, np.log10(1.0 + b_counts) if log else b_counts)
            lo, hi = _view_span(stats.min, stats.max, encoding)
            if _with_before(lo, hi, float(b_edges[0]), float(b_edges[-1]))[2]:
                info += f" · dashed: before {step}, [{_fmt(b_edges[0])}, {_fmt(b_edges[-1])}], mostly off this scale"
            else:
                info += f" · dashed: before {step}"
        self.plot.setLabel("left", "log10(1 + count)" if log else "count")
        self.min_line.setValue(stats.min)
        self.max_line.setValue(stats.max)
        self.min_line.show()
        self.max_line.show()

        # The integer encoding the region shows: a channel's own, or a per-channel envelope.
        shown = None
        if encoding is not None and not encoding.is_float:
            shown = channel_encoding(encoding, channel) if channel >= 0 else encoding
        # Grid and tails need one scale; the plan edits whole-tensor ranges only.
        self._encoding = shown if shown is not None and len(shown.scale) == 1 else None
        self._editable = self._encoding is not None and self._target() is not None and channel < 0
        piled = {int(np.clip(np.searchsorted(edges, s.value, side="right") - 1, 0, len(y) - 1)) for s in piles}
        top, off_top = _y_top(y, piled) if not log else (float(y.max()), None)
        if off_top is not None:
            centre = 0.5 * (edges[off_top] + edges[off_top + 1])
            info += f" · the bin at {_fmt(centre)} ({int(counts[off_top]):,} values) runs off the top"
        if reset_view:
            self._reset_view(stats, shown, top, before)
        self._set_region(shown, stats)
        self._draw_overlays(self._encoding)
        self._draw_spikes(piles, stats, log)
        self._draw_clipping(shown, stats)
        if encoding is not None and encoding.is_float:
            (x0, x1), (_, top) = self.plot.getViewBox().viewRange()
            self.notice.setText(f"kept in float{encoding.bw}")
            self.notice.setPos(0.5 * (x0 + x1), 0.9 * top)
            self.notice.show()
        self.info.setText(info)
        self.preview.setText(self._estimate_text(stats, encoding, channel))
        self._apply_view()

    def _apply_view(self) -> None:
        # ViewBox applies a new range lazily while painting, which moves the line labels and
        # asks for a second full repaint; applying it now halves the cost of a selection change.
        self.plot.getViewBox().updateMatrix()
        if self.channel_plot.isVisible():
            self.channel_plot.getViewBox().updateMatrix()

    def _show_message(self, info: str, notice: str) -> None:
        self._stats = None
        self._encoding = None
        self._editable = False
        if self._shown is None:
            self._set_channel_view(None, None)
        for item in (self.curve, self.before_curve, *self.tails, self.grid):
            item.setData([], [])
        for item in (self.min_line, self.max_line, self.region_item, *self.clip_shades, *self.clip_labels,
                     *self.spike_labels):
            item.hide()
        self.spike_bars.setOpts(x=[], height=[])
        self.notice.setText(notice)
        self.notice.setVisible(bool(notice))
        self.plot.setXRange(0, 1)
        self.plot.setYRange(0, 1)
        self.notice.setPos(0.5, 0.5)
        self.info.setText(info)
        self.preview.setText("")
        self._apply_view()

    def _reset_view(self, stats: TensorStats, encoding: Encoding | None, top: float, before=None) -> None:
        lo, hi = _view_span(stats.min, stats.max, encoding)
        if before is not None:  # show what the last PTQ step changed too
            lo, hi, _ = _with_before(lo, hi, float(before[0][0]), float(before[0][-1]))
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.05
        self.plot.setXRange(lo - pad, hi + pad, padding=0)
        self.plot.setYRange(0, top * 1.05 or 1.0, padding=0)

    def _set_region(self, shown: Encoding | None, stats: TensorStats) -> None:
        """Put the region on the encoding's range without letting it push a command."""
        if shown is None:
            self.region_item.hide()
            return
        lo, hi = float(shown.min.min()), float(shown.max.max())  # whole-tensor view of a per-channel encoding: the envelope
        span = max(hi - lo, stats.max - stats.min, 1e-12)
        region = self.region_item
        region.blockSignals(True)
        try:
            region.setBounds((min(lo, stats.min) - span, max(hi, stats.max) + span))
            region.setRegion((lo, hi))
            region.setMovable(self._editable)
        finally:
            region.blockSignals(False)
        region.show()

    def _draw_overlays(self, encoding: Encoding | None) -> None:
        """Clipped tails and grid for `encoding` (the committed one, or a drag preview)."""
        stats = self._stats
        if stats is None or encoding is None:
            for item in (*self.tails, self.grid):
                item.setData([], [])
            return
        lo, hi = float(encoding.min[0]), float(encoding.max[0])
        edges, counts = self.display_data()  # the bins the curve shows, so the tails sit on it
        counts = np.log10(1.0 + counts) if self.log_check.isChecked() else counts
        k = int(np.searchsorted(edges, lo, side="left"))  # bins 0..k-1 start below lo
        j = int(np.searchsorted(edges, hi, side="right"))  # bins j-1.. end above hi
        if 0 < k <= len(counts):
            self.tails[0].setData(np.append(edges[:k], lo), counts[:k])
        else:
            self.tails[0].setData([], [])
        if 0 < j <= len(counts):
            self.tails[1].setData(np.insert(edges[j:], 0, hi), counts[j - 1:])
        else:
            self.tails[1].setData([], [])
        self._update_grid(encoding)

    def _draw_spikes(self, piles, stats: TensorStats, log: bool) -> None:
        """Values piled on one point, as a bar a few pixels wide at least, labelled with their share."""
        (x0, x1), (_, top) = self.plot.getViewBox().viewRange()
        width = max((x1 - x0) * 0.006, 1e-12)
        heights = [min(np.log10(1.0 + s.count) if log else s.count, top * 0.97) for s in piles]
        self.spike_bars.setOpts(x=[s.value for s in piles], height=heights, width=width)
        for label, spike, h in zip(self.spike_labels, piles + [None] * 3, heights + [0] * 3):
            if spike is None:
                label.hide()
                continue
            label.setText(f"{_fmt(spike.value)}: {100 * spike.share:.1f}% of the values")
            # Kept inside the plot: beside a spike at an edge of the view (a Relu's zero is at
            # the left one) rather than centred on it, hanging under the "min"/"max" labels when
            # the spike runs off the top.
            where = (spike.value - x0) / (x1 - x0) if x1 > x0 else 0.5
            ax = 0.0 if where < 0.25 else 1.0 if where > 0.75 else 0.5
            gap = 1.5 * width * (1 if ax == 0.0 else -1 if ax == 1.0 else 0)
            capped = h >= top * 0.96
            label.setAnchor((ax, 0.0 if capped else 1.0))
            label.setPos(spike.value + gap, top * 0.86 if capped else h)
            label.show()

    def _draw_clipping(self, encoding: Encoding | None, stats: TensorStats) -> None:
        """Each clipped side shaded from the encoding's end to the edge of the view, with its share."""
        (x0, x1), (_, top) = self.plot.getViewBox().viewRange()
        shown = encoding is not None and len(encoding.scale) == 1
        lo, hi = clip_bounds(encoding) if shown else (None, None)
        sides = [(stats.clipped_fraction(float(lo[0]), np.inf), (min(x0, float(encoding.min[0])), float(encoding.min[0])))
                 if shown else (0.0, None),
                 (stats.clipped_fraction(-np.inf, float(hi[0])), (float(encoding.max[0]), max(x1, float(encoding.max[0]))))
                 if shown else (0.0, None)]
        for shade, label, (share, span) in zip(self.clip_shades, self.clip_labels, sides):
            if share <= 0 or span is None:
                shade.hide()
                label.hide()
                continue
            shade.setRegion(span)
            shade.show()
            label.setText(f"{100 * share:.2g}% clipped")
            label.setPos(span[1] if label is self.clip_labels[0] else span[0], top * 0.98)
            label.show()

    def _update_grid(self, encoding: Encoding | None) -> None:
        if encoding is None or self._stats is None:
            self.grid.setData([], [])
            return
        (v0, v1), (_, top) = self.plot.getViewBox().viewRange()
        scale, offset = encoding.scale[0], encoding.offset[0]
        q0 = max(math.ceil(v0 / scale - offset), 0)
        q1 = min(math.floor(v1 / scale - offset), encoding.steps)
        count = q1 - q0 + 1
        if count <= 0 or count > MAX_GRID_LINES:
            self.grid.setData([], [])
            return
        x = np.repeat((np.arange(q0, q1 + 1) + offset) * scale, 2)
        self.grid.setData(x, np.tile([0.0, top], count))

    def _set_channel_view(self, encoding: Encoding | None, axis: int | None) -> None:
        for w in self._channel_widgets:
            w.setVisible(axis is not None)
        if axis is None:
            self.channel_spin.blockSignals(True)
            self.channel_spin.setRange(-1, -1)
            self.channel_spin.blockSignals(False)
            return
        if self._name not in self._channel_ranges:
            values = self.project.index.initializer(self._name)
            flat = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
            self._channel_ranges[self._name] = (flat.shape[0], flat.min(axis=1), flat.max(axis=1))
        n, lows, highs = self._channel_ranges[self._name]
        self.channel_spin.blockSignals(True)
        self.channel_spin.setRange(-1, n - 1)
        self.channel_spin.blockSignals(False)
        x = np.arange(n)
        steps = np.arange(n + 1) - 0.5
        self.obs_min.setData(x, lows)
        self.obs_max.setData(x, highs)
        self.enc_min.setData(steps, np.broadcast_to(encoding.min, n))  # a per-tensor range: one flat line
        self.enc_max.setData(steps, np.broadcast_to(encoding.max, n))
        y0, y1 = _view_span(float(lows.min()), float(highs.max()), encoding)
        before = before_channel_ranges(self.project, self._name, axis)
        if before is None or len(before[0]) != n:
            self.before_min.setData([], [])
            self.before_max.setData([], [])
            self.channel_plot.setTitle(CHANNEL_TITLE, size="8pt")
        else:
            self.before_min.setData(x, before[0])
            self.before_max.setData(x, before[1])
            y0, y1, off = _with_before(y0, y1, float(before[0].min()), float(before[1].max()))
            step = SHORT_TITLES.get(before[2], before[2])
            self.channel_plot.setTitle(BEFORE_TITLE.format(step + (", off-scale" if off else "")), size="8pt")
        self.channel_plot.setXRange(-0.5, n - 0.5, padding=0.02)
        self.channel_plot.setYRange(y0, y1, padding=0.05)
        channel = self.channel_spin.value()
        self.channel_marker.setValue(channel)
        self.channel_marker.setVisible(channel >= 0)
        self.channel_plot.setLabel("left", f"range (axis {axis})")

    # --- text ------------------------------------------------------------------------------
    def _info_text(self, stats: TensorStats | None, encoding: Encoding | None, channel: int) -> str:
        name = self._name
        target = self._target()
        parts = [name]
        if target is not None:
            parts.append(f"{target.kind} ({target.op_type})")
        source = self._source()
        if source != name:
            parts.append(f"uses the encoding of {source}")
        if channel >= 0:
            parts.append(f"channel {channel}")
        if stats is None or stats.count == 0:
            why = "no finite values were seen" if stats is not None else "run Calibrate to see its histogram"
            parts.append(f"not calibrated: {why}")
        else:
            parts.append(f"{stats.count:,} values, min {_fmt(stats.min)}, max {_fmt(stats.max)}")
            if getattr(stats, "sampled", False):
                # Calibration bins a bounded subsample of each batch for speed; min/max stay exact.
                parts.append("histogram from a subsample (min/max exact)")
        if stats is not None and stats.nonfinite_count:
            parts.append(f"NaN {stats.nan_count:,}, +Inf {stats.posinf_count:,}, -Inf {stats.neginf_count:,} "
                         "(not in the histogram)")
        if encoding is None:
            parts.append("no encoding" if target is None else "no encoding yet")
        elif encoding.is_float:
            parts.append(f"kept in float{encoding.bw}")
        else:
            kind = "symmetric" if encoding.symmetric else "asymmetric"
            if len(encoding.scale) > 1:
                kind += f", per channel ({len(encoding.scale)})"
            parts.append(("int8 on a 7-bit grid" if encoding.bw == 7 else f"int{encoding.bw}") + f" {kind}")
            if len(encoding.scale) > 1 and channel < 0:
                parts.append("pick a channel for its grid (per-channel ranges cannot be dragged)")
        return " · ".join(parts)

    def _estimate_text(self, stats: TensorStats, encoding: Encoding | None, channel: int) -> str:
        if encoding is None:
            return ""
        if len(encoding.scale) > 1:
            # Per-channel weights: the values are known, so the error is exact, not estimated.
            est = self._exact_error(encoding, channel)
            if est is None:
                return "select a channel to see its error"
            where = "per-channel encoding" if channel < 0 else f"channel {channel}"
            return f"{where}, its own quantizer: {_describe(est)} (exact, on the weight values)"
        est = histogram_error(stats, encoding)
        where = "float16 cast" if encoding.is_float else f"[{_fmt(encoding.min[0])}, {_fmt(encoding.max[0])}]"
        return f"{where}, its own quantizer: {_describe(est)} (estimated from the histogram)"

    def _exact_error(self, encoding: Encoding, channel: int) -> ErrorEstimate | None:
        """Error of a per-channel encoding on the values themselves (cached: not cheap)."""
        key = (self._name, channel, encoding)
        if key not in self._exact_errors:
            index = self.project.index
            values, given = index.initializer(self._name), index.quantized_value(self._name)
            if channel >= 0:
                values = np.take(values, channel, axis=encoding.axis)
                given = np.take(given, channel, axis=encoding.axis)
                encoding = channel_encoding(encoding, channel)
            elif values.size > EXACT_ERROR_LIMIT:
                return None
            self._exact_errors[key] = values_error(values, encoding, given)
        return self._exact_errors[key]

    # --- dragging --------------------------------------------------------------------------
    def _snap(self, lo: float, hi: float) -> Encoding:
        """The encoding the plan will make of the range [lo, hi]: same settings as the target runs
        them (a 7-bit weight grid, say), same grid rules."""
        source = self._source()
        settings = resolve(self.project.index, self.project.plan, source)[0]
        defaults = self.project.plan.defaults
        bw, symmetric, strict = settings.bw, settings.symmetric, settings.strict
        if settings.encoding is not None:  # an imported encoding: keep its bitwidth and symmetry
            bw, symmetric, strict = settings.encoding.bw, settings.encoding.symmetric, settings.encoding.strict
        return compute_encoding(lo, hi, bw, symmetric=symmetric, strict=strict, unsigned=settings.unsigned,
                                variant=defaults.symmetric_variant, min_range=defaults.min_range)

    def _on_region_changed(self, _item=None) -> None:
        # histogram_error costs well under 1 ms for 2048 bins, so no throttling is needed.
        if not self._editable or self._stats is None:
            return
        lo, hi = self.region_item.getRegion()
        try:
            enc = self._snap(lo, hi)
        except ValueError as e:
            self.preview.setText(f"preview: {e}")
            return
        est = histogram_error(self._stats, enc)
        self.preview.setText(f"preview [{_fmt(enc.min[0])}, {_fmt(enc.max[0])}]: {_describe(est)}")
        self._draw_overlays(enc)

    def _on_region_finished(self, _item=None) -> None:
        if not self._editable or self._encoding is None:
            return
        lo, hi = self.region_item.getRegion()
        source = self._source()
        try:
            enc = self._snap(lo, hi)
            snapped = (float(enc.min[0]), float(enc.max[0]))
            current = (float(self._encoding.min[0]), float(self._encoding.max[0]))
            if np.allclose(snapped, current, rtol=1e-9, atol=0.0) and enc.bw == self._encoding.bw:
                self._redraw(reset_view=False)  # nothing changed: put the region back on the grid
                return
            changes = {"range": snapped}
            imported = self.project.plan.settings(self._target().kind, source).encoding
            if imported is not None:
                # An exact (imported) encoding wins over a range: replace it, keeping its bitwidth.
                changes.update(encoding=None, bw=imported.bw, symmetric=imported.symmetric)
            self.stack.push(EditTensors([source], **changes))
        except ValueError as e:
            notify(self, "error", "Cannot set this range", str(e))
            self._redraw(reset_view=False)
        # On success the project's "plan" event redraws the panel with the snapped encoding.

    # --- project events --------------------------------------------------------------------
    def _on_project_event(self, event: str, names) -> None:
        if not shiboken6.isValid(self):
            return
        if event in ("model", "index", "stats"):
            self._weight_stats.clear()
            self._channel_stats.clear()
            self._exact_errors.clear()
            self._channel_ranges.clear()
            if event in ("model", "index"):
                index = self.project.index
                keep = index is not None and self._name is not None and self._name in index.tensors
                self.show_tensor(self._name if keep else None)
            elif self._name is not None:
                self._redraw(reset_view=True)
            return
        if event == "plan" and self._name is not None:
            # A bias's encoding follows its weight's and input's: compare, not only match names.
            named = names is None or self._source() in names or self._name in names
            if named or self.project.encoding(self._name) != self._shown:
                self._redraw(reset_view=False)
