"""Quantization error estimated from a tensor's histogram alone (no samples needed).

Used for live previews (dragging a range handle), so it must cost well under a millisecond for
2048 bins. Values are taken to be spread uniformly inside each bin, clamped to the observed
min/max, and the squared quantize-dequantize error (rounding plus clipping) is integrated exactly
over each bin. Quantize-dequantizing only the bin centres (as ranges.py's searches do) would be
simpler, but breaks down when the grid is finer than the bins (16/32-bit, or wide histograms):
every centre then sits at an arbitrary phase of the grid and the "error" is noise. The integral
is close to the centre estimate for coarse grids and tends to scale**2 / 12 for fine ones.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .encoding import Encoding, clip_bounds
from .stats import TensorStats

FLOAT16_MAX = float(np.finfo(np.float16).max)
# Points per bin at which the float16 cast error is sampled (its step size changes with magnitude,
# so there is no closed form as simple as for the integer grid).
_FLOAT_SAMPLES = 8
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class ErrorEstimate(NamedTuple):
    mse: float  # mean squared error over finite values, in the tensor's units squared
    sqnr_db: float  # 10 log10(mean x**2 / mse); inf when nothing is lost
    clipped_fraction: float  # share of finite values outside the encoding's [min, max]


NAN_ESTIMATE = ErrorEstimate(math.nan, math.nan, math.nan)


def _bins(stats: TensorStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower ends, upper ends and counts of the occupied bins, clamped to the observed min/max.

    Real tensors pile values up on single points: exact zeros after ReLU, saturation at the min
    or max (Clip, Relu6, sigmoid). Spread over a bin, such a spike would add rounding error that
    is not there (ReLU at 16 bit: 3 dB). So the part of the bin holding 0, min or max that stands
    above both its neighbours is taken as a point at that value (a zero-width bin).
    """
    edges = stats.edges
    counts = stats.counts.copy()
    points, masses = [], []
    width = (stats.hi - stats.lo) / stats.bins
    for p in sorted({stats.min, stats.max, 0.0}):
        if not stats.min <= p <= stats.max:
            continue
        k = min(max(int((p - stats.lo) / width), 0), stats.bins - 1) if width > 0 else 0
        left = counts[k - 1] if k > 0 else 0.0
        right = counts[k + 1] if k + 1 < stats.bins else 0.0
        excess = counts[k] - max(left, right)
        if excess > 0:
            counts[k] -= excess
            points.append(p)
            masses.append(excess)
    keep = counts > 0
    a = np.clip(edges[:-1][keep], stats.min, stats.max)
    b = np.clip(edges[1:][keep], stats.min, stats.max)
    return np.append(a, points), np.append(b, points), np.append(counts[keep], masses)


def _mean_square(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of x**2 for x uniform on [a, b] (also right when a == b)."""
    return (a * a + a * b + b * b) / 3.0


def _sawtooth_integral(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integral of (t - round(t))**2 from -0.5 to u, split into (whole steps, remainder).

    Kept split so that a difference of two integrals does not lose the remainder against a huge
    number of whole steps (32-bit grids have 2**32 of them).
    """
    k = np.floor(u + 0.5)
    r = u - k
    return k, (r * r * r + 0.125) / 3.0


def _grid_error(a: np.ndarray, b: np.ndarray, scale: float, offset: int, steps: int) -> np.ndarray:
    """Mean squared quantize-dequantize error of x uniform on [a, b], per bin, in units**2.

    In grid units u = x / scale - offset the codes are 0..steps; below 0 and above steps the
    error is the distance to the end of the grid (clipping), inside it is the rounding sawtooth.
    """
    ua = a / scale - offset
    ub = b / scale - offset
    width = ub - ua
    # Below the grid: error u, on [ua, min(ub, 0)].
    lo_a, lo_b = np.minimum(ua, 0.0), np.minimum(ub, 0.0)
    below = (lo_b - lo_a) * _mean_square(lo_a, lo_b)
    # Above the grid: error u - steps, on [max(ua, steps), ub].
    hi_a, hi_b = np.maximum(ua, steps) - steps, np.maximum(ub, steps) - steps
    above = (hi_b - hi_a) * _mean_square(hi_a, hi_b)
    # On the grid: the rounding sawtooth.
    ka, ra = _sawtooth_integral(np.clip(ua, 0.0, steps))
    kb, rb = _sawtooth_integral(np.clip(ub, 0.0, steps))
    inside = (kb - ka) / 12.0 + (rb - ra)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (below + above + inside) / width
    # A zero-width bin (a constant tensor) is a point: its error is the error at that point.
    point = ua < 0
    at = np.where(point, ua, np.where(ua > steps, ua - steps, ua - np.floor(ua + 0.5)))
    mean = np.where(width > 1e-9, mean, at * at)
    return mean * scale * scale


@lru_cache(maxsize=8)
def _sample_points(n: int) -> np.ndarray:
    """Where in each of n bins to sample, as fractions of the bin: stratified, with golden-ratio
    jitter that differs from bin to bin. Equally spaced points would sit at the same phase of the
    float16 grid in every bin whenever the bin width is a power of two times its step (common)
    and bias the estimate by several per cent."""
    j = np.arange(n * _FLOAT_SAMPLES, dtype=np.float64).reshape(n, _FLOAT_SAMPLES)
    t = (np.arange(_FLOAT_SAMPLES) + (j * _GOLDEN) % 1.0) / _FLOAT_SAMPLES
    t.flags.writeable = False
    return t


def _float_error(a: np.ndarray, b: np.ndarray, bw: int) -> np.ndarray:
    """Mean squared cast error per bin for a float16/float32 encoding, sampled inside each bin."""
    if bw >= 32:
        return np.zeros_like(a)  # the tensors are float32 already
    x = a[:, None] + (b - a)[:, None] * _sample_points(a.size)
    # Saturate instead of overflowing to inf, so that clipping shows as a (large) finite error.
    cast = np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16).astype(np.float64)
    err = x - cast
    return (err * err).mean(axis=1)


