"""Constants and pure helpers of the histogram panel (`histogram`, `histogram_items`,
`histogram_drag`): colours, titles, limits, number formatting and view-span math. No Qt."""
from __future__ import annotations

import math

import numpy as np

from ..core.quant.encoding import Encoding
from ..core.quant.estimate import ErrorEstimate
from ..core.quant.stats import DEFAULT_BINS

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
