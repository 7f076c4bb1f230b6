"""Range selection: choose the (min, max) a tensor is quantized over from its TensorStats.

These functions only choose a range; the encoding is always produced afterwards by
`compute_encoding`, which includes zero, enforces the minimum range and puts the range on the
TF grid (encodings_spec.md section 2). Every scheme returns ``(0.0, 0.0)`` for empty statistics
(no data, or only NaN/Inf), which `compute_encoding` turns into the minimum-range encoding.

Schemes:

* ``tf``: the exact observed min/max.
* ``tf_adjusted``: QNN's "TF Adjusted" weight mode: the exact min/max, like ``tf``; the plan then
  asks `compute_encoding` for a grid that grows to keep both ends rather than sliding (8-bit
  weights only; elsewhere it is ``tf``).
* ``tf_enhanced``: AIMET's SQNR search, aimet_torch v2 ``SqnrEncodingAnalyzer`` (spec 2.1
  variant B), on the histogram's bin centres and counts. Close to, never bit-identical with,
  AIMET/QNN.
* ``percentile``: aimet_torch v2 ``PercentileEncodingAnalyzer`` (spec 2.2), clamped to min/max.
* ``mse``: a pair search over candidate (min, max) that minimises the histogram's squared
  quantize-dequantize error, clipping included (spec 2.4, "suggested qinspect MSE mode").
"""
from __future__ import annotations

import numpy as np

from .encoding import EPS32, compute_encoding
from .stats import TensorStats

SCHEMES = ("tf", "tf_adjusted", "tf_enhanced", "percentile", "mse")

# aimet_torch v2 SqnrEncodingAnalyzer defaults.
_ASYM_DELTAS = 17
_SYM_DELTAS = 101
_OFFSETS = 21
# Pairs evaluated per array operation in the MSE search (pairs x occupied bins float64 values).
_MSE_CHUNK = 512


def _empty(stats: TensorStats) -> bool:
    return stats.count == 0


def _occupied_bins(stats: TensorStats) -> tuple[np.ndarray, np.ndarray]:
    """Centres and counts of the bins that hold data; empty bins add nothing to any cost."""
    edges = stats.edges
    centres = 0.5 * (edges[:-1] + edges[1:])
    keep = stats.counts > 0
    return centres[keep], stats.counts[keep]


def tf_range(stats: TensorStats) -> tuple[float, float]:
    """The exact observed finite min/max (QNN/AIMET "TF")."""
    if _empty(stats):
        return 0.0, 0.0
    return float(stats.min), float(stats.max)


def _sqnr_noise(centres, counts, deltas, offsets, n: int, gamma: float) -> np.ndarray:
    """Expected squared error of every (delta, offset) candidate, clipped error weighted by gamma.

    Every value is taken to sit on its bin's centre (as aimet_torch does). `deltas` and `offsets`
    broadcast together; the result has their broadcast shape.
    """
    d = np.asarray(deltas, dtype=np.float64)[..., None]
    o = np.asarray(offsets, dtype=np.float64)[..., None]
    q = np.rint(centres / d - o)  # torch.round: ties to even
    clipped = (q < 0) | (q > n)
    err = (np.clip(q, 0, n) + o) * d - centres
    err = err * err * counts
    if gamma != 1.0:
        err = np.where(clipped, gamma * err, err)
    return err.sum(axis=-1)


