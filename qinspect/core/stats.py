"""Streaming statistics of one tensor: counts, NaN/Inf, min/max and a histogram that can grow and merge.

The histogram keeps a fixed number of equal bins. When new data falls outside its range the range
grows by a whole factor and old bins map onto new ones exactly (old edges stay on the new grid), so
growing never smears counts. Two statistics with unrelated ranges merge by spreading each old bin's
count proportionally over the new bins it overlaps.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 2048


class TensorStats:
    """Statistics of every value seen of one tensor. NaN and +-Inf are counted, never binned."""

    def __init__(self, bins: int = DEFAULT_BINS):
        self.bins = int(bins)
        self.count = 0
        self.nan_count = 0
        self.posinf_count = 0
        self.neginf_count = 0
        self.min = math.inf
        self.max = -math.inf
        self.lo = 0.0
        self.hi = 0.0
        self.counts = np.zeros(self.bins, dtype=np.float64)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    @property
    def empty(self) -> bool:
        return self.count == 0

    @property
    def nonfinite_count(self) -> int:
        return self.nan_count + self.posinf_count + self.neginf_count

    def update(self, x) -> None:
        """Add one batch of values (any shape)."""
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.dtype.itemsize < 4:
            x = x.astype(np.float32)
        x = x.ravel()
        finite = np.isfinite(x)
        if not finite.all():
            nan = np.isnan(x)
            self.nan_count += int(nan.sum())
            self.posinf_count += int(np.count_nonzero(x == np.inf))
            self.neginf_count += int(np.count_nonzero(x == -np.inf))
            x = x[finite]
        if x.size == 0:
            return
        bmin, bmax = float(x.min()), float(x.max())
        self._cover(bmin, bmax)
        self.min = min(self.min, bmin)
        self.max = max(self.max, bmax)
        self.count += x.size
        # bincount on precomputed indices is about twice as fast as np.histogram.
        scale = self.bins / (self.hi - self.lo)
        idx = ((x - x.dtype.type(self.lo)) * x.dtype.type(scale)).astype(np.intp)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)

    def _cover(self, lo: float, hi: float) -> None:
        """Grow the histogram's range so that it covers [lo, hi]."""
        if self.count == 0:
            if lo == hi:
                # A constant so far: a narrow range around it; later data grows it as needed.
                pad = max(abs(lo), 1.0) * 1e-6
                lo, hi = lo - pad, hi + pad
            self.lo, self.hi = lo, hi
            self.counts[:] = 0
            return
        if lo >= self.lo and hi <= self.hi:
            return
        width = (self.hi - self.lo) / self.bins
        shift = max(0, math.ceil((self.lo - lo) / width))  # old bins added on the left
        new_lo = self.lo - shift * width
        # The new range must also keep the old one: a batch lying wholly to the left of it has
        # hi < self.hi, and old bin shift + bins - 1 must still land inside the new bins.
        hi = max(hi, self.hi)
        factor = max(2, math.ceil((hi - new_lo) / (self.bins * width)), -(-(shift + self.bins) // self.bins))
        while new_lo + self.bins * factor * width < hi:
            factor += 1
        # Old bin i lands whole in new bin (i + shift) // factor: its edges are on the new grid.
        target = (np.arange(self.bins) + shift) // factor
        counts = np.zeros(self.bins, dtype=np.float64)
        np.add.at(counts, target, self.counts)
        self.counts = counts
        self.lo = new_lo
        self.hi = new_lo + self.bins * factor * width

    def merge(self, other: TensorStats) -> None:
        """Add another tensor's statistics (for example another shard of the calibration data)."""
        self.nan_count += other.nan_count
        self.posinf_count += other.posinf_count
        self.neginf_count += other.neginf_count
        if other.count == 0:
            return
        self._cover(other.lo, other.hi)
        self.counts += rebin(other.counts, other.edges, self.edges)
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def clipped_fraction(self, lo: float, hi: float) -> float:
        """Share of finite values outside [lo, hi], estimated from the histogram."""
        if self.count == 0:
            return 0.0
        edges = self.edges
        cum = np.concatenate([[0.0], np.cumsum(self.counts)])
        inside = np.interp(hi, edges, cum) - np.interp(lo, edges, cum)
        return float(max(0.0, 1.0 - inside / self.counts.sum()))

    def to_dict(self) -> dict:
        return {
            "bins": self.bins,
            "count": self.count,
            "nan_count": self.nan_count,
            "posinf_count": self.posinf_count,
            "neginf_count": self.neginf_count,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "lo": self.lo,
            "hi": self.hi,
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TensorStats:
        stats = cls(d["bins"])
        stats.count = int(d["count"])
        stats.nan_count = int(d["nan_count"])
        stats.posinf_count = int(d["posinf_count"])
        stats.neginf_count = int(d["neginf_count"])
        stats.min = math.inf if d["min"] is None else float(d["min"])
        stats.max = -math.inf if d["max"] is None else float(d["max"])
        stats.lo, stats.hi = float(d["lo"]), float(d["hi"])
        stats.counts = np.asarray(d["counts"], dtype=np.float64)
        return stats

    @classmethod
    def of(cls, x, bins: int = DEFAULT_BINS) -> TensorStats:
        stats = cls(bins)
        stats.update(x)
        return stats


def rebin(counts: np.ndarray, edges: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    """Spread histogram counts onto new edges, assuming values are uniform inside each old bin."""
    cum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    return np.diff(np.interp(new_edges, edges, cum))


def channel_stats(weights: np.ndarray, axis: int, bins: int = DEFAULT_BINS) -> list[TensorStats]:
    """Statistics of each slice of a weight along its channel axis (weights are known exactly)."""
    moved = np.moveaxis(np.asarray(weights), axis, 0)
    return [TensorStats.of(channel, bins) for channel in moved]
