"""A layer as matrices: the rows its weights multiply (im2col patches of a convolution's input) and
its weights as (groups, outputs, inputs), so AdaRound, SeqMSE and bias correction treat a Conv,
a depthwise Conv, a Gemm and a MatMul alike.

For a plain Conv there is one group with K = C * kh * kw inputs per row; a depthwise Conv has one
group per channel (one output, kh * kw inputs); a Gemm or MatMul has one group of its input
features. Rows are (image, output position) pairs, so ``rows @ W.T`` is the layer's output.
"""
from __future__ import annotations

import numpy as np
import onnx

from .layers import Layer, attr


def _conv_geometry(node: onnx.NodeProto, spatial: tuple[int, ...], kernel: tuple[int, ...]):
    n = len(kernel)
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    pads = list(attr(node, "pads", [0] * 2 * n))
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(n):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * 2 * n
    return strides, dilations, pads


def conv_rows(node: onnx.NodeProto, x: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """A Conv's input as (rows, channels, kernel elements): one row per image and output position,
    in the order of the output's (N, H', W') positions."""
    if x.ndim == 3:  # 1-D convolution: a 2-D one of height 1
        (stride,), (dilation,), (before, after) = _conv_geometry(node, x.shape[2:], tuple(kernel))
        x, kernel = x[:, :, None, :], (1,) + tuple(kernel)
        strides, dilations, pads = [1, stride], [1, dilation], [0, before, 0, after]
    else:
        strides, dilations, pads = _conv_geometry(node, x.shape[2:], tuple(kernel))
    n, c, h, w = x.shape
    kh, kw = kernel
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    taps = []
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilations[0], j * dilations[1]
            taps.append(xp[:, :, top:top + strides[0] * (oh - 1) + 1:strides[0],
                           left:left + strides[1] * (ow - 1) + 1:strides[1]])
    cols = np.stack(taps, axis=2)  # N, C, kh*kw, H', W'
    return cols.transpose(0, 3, 4, 1, 2).reshape(n * oh * ow, c, kh * kw)


def input_rows(layer: Layer, node: onnx.NodeProto, x: np.ndarray, w_shape: tuple) -> np.ndarray:
    """The layer's input as (rows, groups, inputs per group)."""
    if layer.op_type == "Conv":
        cols = conv_rows(node, x, tuple(w_shape[2:]))
        if layer.depthwise:
            return cols  # each channel is its own group
        return cols.reshape(cols.shape[0], 1, -1)
    return x.reshape(-1, 1, x.shape[-1])


def output_rows(layer: Layer, y: np.ndarray) -> np.ndarray:
    """The layer's output as (rows, groups, outputs per group), rows in `input_rows`' order."""
    if layer.op_type == "Conv":
        y = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])  # N, spatial..., C -> rows, C
        return y[:, :, None] if layer.depthwise else y[:, None, :]
    return y.reshape(-1, 1, y.shape[-1])


def weight_matrix(layer: Layer, w: np.ndarray) -> np.ndarray:
    """(groups, outputs per group, inputs per group)."""
    if layer.op_type == "Conv":
        m = w.reshape(w.shape[0], -1)
        return m[:, None, :] if layer.depthwise else m[None]
    return (w if layer.out_axis == 0 else w.T)[None]


def from_weight_matrix(layer: Layer, m: np.ndarray, shape: tuple) -> np.ndarray:
    """The inverse of `weight_matrix`."""
    if layer.op_type == "Conv":
        return (m[:, 0, :] if layer.depthwise else m[0]).reshape(shape)
    return m[0] if layer.out_axis == 0 else m[0].T


def channel_values(layer: Layer, values: np.ndarray, w_shape: tuple) -> np.ndarray:
    """Per-output-channel values (a scale, an offset) shaped like `weight_matrix` rows: (groups, outputs, 1)."""
    values = np.broadcast_to(np.asarray(values, np.float64).reshape(-1), (w_shape[layer.out_axis],)) \
        if np.size(values) in (1, w_shape[layer.out_axis]) else np.asarray(values)
    if layer.op_type == "Conv" and layer.depthwise:
        return values.reshape(-1, 1, 1)
    return values.reshape(1, -1, 1)