def _sqnr_candidates(lo: float, hi: float, n: int, symmetric: bool):
    """aimet_torch v2 candidate grids: (deltas, offsets) arrays of the same shape."""
    if symmetric:
        d_max = 2.0 * max(hi, -lo) / n
        deltas = np.maximum(d_max * np.arange(1, _SYM_DELTAS + 1) / (_SYM_DELTAS - 1), EPS32)
        return deltas, np.full(deltas.shape, float((-n) // 2))
    d_max = (hi - lo) / n
    o_obs = np.round(lo / d_max)
    obs_min = d_max * o_obs
    obs_max = obs_min + d_max * n
    deltas = d_max * np.arange(1, _ASYM_DELTAS + 1) / (_ASYM_DELTAS - 1)
    # Offsets evenly from -n to 0 (20 of them at 8 bit; every integer at 4 bit) plus the observed
    # one. Built as start + k * step rather than arange(-n, step, step), whose length can be
    # off by one through float rounding.
    num = min(n + 2, _OFFSETS)
    step = n / (num - 2)
    offsets = np.append(np.round(-n + step * np.arange(num - 1)), o_obs)
    # Clamp every candidate grid to the observed grid, then recompute its delta and offset: a
    # candidate never reaches beyond what was observed.
    t_min = deltas[:, None] * offsets[None, :]
    t_max = np.minimum(obs_max, t_min + deltas[:, None] * n)
    t_min = np.maximum(obs_min, t_min)
    d = np.maximum((t_max - t_min) / n, EPS32)
    return d, np.round(t_min / d)


def tf_enhanced_range(
    stats: TensorStats, bw: int = 8, symmetric: bool = False, gamma: float = 3.0
) -> tuple[float, float]:
    """AIMET tf_enhanced (aimet_torch v2 SqnrEncodingAnalyzer): the lowest-noise grid of a search.

    Returns the chosen grid's end points ``(o * d, o * d + n * d)``, so that `compute_encoding`
    with the same bw and symmetry (default "aimet" symmetric variant) gives back (d, o).
    """
    if _empty(stats):
        return 0.0, 0.0
    n = 2**bw - 1
    lo = min(float(stats.min), 0.0)
    hi = max(float(stats.max), 0.0)
    hi = max(hi, lo + EPS32 * n)
    centres, counts = _occupied_bins(stats)
    deltas, offsets = _sqnr_candidates(lo, hi, n, symmetric)
    noise = _sqnr_noise(centres, counts, deltas, offsets, n, gamma)
    best = np.unravel_index(np.argmin(noise), noise.shape)  # the first minimum wins ties
    d, o = float(deltas[best]), float(offsets[best])
    return o * d, o * d + n * d


def percentile_range(stats: TensorStats, percentile: float = 99.99) -> tuple[float, float]:
    """aimet_torch v2 percentile: the histogram edges where the cumulative count crosses
    (100 - p)% and p%, clamped to the observed min/max. p = 100 gives min/max."""
    if not 50.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be within [50, 100], not {percentile}")
    if _empty(stats):
        return 0.0, 0.0
    if percentile == 100.0:
        return tf_range(stats)
    cum = np.cumsum(stats.counts)
    total = cum[-1]
    edges = stats.edges
    lo = float(edges[np.searchsorted(cum, total * (1.0 - percentile / 100.0))])
    hi = float(edges[np.searchsorted(cum, total * percentile / 100.0)])
    # Edges are left edges of bins, so they can fall outside the data (a padded or grown
    # histogram); the clamp keeps the range inside what was seen.
    lo = min(max(lo, float(stats.min)), float(stats.max))
    hi = min(max(hi, lo), float(stats.max))
    return lo, hi


def _candidate_ends(extent: float, candidates: int) -> np.ndarray:
    """Candidate range ends between 0 and `extent` (the observed min or max; may be negative).

    Half are evenly spaced (fine near the full range, where light-tailed data want their end)
    and half geometric down to extent / 4096 (fine near zero, where heavy-tailed data want it).
    """
    if extent == 0.0:
        return np.zeros(1)
    linear = candidates // 2
    fractions = np.concatenate([
        np.arange(1, linear + 1) / linear,
        np.geomspace(2.0**-12, 1.0, max(candidates - linear, 1)),
    ])
    return extent * np.unique(fractions)


def _qdq_cost(centres, counts, scale, offset, steps) -> np.ndarray:
    """Squared quantize-dequantize error (clipping included) of every candidate grid."""
    s = scale[:, None]
    o = offset[:, None]
    q = np.clip(np.floor(centres / s - o + 0.5), 0, steps[:, None])
    err = (q + o) * s - centres
    return (err * err * counts).sum(axis=1)


def mse_range(
    stats: TensorStats,
    bw: int = 8,
    symmetric: bool = False,
    candidates: int = 64,
    *,
    min_range: str | float = "qnn",
) -> tuple[float, float]:
    """The candidate range whose encoding has the lowest squared error on the histogram.

    Asymmetric: every pair of candidate mins (<= 0) and maxes (>= 0), `candidates` of each between
    zero and the observed extremes. Symmetric: a 1-D search over M = |max|, the range being the
    zero-including observed range clamped to [-M, M]. Each candidate is put through `compute_encoding` (TF grid,
    or the default "aimet" symmetric variant) and scored by sum(count * (centre - qdq(centre))^2)
    over the bin centres. Ties go to the widest range.
    """
    if _empty(stats):
        return 0.0, 0.0
    obs_lo, obs_hi = float(stats.min), float(stats.max)
    lo, hi = min(obs_lo, 0.0), max(obs_hi, 0.0)
    if lo == hi:
        return 0.0, 0.0  # all zero: nothing to search
    if symmetric:
        m = _candidate_ends(max(hi, -lo), candidates)
        mins = np.maximum(lo, -m)
        maxs = np.minimum(hi, m)
    else:
        mins, maxs = np.meshgrid(_candidate_ends(lo, candidates), _candidate_ends(hi, candidates), indexing="ij")
        mins, maxs = mins.ravel(), maxs.ravel()
    # Widest first, so that argmin's first minimum prefers not to clip.
    order = np.argsort(-(maxs - mins), kind="stable")
    mins, maxs = mins[order], maxs[order]
    enc = compute_encoding(mins, maxs, bw, symmetric=symmetric, min_range=min_range, axis=0)
    scale, offset = enc.scales, enc.offsets.astype(np.float64)
    steps = np.full(scale.shape, float(enc.steps))
    centres, counts = _occupied_bins(stats)
    cost = np.concatenate([
        _qdq_cost(centres, counts, scale[i:i + _MSE_CHUNK], offset[i:i + _MSE_CHUNK], steps[i:i + _MSE_CHUNK])
        for i in range(0, scale.size, _MSE_CHUNK)
    ])
    best = int(np.argmin(cost))
    return float(mins[best]), float(maxs[best])


def choose_range(
    stats: TensorStats,
    scheme: str,
    bw: int = 8,
    symmetric: bool = False,
    percentile: float = 99.99,
) -> tuple[float, float]:
    """The range `scheme` chooses for these statistics; (0.0, 0.0) when there is no finite data."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown range scheme {scheme!r}; use one of {SCHEMES}")
    if _empty(stats):
        return 0.0, 0.0
    if scheme in ("tf", "tf_adjusted"):
        return tf_range(stats)
    if scheme == "tf_enhanced":
        return tf_enhanced_range(stats, bw, symmetric)
    if scheme == "percentile":
        return percentile_range(stats, percentile)
    return mse_range(stats, bw, symmetric)
