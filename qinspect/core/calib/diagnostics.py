"""Warnings about statistics that would make a poor integer encoding (encodings_spec.md section 5).

The typical case is an attention mask that adds -1e9 or -3.4e38 (float32's lowest value) to the
scores before a Softmax: a min/max range then spans 1e9 or more, and at 8 bits one step is so wide
that every real score becomes 0. The same happens with padding sentinels and with a few huge
outliers. `range_warnings` flags such tensors and proposes what to do: keep the tensor in float
(float32 when values exceed float16's 65504), or use a percentile range when the extreme values are
rare enough for a percentile to drop them.

Rules, on the finite values of each tensor's statistics:
- outliers: the largest |x| is over `RATIO` times the 99.9th percentile of |x| (when the histogram
  resolves that percentile);
- sentinels: the largest |x| is over `HUGE`, and the values split into a cluster far out (|x| over a
  tenth of the largest) and a bulk near zero (under a hundredth) with nothing in between, as a mask
  makes;
- no finite values at all (only NaN/Inf): nothing to build an encoding from.

Percentiles come from the histogram, so they are only as fine as its bins (range / bins).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant.ranges import percentile_range
from ..quant.stats import TensorStats

FP16_MAX = 65504.0
HUGE = 1e4
RATIO = 50.0


@dataclass
class RangeWarning:
    name: str
    kind: str                        # "blown_range" or "no_finite_values"
    message: str                     # one line: the tensor, what is wrong, what to do
    peak: float = 0.0                # the largest |x|
    bulk: float = 0.0                # the 99.9th percentile of |x| (histogram resolution)
    float_bw: int = 32               # the float width to keep it in: 32 when values exceed float16
    percentile: float | None = None  # a percentile whose range drops the extreme values, if one does
    percentile_range: tuple[float, float] | None = None


def abs_percentile(stats: TensorStats, q: float) -> float:
    """The q-th percentile of |x| estimated from the histogram (upper edge of the bin reaching it)."""
    if stats.count == 0:
        return 0.0
    edges = stats.edges
    upper = np.maximum(np.abs(edges[:-1]), np.abs(edges[1:]))
    lower = np.where((edges[:-1] <= 0) & (edges[1:] >= 0), 0.0, np.minimum(np.abs(edges[:-1]), np.abs(edges[1:])))
    order = np.argsort(lower, kind="stable")
    cum = np.cumsum(stats.counts[order])
    k = int(np.searchsorted(cum, cum[-1] * q / 100.0))
    peak = max(abs(stats.min), abs(stats.max))
    return float(min(upper[order][min(k, len(order) - 1)], peak))


def _separated(stats: TensorStats, peak: float) -> bool:
    """True when the values form a cluster far out (|x| > peak / 10) and a bulk near zero
    (|x| <= peak / 100) with nothing in between: sentinel values such as a mask's -1e9."""
    edges = stats.edges
    centres = np.abs(0.5 * (edges[:-1] + edges[1:]))
    counts = stats.counts
    far = counts[centres > peak / 10].sum()
    near = counts[centres <= peak / 100].sum()
    between = counts[(centres > peak / 100) & (centres <= peak / 10)].sum()
    return bool(far > 0 and near > 0 and between == 0)


def check_stats(name: str, stats: TensorStats, bw: int = 8) -> RangeWarning | None:
    """A warning for one tensor's statistics, or None if its range looks usable."""
    if stats.count == 0:
        if stats.nonfinite_count:
            return RangeWarning(name, "no_finite_values",
                                f"{name}: all {stats.nonfinite_count} values were NaN or Inf, so it has no range; "
                                f"keep it in float32 and check the model or data that produce it")
        return None
    peak = max(abs(float(stats.min)), abs(float(stats.max)))
    bulk = abs_percentile(stats, 99.9)
    width = (stats.hi - stats.lo) / stats.bins
    # Only when the histogram resolves the bulk: a bulk inside the first bins may be exact zeros
    # (a sparse ReLU output), which any range keeps exact.
    outliers = bulk > 2 * width and peak > RATIO * bulk
    sentinels = peak > HUGE and _separated(stats, peak)
    if not (outliers or sentinels):
        return None
    float_bw = 32 if peak > FP16_MAX else 16
    step = (max(stats.max, 0.0) - min(stats.min, 0.0)) / (2**bw - 1)
    # Share of values far out: rare enough and a percentile range drops them.
    edges = stats.edges
    centres = 0.5 * (edges[:-1] + edges[1:])
    far = float(stats.counts[np.abs(centres) > peak / 10].sum() / max(stats.counts.sum(), 1.0))
    percentile = pct_range = None
    if far <= 0.005:
        percentile = round(100.0 - max(0.01, 200.0 * far), 3)
        lo, hi = percentile_range(stats, percentile)
        if hi - lo < 0.1 * (stats.max - stats.min):
            pct_range = (lo, hi)
        else:
            percentile = None
    fp = "float32 (its values exceed float16's 65504)" if float_bw == 32 else "float16 or float32"
    what = "an attention mask or padding value" if sentinels else "a few outliers"
    advice = f"keep it in {fp}"
    if percentile is not None:
        advice += f", or use a percentile range ({percentile}%: [{pct_range[0]:.4g}, {pct_range[1]:.4g}])"
    message = (f"{name}: range [{stats.min:.4g}, {stats.max:.4g}] is blown up by extreme values ({what}?): "
               f"|x| reaches {peak:.3g} while 99.9% of |x| is below {bulk:.3g}, so {bw}-bit steps of {step:.3g} "
               f"erase the rest; {advice}")
    return RangeWarning(name, "blown_range", message, peak, bulk, float_bw, percentile, pct_range)


def range_warnings(stats: dict[str, TensorStats], index=None, bw: int = 8) -> list[RangeWarning]:
    """Warnings for every tensor whose statistics would make a poor `bw`-bit encoding.

    With an index, only quantizer positions are checked (biases are int32: never blown up), and
    tensors the model already quantizes are left alone.
    """
    out = []
    for name, s in stats.items():
        if index is not None:
            target = index.targets.get(name)
            if target is None or target.kind == "bias" or getattr(target, "existing", None) is not None:
                continue
        w = check_stats(name, s, bw)
        if w is not None:
            out.append(w)
    return out
