"""The histogram panel's plot items, created once and updated in place: the histogram plot with
its encoding range (draggable region), grid, clipped tails and shades, spikes, and the per-channel
range plot with its "before" outlines. A mixin of `HistogramPanel`."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt

from ..core.quant.encoding import Encoding, clip_bounds
from ..core.quant.stats import TensorStats
from .before_after import before_channel_ranges
from .histogram_common import (BEFORE, BEFORE_TITLE, CHANNEL_TITLE, CLIP_SHADE, CURVE, MAX_GRID_LINES,
                               REGION_BRUSH, SHORT_TITLES, SPIKE_BRUSH, TAIL_BRUSH, _fmt, _view_span,
                               _with_before)


class HistogramItems:
    """Builds and draws the plots of `HistogramPanel`; the panel decides what to show.

    Uses the panel's `project`, `_name`, `_stats`, `_encoding`, `_editable`, `_channel_ranges`,
    `channel_spin`, `log_check`, `_channel_widgets` and `display_data()`.
    """

    # --- construction --------------------------------------------------------------------
    def _build_histogram_plot(self) -> None:
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
        self.plot.getViewBox().sigXRangeChanged.connect(lambda *_: self._update_grid(self._encoding))

    def _build_channel_plot(self) -> None:
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

    # --- drawing ---------------------------------------------------------------------------
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
