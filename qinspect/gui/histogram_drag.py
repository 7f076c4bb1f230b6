"""Dragging the histogram's encoding range: a live preview of the snapped range's clipped share
and error while dragging, one undoable plan edit on release. A mixin of `HistogramPanel`."""
from __future__ import annotations

import numpy as np

from ..core.commands import EditTensors
from ..core.plan import resolve
from ..core.quant.encoding import Encoding, compute_encoding
from ..core.quant.estimate import histogram_error
from .histogram_common import _describe, _fmt
from .messages import notify


class RangeDrag:
    """Slots of the panel's `region_item`. Uses the panel's `project`, `stack`, `_stats`,
    `_encoding`, `_editable`, `preview`, `_source()`, `_target()`, `_redraw()`, `_draw_overlays()`.
    """

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
