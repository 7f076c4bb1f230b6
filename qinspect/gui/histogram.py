"""The selected tensor's histogram with its encoding range, grid and clipped tails; drag to edit.

Every plot item is created once and updated with setData/setValue: rebuilding items per redraw
is what makes pyqtgraph panels slow (style guide rule 9). Dragging the range previews the
clipped mass and estimated error live and pushes one undoable command on release (rule 4).

What is drawn comes from `histogram_display`: display bins for the plot's width, spikes (a Relu's
zeros) drawn and labelled on their own, clipped tails shaded over the whole height with their
share, and a log axis chosen when counts span orders of magnitude (until the user picks one).
The header is one line; its tooltip holds the details.

Split by responsibility: `histogram_items` builds and draws the plot items, `histogram_drag`
handles dragging the range (both mixins of `HistogramPanel`), `histogram_common` holds the
constants and pure helpers; this module decides what to show and writes the text.
"""
from __future__ import annotations

import numpy as np
import shiboken6
from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from ..core.quant.encoding import Encoding
from ..core.quant.estimate import ErrorEstimate, channel_encoding, histogram_error, values_error
from ..core.quant.stats import TensorStats
from .events import listen
from .before_after import before_histogram
from .histogram_common import CURVE, EXACT_ERROR_LIMIT, _describe, _display_bins, _fmt, _view_span, _with_before, _y_top
from .histogram_display import display_bins, spikes, wants_log
from .histogram_drag import RangeDrag
from .histogram_items import HistogramItems
from .widgets import ElidedLabel

__all__ = ["CURVE", "HistogramPanel"]  # compare_plot takes the curve colour from here


class _LeaveUndoToTheWindow(QObject):
    """Lets undo/redo keys reach the window's actions while a spin box has focus: its line edit
    would claim them (ShortcutOverride) to undo its own text, so Ctrl+Z seemed to do nothing."""

    def eventFilter(self, obj, event) -> bool:
        if (event.type() == QEvent.Type.ShortcutOverride and event.key() in (Qt.Key.Key_Z, Qt.Key.Key_Y)
                and event.modifiers() & Qt.KeyboardModifier.ControlModifier):
            event.ignore()  # not claimed: the window's Undo (Ctrl+Z) / Redo (Ctrl+Shift+Z) shortcut runs
            return True
        return False


class HistogramPanel(HistogramItems, RangeDrag, QWidget):
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

        self._build_histogram_plot()
        self.region_item.sigRegionChanged.connect(self._on_region_changed)
        self.region_item.sigRegionChangeFinished.connect(self._on_region_finished)

        self._build_channel_plot()

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
