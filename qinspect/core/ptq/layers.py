"""The layers PTQ steps work on, and a working copy of a model whose constants they rewrite.

A `Layer` is a main-graph Conv (1-D or 2-D, any group), Gemm or 2-D-weight MatMul whose weight is
an initializer: what cross-layer equalization scales, bias correction corrects and AdaRound and
SeqMSE quantize. `WorkingModel` holds a copy of the model; steps read and write its constants by
name and get the finished model with `proto()`. BatchNormalization statistics (`bn_params`, the
mean and spread of each folded layer's output channels, from `ptq.prepare`) travel with it: CLE
and high-bias absorption change them, analytic bias correction reads them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.edit import NameMaker

LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Layer:
    node: str
    op_type: str
    input: str           # the activation the layer reads
    output: str          # the tensor it writes (before any activation)
    weight: str
    bias: str | None
    group: int = 1
    out_axis: int = 0    # the weight's output-channel axis
    in_axis: int = 1     # its input-channel axis

    @property
    def depthwise(self) -> bool:
        return self.op_type == "Conv" and self.group > 1

    def channels(self, w: np.ndarray) -> int:
        return int(w.shape[self.out_axis])


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def layer_of(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> Layer | str:
    """The node as a `Layer`, or why it is not one (a phrase)."""
    if node.op_type not in LAYER_OPS:
        return f"{node.op_type} is not a Conv, Gemm or MatMul"
    if len(node.input) < 2 or node.input[1] not in inits:
        return f"{node.name}'s weight is not a constant initializer"
    shape = tuple(inits[node.input[1]].dims)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias not in inits:
        return f"{node.name}'s bias is not a constant initializer"
    if node.op_type == "Conv":
        if len(shape) not in (3, 4):
            return f"{node.name} is a {len(shape) - 2}-D convolution"
        group = int(attr(node, "group", 1))
        if group > 1 and not (shape[1] == 1 and shape[0] == group):
            return f"{node.name} is a grouped convolution ({group} groups), neither plain nor depthwise"
        return Layer(node.name, "Conv", node.input[0], node.output[0], node.input[1], bias, group, 0, 1)
    if len(shape) != 2:
        return f"{node.name}'s weight has {len(shape)} dimensions"
    if node.op_type == "Gemm":
        if attr(node, "transA", 0) or float(attr(node, "alpha", 1.0)) != 1.0:
            return f"{node.name} uses transA or alpha"
        if bias is not None and tuple(inits[bias].dims) not in ((shape[0 if attr(node, "transB", 0) else 1],),):
            return f"{node.name}'s bias is not one value per output"
        out_axis = 0 if attr(node, "transB", 0) else 1
        return Layer(node.name, "Gemm", node.input[0], node.output[0], node.input[1], bias, 1, out_axis, 1 - out_axis)
    return Layer(node.name, "MatMul", node.input[0], node.output[0], node.input[1], None, 1, 1, 0)


def model_layers(model: onnx.ModelProto) -> dict[str, tuple[Layer, onnx.NodeProto]]:
    """Every main-graph `Layer` of `model` with its node, in graph order (the model is not copied)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        layer = layer_of(n, inits)
        if isinstance(layer, Layer):
            out[n.name] = (layer, n)
    return out


def per_channel_max(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over everything but `axis`, one value per channel along it."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    return np.abs(w).max(axis=others) if others else np.abs(w)


def along(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """`values` shaped to broadcast along `axis` of an `ndim`-dimensional array."""
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


class WorkingModel:
    """A copy of a model whose initializers and nodes PTQ steps change."""

    def __init__(self, model: onnx.ModelProto, bn_params: dict | None = None):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        g = self.model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.nodes = {n.name: n for n in g.node}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in dict.fromkeys(n.input):
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.bn_params = {k: (np.array(g_, np.float64), np.array(b, np.float64)) for k, (g_, b) in (bn_params or {}).items()}
        self._names = NameMaker(self.model)
        self._values: dict[str, np.ndarray] = {}

    def layers(self) -> dict[str, Layer]:
        """Every main-graph node that is a `Layer`, in graph order."""
        out = {}
        for n in self.model.graph.node:
            layer = layer_of(n, self.inits)
            if isinstance(layer, Layer):
                out[n.name] = layer
        return out

    def value(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = numpy_helper.to_array(self.inits[name]).copy()
        return self._values[name]

    def set(self, name: str, value: np.ndarray) -> None:
        """Replace an initializer's value (its dtype stays)."""
        dtype = numpy_helper.to_array(self.inits[name]).dtype if name in self.inits else np.float32
        value = np.asarray(value, dtype=dtype)
        self._values[name] = value.copy()
        t = numpy_helper.from_array(value, name)
        if name in self.inits:
            self.inits[name].CopyFrom(t)
        else:
            self.model.graph.initializer.append(t)
            self.inits[name] = self.model.graph.initializer[-1]

    def ensure_bias(self, layer: Layer) -> Layer:
        """The layer with a bias: a zero one named `<node>.bias` (AIMET's name) when it had none."""
        if layer.bias is not None or layer.op_type == "MatMul":
            return layer
        w = self.value(layer.weight)
        name = self._names(f"{layer.node}.bias")
        self.set(name, np.zeros(layer.channels(w), w.dtype))
        node = self.nodes[layer.node]
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        return Layer(layer.node, layer.op_type, layer.input, layer.output, layer.weight, name, layer.group,
                     layer.out_axis, layer.in_axis)

    def single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The one node reading `tensor`, None when it is read by several or is a graph output."""
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def proto(self) -> onnx.ModelProto:
        return self.model
