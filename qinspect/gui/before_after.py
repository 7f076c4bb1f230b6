"""What a tensor looked like before the last PTQ step (`Project.before`), for the histogram panel's
dashed outlines: its histogram on the bins shown now, and a weight's per-channel ranges. No Qt."""
from __future__ import annotations

import numpy as np

from .histogram_display import rebin


def _before(project, name: str):
    """(values or stats before, step title) when the tensor changed in the last step, else None."""
    if project.before is None or project.index is None:
        return None
    index, stats, title = project.before
    target = project.index.targets.get(name)
    if target is not None and target.kind != "activation":
        if name not in index.targets or not index.is_constant(name):
            return None
        old, new = index.initializer(name), project.index.initializer(name)
        return (old, title) if old.shape == new.shape and not np.array_equal(old, new) else None
    old, new = stats.get(name), project.stats.get(name)
    if old is None or new is None or (old.min, old.max, old.count) == (new.min, new.max, new.count):
        return None
    return old, title


def before_histogram(project, name: str, bins: int, channel: tuple[int, int] | None = None):
    """(edges, counts, step title) of the tensor before the last step, over its own range then with
    `bins` bins; None when it did not change. `channel`: (axis, index) for one channel of a weight."""
    found = _before(project, name)
    if found is None:
        return None
    old, title = found
    if isinstance(old, np.ndarray):
        if channel is not None:
            old = np.take(old, channel[1], axis=channel[0])
        finite = old[np.isfinite(old)]
        if not finite.size or finite.min() == finite.max():
            return None
        edges = np.linspace(float(finite.min()), float(finite.max()), bins + 1)
        return edges, np.histogram(finite, edges)[0].astype(float), title
    if channel is not None or not old.count or not old.max > old.min:
        return None
    edges = np.linspace(float(old.min), float(old.max), bins + 1)
    return edges, rebin(old, edges), title


def before_channel_ranges(project, name: str, axis: int):
    """(per-channel min, max, step title) of a weight before the last step, or None."""
    found = _before(project, name)
    if found is None or not isinstance(found[0], np.ndarray):
        return None
    old, title = found
    flat = np.moveaxis(old, axis, 0).reshape(old.shape[axis], -1)
    return flat.min(axis=1), flat.max(axis=1), title
