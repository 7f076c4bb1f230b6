"""Bias correction: quantized weights shift a layer's mean output; subtract the shift from its bias.

Empirical (AIMET's default): layer by layer in graph order, the mean of each output channel of the
quantized model (earlier layers already corrected, activations quantized as planned) minus the
float model's, over the calibration data. The quantized mean is computed exactly from the mean
of the layer's input rows: E[X W_q^T + b_q] = E[X] W_q^T + b_q.

Analytic (Nagel et al. 2019, data-free), where the layer reads Relu(z) of a layer whose output z
BatchNormalization described as N(beta, gamma^2): E[Relu(z)] = beta Phi(beta / gamma) +
gamma phi(beta / gamma), and the shift is (W_q - W) E[x], weight error only (padded borders
are not modelled).

The corrected biases are values for the biases' quantizers (`index.ptq_values`); the float model
keeps its biases, so errors stay measured against it. A Conv or Gemm without a bias first gets a
zero one named `<node>.bias`, as AIMET names it (`with_biases`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..progress import NullProgress, Progress, check_cancel
from ..quant.encoding import Encoding
from ..quant.qparams import fake_quantize
from .layers import Layer, WorkingModel, model_layers
from .patches import input_rows, output_rows, weight_matrix

METHODS = ("empirical", "analytic")


@dataclass
class BiasResult:
    layer: str
    method: str
    shift: float  # RMS over channels of the mean output shift removed


def with_biases(model, bn_params=None):
    """A copy of `model` where every Conv and Gemm layer has a bias (zero where it had none), and
    the names of the biases added."""
    wm = WorkingModel(model, bn_params)
    added = []
    for layer in wm.layers().values():
        if layer.bias is None and layer.op_type != "MatMul":
            added.append(wm.ensure_bias(layer).bias)
    return wm.proto(), added


def _normal_relu_mean(beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """E[max(0, z)] for z ~ N(beta, gamma^2), per channel."""
    gamma = np.maximum(gamma, 1e-12)
    r = beta / gamma
    cdf = 0.5 * (1 + np.vectorize(math.erf)(r / math.sqrt(2)))
    pdf = np.exp(-0.5 * r * r) / math.sqrt(2 * math.pi)
    return beta * cdf + gamma * pdf


def _input_mean(index, layer: Layer) -> np.ndarray | None:
    """E[input channel] from BatchNormalization statistics, when the layer reads Relu(z) or z of a
    folded layer; None otherwise."""
    producer = index.tensors.get(layer.input)
    node = index.nodes.get(producer.producer) if producer is not None and producer.producer else None
    relu = node is not None and node.op_type == "Relu"
    if relu:
        source = index.tensors.get(node.input[0])
        node = index.nodes.get(source.producer) if source is not None and source.producer else None
    if node is None or node.name not in index.bn_params:
        return None
    gamma, beta = index.bn_params[node.name]
    return _normal_relu_mean(beta, gamma) if relu else beta


def bias_correction(index, encodings: dict[str, Encoding], data=None, method: str = "empirical",
                    progress: Progress | None = None):
    """Corrected biases of every layer of `index` with a bias, in graph order. `data`: a
    `LayerData` (needed for "empirical"). Returns (bias values by name, per-layer results, layers
    left as they were with the reason)."""
    if method not in METHODS:
        raise ValueError(f"bias correction method must be one of {METHODS}, not {method!r}")
    progress = progress or NullProgress()
    layers = list(model_layers(index.model).values())
    values, results, skipped = {}, [], {}
    for i, (layer, node) in enumerate(layers):
        check_cancel(progress)
        progress.update(i, len(layers), f"bias correction {layer.node}")
        w_enc = encodings.get(layer.weight)
        if layer.bias is None:
            skipped[layer.node] = "it has no bias (a MatMul)" if layer.op_type == "MatMul" else "it has no bias"
            continue
        if w_enc is None or w_enc.is_float:
            skipped[layer.node] = "its weight stays float: nothing to correct"
            continue
        w = index.initializer(layer.weight).astype(np.float64)
        wq = fake_quantize(index.quantized_value(layer.weight), w_enc).astype(np.float64)
        bias = index.quantized_value(layer.bias).astype(np.float64)
        if method == "analytic":
            mean_x = _input_mean(index, layer)
            if mean_x is None:
                skipped[layer.node] = "no BatchNormalization statistics describe its input"
                continue
            err = weight_matrix(layer, wq - w)                     # (g, o, k)
            k_per_channel = err.shape[2] // (1 if layer.depthwise else mean_x.size)
            if layer.depthwise:
                shift = err.sum(axis=2)[:, 0] * mean_x
            else:
                shift = err[0].reshape(err.shape[1], mean_x.size, k_per_channel).sum(axis=2) @ mean_x
        else:
            if data is None:
                raise ValueError("empirical bias correction needs calibration data")
            rows_sum = y_sum = None
            count = 0
            for x, y in data.batches(layer.input, layer.output):
                xr = input_rows(layer, node, np.asarray(x, np.float32), w.shape).astype(np.float64)
                yr = output_rows(layer, np.asarray(y, np.float64))
                rows_sum = xr.sum(axis=0) if rows_sum is None else rows_sum + xr.sum(axis=0)
                y_sum = yr.sum(axis=0) if y_sum is None else y_sum + yr.sum(axis=0)
                count += xr.shape[0]
            if not count:
                skipped[layer.node] = "no data reached it"
                continue
            mean_rows, mean_y = rows_sum / count, y_sum / count      # (g, k), (g, o)
            quantized = np.einsum("gk,gok->go", mean_rows, weight_matrix(layer, wq))
            shift = (quantized - mean_y).reshape(-1) + fake_quantize(bias, encodings.get(layer.bias)).reshape(-1)
        corrected = bias - shift
        value = corrected.astype(index.initializer(layer.bias).dtype).reshape(index.initializer(layer.bias).shape)
        values[layer.bias] = value
        if data is not None:
            data.set_constant(layer.bias, value)
        results.append(BiasResult(layer.node, method, float(np.sqrt(np.mean(shift**2)))))
    progress.update(len(layers), len(layers), "bias correction done")
    return values, results, skipped
