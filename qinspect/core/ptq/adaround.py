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


LOW_RANK_TOL = 1e-6  # share of G's trace a low-rank factor may leave out


def _gram_product(gram: np.ndarray, rows: int):
    """A function w -> w @ G for weights (groups, outputs, K). With fewer rows of data than K / 2
    (a deep layer's few positions), G has rank r < K / 2 and a factor G = F F^T (less what is under
    `LOW_RANK_TOL` of its trace) makes two products that cost 4 r K per output instead of 2 K^2;
    finding F costs one eigendecomposition, worth it only then."""
    g = gram.astype(np.float32)
    k = gram.shape[-1]
    if gram.shape[0] != 1 or k < 256 or rows >= k // 2:
        return lambda w: np.matmul(w, g)
    vals, vecs = np.linalg.eigh(gram[0])
    vals, vecs = vals[::-1].clip(min=0), vecs[:, ::-1]
    total = vals.sum()
    rank = int(np.searchsorted(np.cumsum(vals), (1 - LOW_RANK_TOL) * total) + 1) if total > 0 else 1
    if rank >= k // 2:
        return lambda w: np.matmul(w, g)
    factor = np.ascontiguousarray((vecs[:, :rank] * np.sqrt(vals[:rank])).astype(np.float32))
    factor_t = np.ascontiguousarray(factor.T)
    return lambda w: (w[0] @ factor @ factor_t)[None]


def round_layer(w: np.ndarray, scale: np.ndarray, offset: np.ndarray, steps: float, stats: Statistics,
                options: AdaroundOptions, progress: Progress | None = None) -> np.ndarray:
    """The learned rounding of weights `w` (groups, outputs, K) on the grid (scale, offset, steps)."""
    progress = progress or NullProgress()
    w = w.astype(np.float64)
    t = w / scale - offset
    base = np.floor(t)
    frac = np.clip(t - base, 1e-4, 1 - 1e-4)
    # float32 from here, in place: the loop is elementwise work on every weight, a thousand times.
    # A weight whose floor is off the grid is clipped whatever h is (constant, no gradient).
    free = ((base >= 0) & (base + 1 <= steps)).astype(np.float32)
    shape = base.shape
    s32 = np.broadcast_to(scale, shape).astype(np.float32)
    w_floor = ((base + offset) * scale).astype(np.float32)
    lo, hi = (offset * scale).astype(np.float32), ((steps + offset) * scale).astype(np.float32)
    s_free = s32 * free
    nv = np.log((ZETA - GAMMA) / (frac - GAMMA) - 1).astype(np.float32)  # -V, with h(V) = frac at the start
    product = _gram_product(stats.gram, stats.rows)
    cross_t = np.swapaxes(stats.cross, 1, 2).astype(np.float32)
    norm = np.float32(2.0 / (stats.rows * w.shape[0] * w.shape[1]))
    span, low = np.float32(ZETA - GAMMA), np.float32(GAMMA)
    m, u = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    sig, h, wq, tmp = (np.empty(shape, np.float32) for _ in range(4))
    b1, b2, eps = 0.9, 0.999, 1e-8
    warm = int(options.warm_start * options.iterations)
    for it in range(options.iterations):
        if it % 100 == 0:
            check_cancel(progress)
        np.exp(nv, out=sig)
        sig += 1
        np.reciprocal(sig, out=sig)                       # sigmoid(V)
        np.multiply(sig, span, out=h)
        h += low                                          # stretched
        inside = (h > 0) & (h < 1)
        np.clip(h, 0, 1, out=h)
        np.multiply(h, s32, out=wq)
        wq += w_floor
        np.clip(wq, lo, hi, out=wq)
        grad = product(wq)
        grad -= cross_t
        grad *= norm
        grad *= s_free                                    # d loss / d h
        if it >= warm:
            rel = (it - warm) / max(1, options.iterations - warm)
            beta = options.beta_end + (options.beta_start - options.beta_end) * (1 - rel)
            np.multiply(h, 2, out=tmp)
            tmp -= 1                                      # d = 2h - 1; d |d|^(beta - 2) = |d|^(beta - 1) sign(d)
            d_abs = np.abs(tmp)
            np.power(d_abs, np.float32(beta - 2), out=d_abs)
            tmp *= d_abs
            tmp *= np.float32(options.reg_param * 2 * beta)
            grad -= tmp
        np.subtract(1, sig, out=tmp)
        tmp *= sig
        tmp *= span
        tmp *= inside
        grad *= tmp                                       # d loss / d V
        m *= b1
        m += (1 - b1) * grad
        grad *= grad
        u *= b2
        u += (1 - b2) * grad
        step = it + 1
        np.sqrt(u, out=tmp)
        tmp *= np.float32(1 / np.sqrt(1 - b2**step))
        tmp += eps
        np.divide(m, tmp, out=tmp)
        tmp *= np.float32(options.learning_rate / (1 - b1**step))
        nv += tmp                                         # V -= step, so -V += step
    h = np.clip((1.0 / (1.0 + np.exp(nv.astype(np.float64)))) * (ZETA - GAMMA) + GAMMA, 0, 1)
    return (np.clip(base + (h >= 0.5), 0, steps) + offset) * scale


