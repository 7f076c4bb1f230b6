"""What the histogram panel draws, computed from a tensor's statistics: no Qt here.

The statistics keep 2048 bins for the range math; a plot a few hundred pixels wide cannot show
that many (a Relu's zero bin was under a pixel, a few hundred weights looked like a barcode), so
the panel draws `display_bins`: bins chosen from the value count and the plot's width, over the
observed range. Values piled on one point (a Relu's zeros, a padding value) are `spikes`, drawn
and labelled on their own. `wants_log` says when counts span orders of magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_DISPLAY_BINS = 400
MIN_DISPLAY_BINS = 8
SPIKE_SHARE = 0.02    # a fine bin holding this share of the values ...
SPIKE_RATIO = 20.0    # ... and this many times the mean of the fine bins around it is a spike
LOG_SPAN = 100.0      # tallest display bin / typical nonzero bin above this: log scale reads better


@dataclass(frozen=True)
class Spike:
    value: float   # where the values pile up (the fine bin's centre; 0 exactly when it holds 0 at an end)
    count: int
    share: float   # of all finite values


def display_bins(stats, width_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts) to draw: about 2 x count^(1/3) bins (few values, few bins), at most one per
    two pixels and MAX_DISPLAY_BINS, over [min, max]; counts are re-binned from the fine histogram
    (mass spread evenly within a fine bin)."""
    if stats is None or stats.count == 0:
        return np.empty(0), np.empty(0)
    lo, hi = float(stats.min), float(stats.max)
    if not hi > lo:  # one value only
        width = max(abs(lo), 1.0) * 1e-3
        return np.array([lo - width, lo + width]), np.array([float(stats.counts.sum())])
    by_count = int(round(2.0 * float(stats.counts.sum()) ** (1.0 / 3.0)))
    n = max(MIN_DISPLAY_BINS, min(by_count, MAX_DISPLAY_BINS, max(MIN_DISPLAY_BINS, int(width_px) // 2)))
    edges = np.linspace(lo, hi, n + 1)
    return edges, rebin(stats, edges)


def rebin(stats, edges: np.ndarray) -> np.ndarray:
    """The statistics' counts on other `edges` (mass spread evenly within a fine bin; what lies
    outside goes to the end bins)."""
    fine, cum = stats.edges, np.concatenate([[0.0], np.cumsum(stats.counts, dtype=np.float64)])
    counts = np.diff(np.interp(edges, fine, cum))
    counts[-1] += cum[-1] - np.interp(edges[-1], fine, cum)  # mass of the last fine bin past max
    counts[0] += np.interp(edges[0], fine, cum)              # ... and before min
    return np.maximum(counts, 0.0)


def spikes(stats, limit: int = 3) -> list[Spike]:
    """Points where values pile up: fine bins with a large share of all values that tower over the
    bins around them. The tallest first, at most `limit`."""
    if stats is None or stats.count == 0:
        return []
    counts = stats.counts.astype(np.float64)
    total = counts.sum()
    if total <= 0:
        return []
    edges = stats.edges
    found = []
    for i in np.argsort(counts)[::-1][:16]:
        c = counts[i]
        if c < SPIKE_SHARE * total:
            break
        around = np.concatenate([counts[max(0, i - 8):i], counts[i + 1:i + 9]])
        if around.size and c < SPIKE_RATIO * max(float(around.mean()), 1.0):
            continue
        centre = 0.5 * (edges[i] + edges[i + 1])
        if edges[i] <= 0.0 <= edges[i + 1] and (stats.min == 0.0 or stats.max == 0.0):
            centre = 0.0  # a Relu's zeros (or a mask's) at the end of the range
        found.append(Spike(float(centre), int(c), float(c / total)))
        if len(found) == limit:
            break
    return found


def wants_log(counts: np.ndarray) -> bool:
    """True when the tallest bin dwarfs the typical one: a linear axis would show a spike and a flat line."""
    nonzero = counts[counts > 0]
    if nonzero.size < 3:
        return False
    return float(nonzero.max()) > LOG_SPAN * float(np.median(nonzero))