def histogram_error(stats: TensorStats | None, encoding: Encoding) -> ErrorEstimate:
    """Estimated quantization error of `encoding` on the values summarised by `stats`.

    The encoding must be per tensor (one scale); use `channel_encoding` to take one channel of
    a per-channel encoding. Empty statistics give NaN values.
    """
    if stats is None or stats.count == 0:
        return NAN_ESTIMATE
    a, b, counts = _bins(stats)
    total = counts.sum()
    if encoding.is_float:
        err = _float_error(a, b, encoding.bw)
        limit = FLOAT16_MAX if encoding.bw == 16 else math.inf
        clipped = stats.clipped_fraction(-limit, limit) if math.isfinite(limit) else 0.0
    else:
        if len(encoding.scale) != 1:
            raise ValueError("a per-channel encoding needs each channel's statistics; use channel_encoding")
        scale, offset = encoding.scale[0], encoding.offset[0]
        err = _grid_error(a, b, scale, offset, encoding.steps)
        lo, hi = clip_bounds(encoding)
        clipped = stats.clipped_fraction(float(lo[0]), float(hi[0]))
    mse = float((err * counts).sum() / total)
    signal = float((_mean_square(a, b) * counts).sum() / total)
    return ErrorEstimate(mse, sqnr_db(signal, mse), clipped)


def sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def channel_encoding(encoding: Encoding, channel: int) -> Encoding:
    """One channel of a per-channel encoding, as a per-tensor encoding."""
    if len(encoding.scale) <= 1:
        return encoding.with_changes(axis=None)
    return encoding.with_changes(scale=(encoding.scale[channel],), offset=(encoding.offset[channel],), axis=None)


def channels_error(stats: list[TensorStats], encoding: Encoding) -> ErrorEstimate:
    """The whole tensor's error under a per-channel encoding, from each channel's statistics."""
    noise = signal = clipped = total = 0.0
    for c, s in enumerate(stats):
        if s.count == 0:
            continue
        est = histogram_error(s, channel_encoding(encoding, c))
        a, b, counts = _bins(s)
        n = float(counts.sum())
        noise += est.mse * n
        signal += float((_mean_square(a, b) * counts).sum())
        clipped += est.clipped_fraction * n
        total += n
    if total == 0:
        return NAN_ESTIMATE
    return ErrorEstimate(noise / total, sqnr_db(signal / total, noise / total), clipped / total)


def values_error(values, encoding: Encoding, quantized=None) -> ErrorEstimate:
    """The exact error of `encoding` on known values (weights), per tensor or per channel.
    `quantized`: what the quantizer is given instead, when a PTQ step chose it (AdaRound)."""
    x = np.asarray(values, dtype=np.float64)
    given = x if quantized is None else np.asarray(quantized, dtype=np.float64)
    if encoding.axis is None:
        keep = np.isfinite(x)
        x, given = x[keep], given[keep]
    if x.size == 0:
        return NAN_ESTIMATE
    err = x - encoding.quantize_dequantize(given)
    mse, signal = float(np.mean(err * err)), float(np.mean(x * x))
    if encoding.is_float:
        outside = np.abs(x) > FLOAT16_MAX if encoding.bw == 16 else np.zeros(x.shape, dtype=bool)
    else:
        lo, hi = clip_bounds(encoding)  # the table's definition too
        if encoding.axis is not None and lo.size > 1:
            shape = [1] * x.ndim
            shape[encoding.axis] = -1
            lo, hi = lo.reshape(shape), hi.reshape(shape)
        outside = (x < lo) | (x > hi)
    return ErrorEstimate(mse, sqnr_db(signal, mse), float(outside.mean()))
