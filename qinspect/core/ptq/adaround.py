"""AdaRound (Nagel et al. 2020, arXiv 2004.10568): learn, per layer, whether each weight rounds up or
down so that the layer's output, not each weight, is closest to the float model's.

Per layer, with X the layer's input as the quantized model computes it (earlier layers already
rounded) and Y the float model's output, the loss is ||X W~^T - Y||^2 / (rows * outputs) +
lambda * sum(1 - |2 h(V) - 1|^beta), where W~ = s * (floor(W / s) + h(V) - o) on the weight's grid
and h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1) with zeta = 1.1, gamma = -0.1. The
regulariser starts after a warm start (20% of the iterations) with beta annealed from 20 to 2, and
pushes every h to 0 or 1; the result rounds h at 0.5.

The data enter only through G = X^T X and C = X^T (Y - b), accumulated over the batches once, so an
iteration costs one (outputs x K) by (K x K) product per layer whatever the amount of data, and no
training framework is needed. Adam on V, as AIMET does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..progress import NullProgress, Progress, check_cancel
from ..quant.encoding import Encoding
from .layers import Layer, model_layers
from .patches import channel_values, from_weight_matrix, input_rows, output_rows, weight_matrix

ZETA, GAMMA = 1.1, -0.1


@dataclass
class AdaroundOptions:
    iterations: int = 1000
    reg_param: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_start: float = 0.2
    learning_rate: float = 2e-2


@dataclass
class LayerResult:
    layer: str
    nearest_mse: float   # output MSE of the layer with nearest rounding (on the calibration data)
    adaround_mse: float  # ... with the learned rounding
    flipped: int         # weights rounded the other way than nearest
    weights: int


@dataclass
class Statistics:
    """What the data say about one layer: G = X^T X, C = X^T (Y - b), rows, sum of (Y - b)^2."""
    gram: np.ndarray
    cross: np.ndarray
    rows: int
    energy: float

    def mse(self, w: np.ndarray) -> float:
        """||X W^T - (Y - b)||^2 / (rows * outputs) for weights (groups, outputs, K)."""
        wg = np.matmul(w, self.gram)
        total = float((w * wg).sum() - 2 * (w * np.swapaxes(self.cross, 1, 2)).sum() + self.energy)
        return max(total, 0.0) / (self.rows * w.shape[0] * w.shape[1])


def layer_statistics(layer: Layer, node, data, w_shape: tuple, bias: np.ndarray | None) -> Statistics:
    """Accumulate G and C over the data (`data.batches`: quantized input, float output)."""
    gram = cross = None
    rows, energy = 0, 0.0
    b = None if bias is None else channel_values(layer, bias, w_shape).transpose(0, 2, 1)  # (g, 1, o)
    for x, y in data.batches(layer.input, layer.output):
        xr = input_rows(layer, node, np.asarray(x, np.float32), w_shape)      # (r, g, k)
        yr = output_rows(layer, np.asarray(y, np.float32)).astype(np.float64)  # (r, g, o)
        if b is not None:
            yr = yr - b.transpose(1, 0, 2)
        xg = np.ascontiguousarray(xr.transpose(1, 2, 0))                        # (g, k, r)
        g = np.matmul(xg, xg.transpose(0, 2, 1)).astype(np.float64)
        c = np.matmul(xg.astype(np.float64), yr.transpose(1, 0, 2))             # (g, k, o)
        gram = g if gram is None else gram + g
        cross = c if cross is None else cross + c
        rows += xr.shape[0]
        energy += float((yr * yr).sum())
    return Statistics(gram, cross, rows, energy)


def _grid(layer: Layer, enc: Encoding, w_shape: tuple):
    scale = channel_values(layer, enc.scales, w_shape)
    offset = channel_values(layer, enc.offsets.astype(np.float64), w_shape)
    return scale, offset, float(enc.steps)


def nearest(w: np.ndarray, scale, offset, steps) -> np.ndarray:
    return (np.clip(np.floor(w / scale - offset + 0.5), 0, steps) + offset) * scale


def round_layer(w: np.ndarray, scale: np.ndarray, offset: np.ndarray, steps: float, stats: Statistics,
                options: AdaroundOptions, progress: Progress | None = None) -> np.ndarray:
    """The learned rounding of weights `w` (groups, outputs, K) on the grid (scale, offset, steps)."""
    progress = progress or NullProgress()
    w = w.astype(np.float64)
    t = w / scale - offset
    base = np.floor(t)
    frac = np.clip(t - base, 1e-4, 1 - 1e-4)
    # float32 from here: the loop is elementwise work on every weight, a thousand times
    v = (-np.log((ZETA - GAMMA) / (frac - GAMMA) - 1)).astype(np.float32)  # h(V) = frac: start at the float value
    base, scale32, offset32 = base.astype(np.float32), scale.astype(np.float32), offset.astype(np.float32)
    scale32 = np.broadcast_to(scale32, v.shape).copy()
    gram = stats.gram.astype(np.float32)
    cross_t = np.swapaxes(stats.cross, 1, 2).astype(np.float32)
    norm = np.float32(2.0 / (stats.rows * w.shape[0] * w.shape[1]))
    m, u = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    warm = int(options.warm_start * options.iterations)
    for it in range(options.iterations):
        if it % 100 == 0:
            check_cancel(progress)
        sig = 1.0 / (1.0 + np.exp(-v))
        stretched = sig * np.float32(ZETA - GAMMA) + np.float32(GAMMA)
        h = np.clip(stretched, 0.0, 1.0)
        q = base + h
        wq = (np.clip(q, 0, steps) + offset32) * scale32
        grad_h = norm * (np.matmul(wq, gram) - cross_t) * scale32
        grad_h *= (q > 0) & (q < steps)
        if it >= warm:
            rel = (it - warm) / max(1, options.iterations - warm)
            beta = options.beta_end + (options.beta_start - options.beta_end) * (1 - rel)
            d = 2 * h - 1
            grad_h -= np.float32(options.reg_param * 2 * beta) * np.abs(d) ** np.float32(beta - 1) * np.sign(d)
        grad_v = grad_h * sig * (1 - sig) * np.float32(ZETA - GAMMA) * ((stretched > 0) & (stretched < 1))
        m = b1 * m + (1 - b1) * grad_v
        u = b2 * u + (1 - b2) * grad_v * grad_v
        step = it + 1
        v -= options.learning_rate * (m / (1 - b1**step)) / (np.sqrt(u / (1 - b2**step)) + eps)
    h = np.clip((1.0 / (1.0 + np.exp(-v.astype(np.float64)))) * (ZETA - GAMMA) + GAMMA, 0, 1)
    return (np.clip(base.astype(np.float64) + (h >= 0.5), 0, steps) + offset) * scale


def adaround(index, encodings: dict[str, Encoding], data, options: AdaroundOptions | None = None,
             progress: Progress | None = None):
    """Round every integer-encoded layer weight of `index` in graph order, each fed to `data` once
    rounded so that later layers see it. Returns (rounded weights by name, the weight encodings to
    freeze, per-layer results, layers left as they were with the reason)."""
    options = options or AdaroundOptions()
    progress = progress or NullProgress()
    layers = list(model_layers(index.model).values())
    values, frozen, results, skipped = {}, {}, [], {}
    for i, (layer, node) in enumerate(layers):
        check_cancel(progress)
        progress.update(i, len(layers), f"AdaRound {layer.node}")
        enc = encodings.get(layer.weight)
        if enc is None or enc.is_float or enc.bw >= 32:
            skipped[layer.node] = "its weight is not on an integer grid" if enc is not None else "its weight has no encoding"
            continue
        w = index.initializer(layer.weight)
        bias = index.initializer(layer.bias) if layer.bias else None
        stats = layer_statistics(layer, node, data, w.shape, bias)
        if stats.gram is None:
            skipped[layer.node] = "no data reached it"
            continue
        scale, offset, steps = _grid(layer, enc, w.shape)
        wmat = weight_matrix(layer, w.astype(np.float64))
        near = nearest(wmat, scale, offset, steps)
        learned = round_layer(wmat, scale, offset, steps, stats, options, progress)
        rounded = from_weight_matrix(layer, learned, w.shape).astype(w.dtype)
        values[layer.weight] = rounded
        data.set_constant(layer.weight, rounded)
        frozen[layer.weight] = enc
        results.append(LayerResult(layer.node, stats.mse(near), stats.mse(learned),
                                   int((np.abs(learned - near) > 0.5 * scale).sum()), int(w.size)))
    progress.update(len(layers), len(layers), "AdaRound done")
    return values, frozen, results, skipped
