"""SeqMSE: per layer, in graph order, choose each output channel's weight range among
max * (i + 1) / 20, i = 0..19 (AIMET's 20 candidates), as the one whose quantized weights give the
layer output closest to the float model's on the data (inputs from the quantized model with the
earlier layers' choices in place). A per-tensor encoding gets one choice for the whole tensor.

The chosen ranges become frozen weight encodings (same grid, scale times the factor); the float
weights are unchanged. Like AdaRound it only needs G = X^T X and C = X^T (Y - b) per layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..progress import NullProgress, Progress
from ..quant.encoding import Encoding
from .adaround import integer_layers, nearest

CANDIDATES = 20


@dataclass
class RangeResult:
    layer: str
    mse_before: float  # the layer's output MSE with the calibrated range
    mse_after: float   # ... with the chosen ranges
    factors: tuple[float, float]  # smallest and largest range factor chosen


def _channel_losses(wq: np.ndarray, stats) -> np.ndarray:
    """||X w_c - (y_c - b_c)||^2 up to a per-channel constant, for every output channel: (groups, outputs)."""
    return (np.matmul(wq, stats.gram) * wq).sum(axis=2) - 2 * (wq * np.swapaxes(stats.cross, 1, 2)).sum(axis=2)


def seq_mse(index, encodings: dict[str, Encoding], data, candidates: int = CANDIDATES,
            progress: Progress | None = None):
    """Returns (the weight encodings to freeze, per-layer results, layers left out with the reason)."""
    progress = progress or NullProgress()
    frozen, results, skipped = {}, [], {}
    current = dict(encodings)
    factors = (np.arange(candidates) + 1) / candidates
    for layer, enc, _, stats, (scale, offset, steps), wmat in integer_layers(
            index, encodings, data, index.quantized_value, skipped, progress, "SeqMSE"):
        losses = np.stack([_channel_losses(nearest(wmat, scale * f, offset, steps), stats) for f in factors])
        if enc.per_channel:
            best = factors[np.argmin(losses, axis=0)]              # (groups, outputs)
        else:
            best = np.full(losses.shape[1:], factors[np.argmin(losses.sum(axis=(1, 2)))])
        chosen_scale = scale * best[..., None]  # weight_matrix rows are the encoding's channels, in order
        count = len(enc.scale)
        new = enc.with_changes(scale=tuple(float(s) for s in chosen_scale.reshape(-1)[:count]))
        frozen[layer.weight] = new
        current[layer.weight] = new
        data.set_encodings(current)
        results.append(RangeResult(layer.node, stats.mse(nearest(wmat, scale, offset, steps)),
                                   stats.mse(nearest(wmat, chosen_scale, offset, steps)),
                                   (float(best.min()), float(best.max()))))
    return frozen, results, skipped