def integer_layers(index, encodings: dict[str, Encoding], data, weights, skipped: dict[str, str],
                   progress: Progress, label: str):
    """Walk the layers in graph order for AdaRound and SeqMSE: for each whose weight is on an integer
    grid and that data reaches, (layer, its weight encoding, the weight from `weights(name)`, its
    Statistics, its grid (scale, offset, steps), the weight matrix). The caller's changes to `data`
    between items reach the later layers. Layers left out go to `skipped` with the reason."""
    layers = list(model_layers(index.model).values())
    for i, (layer, node) in enumerate(layers):
        check_cancel(progress)
        progress.update(i, len(layers), f"{label} {layer.node}")
        enc = encodings.get(layer.weight)
        if enc is None or enc.is_float or enc.bw >= 32:
            skipped[layer.node] = "its weight is not on an integer grid" if enc is not None else "its weight has no encoding"
            continue
        w = weights(layer.weight)
        bias = index.initializer(layer.bias) if layer.bias else None
        stats = layer_statistics(layer, node, data, w.shape, bias)
        if stats.gram is None:
            skipped[layer.node] = "no data reached it"
            continue
        yield layer, enc, w, stats, _grid(layer, enc, w.shape), weight_matrix(layer, w.astype(np.float64))
    progress.update(len(layers), len(layers), f"{label} done")


def adaround(index, encodings: dict[str, Encoding], data, options: AdaroundOptions | None = None,
             progress: Progress | None = None):
    """Round every integer-encoded layer weight of `index` in graph order, each fed to `data` once
    rounded so that later layers see it. Returns (rounded weights by name, the weight encodings to
    freeze, per-layer results, layers left as they were with the reason)."""
    options = options or AdaroundOptions()
    progress = progress or NullProgress()
    values, frozen, results, skipped = {}, {}, [], {}
    for layer, enc, w, stats, (scale, offset, steps), wmat in integer_layers(
            index, encodings, data, index.initializer, skipped, progress, "AdaRound"):
        near = nearest(wmat, scale, offset, steps)
        learned = round_layer(wmat, scale, offset, steps, stats, options, progress)
        rounded = from_weight_matrix(layer, learned, w.shape).astype(w.dtype)
        values[layer.weight] = rounded
        data.set_constant(layer.weight, rounded)
        frozen[layer.weight] = enc
        results.append(LayerResult(layer.node, stats.mse(near), stats.mse(learned),
                                   int((np.abs(learned - near) > 0.5 * scale).sum()), int(w.size)))
    return values, frozen, results, skipped
