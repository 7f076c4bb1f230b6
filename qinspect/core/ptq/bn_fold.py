"""Fold BatchNormalization into the Conv, ConvTranspose or Gemm before it, as the QNN converter and
onnxruntime do before they quantize.

For ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` after an op with weight W and bias b, with
``s = gamma / sqrt(var + eps)`` per channel: ``W' = W * s`` along the op's output channels and
``b' = (b - mean) * s + beta``. The op then writes the BatchNormalization's output tensor, so the
tensors a target quantizes keep their names; the weight keeps its name too (QNN overrides name the
weight, and the converter folds before it applies them). A bias the op did not have is named
``<node>.bias``, as AIMET's folding names it.

A BatchNormalization stays, with the reason listed, when it does not directly follow a
Conv/ConvTranspose/Gemm of the same graph, when the op's output has another consumer or is a graph
output, when it runs in training mode, when a parameter is not a constant, or when the op's weight
or bias is shared with another node in a way folding would change.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.edit import NameMaker, all_graphs
from ..graph.walk import _constant_value

FOLD_INTO = ("Conv", "ConvTranspose", "Gemm")


@dataclass(frozen=True)
class Fold:
    batchnorm: str  # the BatchNormalization node folded away
    into: str       # the node it was folded into
    weight: str
    bias: str


@dataclass
class FoldReport:
    folded: list[Fold]
    kept: dict[str, str]  # BatchNormalization node -> why it stays
    # node folded into -> (|gamma|, beta) per output channel: its output's spread and mean as the
    # BatchNormalization saw them (high-bias absorption and analytic bias correction use them)
    bn_params: dict = field(default_factory=dict)

    def notes(self) -> list[str]:
        out = []
        if self.folded:
            names = ", ".join(f"{f.batchnorm} into {f.into}" for f in self.folded[:6])
            more = f" and {len(self.folded) - 6} more" if len(self.folded) > 6 else ""
            out.append(f"folded {len(self.folded)} BatchNormalization into the op before it, as the target does "
                       f"(weights and encodings are of the folded model): {names}{more}")
        for bn, why in list(self.kept.items())[:6]:
            out.append(f"BatchNormalization {bn} stays unfolded ({why}); it runs as an op of its own")
        if len(self.kept) > 6:
            out.append(f"... and {len(self.kept) - 6} more BatchNormalization stay unfolded")
        return out


class _Graph:
    """What folding needs to know about the main graph: producers, consumers, constants."""

    def __init__(self, model: onnx.ModelProto, data_dir: str | None):
        g = model.graph
        self.graph = g
        self.data_dir = data_dir
        self.inits = {t.name: t for t in g.initializer}
        self.constants = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.uses: dict[str, int] = {}
        for n in _all_nodes(g):
            for i in set(n.input):
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        self.outputs = {o.name for o in g.output}
        self.new_name = NameMaker(model)
        self.bn_params: dict = {}

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name], self.data_dir or "")
        if name in self.constants:
            try:
                return _constant_value(self.constants[name])
            except Exception:
                return None
        return None



def _all_nodes(graph: onnx.GraphProto):
    return (n for g in all_graphs(graph) for n in g.node)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _why_not(g: _Graph, bn: onnx.NodeProto) -> str | None:
    """None if `bn` can fold into its producer, else the reason (one phrase)."""
    if _attr(bn, "training_mode", 0):
        return "training mode"
    if len([o for o in bn.output if o]) > 1:
        return "it also outputs running statistics"
    if _attr(bn, "spatial", 1) == 0:
        return "per-activation statistics (spatial=0)"
    x = bn.input[0]
    op = g.producer.get(x)
    if op is None or op.op_type not in FOLD_INTO:
        what = "a graph input" if op is None else op.op_type
        return f"it follows {what}, not a Conv, ConvTranspose or Gemm"
    if g.uses.get(x, 0) != 1 or x in g.outputs:
        return f"{op.name}'s output is also used elsewhere"
    if any(g.value(p) is None for p in bn.input[1:5]):
        return "a parameter is not a constant"
    if len(op.input) < 2 or g.value(op.input[1]) is None:
        return f"{op.name}'s weight is not a constant"
    if len(op.input) > 2 and op.input[2] and g.value(op.input[2]) is None:
        return f"{op.name}'s bias is not a constant"
    return None


def _scale_weight(op: onnx.NodeProto, w: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """W with its output channels multiplied by s; None when the shapes do not allow it."""
    c = s.size
    if op.op_type == "Conv":
        if w.ndim < 2 or w.shape[0] != c:
            return None
        return w * s.reshape((c,) + (1,) * (w.ndim - 1))
    if op.op_type == "ConvTranspose":
        group = int(_attr(op, "group", 1))
        if w.ndim < 2 or w.shape[0] % group or w.shape[1] * group != c:
            return None
        per = w.shape[1]  # output channels per group; channel = g * per + j
        grouped = w.reshape((group, w.shape[0] // group, per) + w.shape[2:])
        scaled = grouped * s.reshape((group, 1, per) + (1,) * (w.ndim - 2))
        return scaled.reshape(w.shape)
    # Gemm: Y = alpha * A @ op(B) + beta * C, output channels are B's columns (rows when transB)
    if w.ndim != 2:
        return None
    axis = 0 if _attr(op, "transB", 0) else 1
    if w.shape[axis] != c:
        return None
    return w * (s.reshape(c, 1) if axis == 0 else s.reshape(1, c))


def _gemm_bias(op: onnx.NodeProto, b: np.ndarray | None, c: int) -> np.ndarray | None:
    """Gemm's beta * C as one value per output channel; None when C varies along rows."""
    if b is None:
        return np.zeros(c)
    beta = float(_attr(op, "beta", 1.0))
    if b.size == 1:
        return np.full(c, beta * float(b.reshape(-1)[0]))
    if b.shape in ((c,), (1, c)):
        return beta * b.reshape(c).astype(np.float64)
    return None


def _fold_one(g: _Graph, op: onnx.NodeProto, bn: onnx.NodeProto) -> Fold | str:
    gamma, beta, mean, var = (g.value(n).astype(np.float64).reshape(-1) for n in bn.input[1:5])
    eps = float(_attr(bn, "epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    w_name = op.input[1]
    w = g.value(w_name)
    scaled = _scale_weight(op, w.astype(np.float64), s)
    if scaled is None:
        return f"{op.name}'s weight shape {tuple(w.shape)} does not match {s.size} channels"
    has_bias = len(op.input) > 2 and bool(op.input[2])
    b = g.value(op.input[2]) if has_bias else None
    if op.op_type == "Gemm":
        b64 = _gemm_bias(op, b, s.size)
        if b64 is None:
            return f"{op.name}'s bias varies along rows"
    else:
        b64 = np.zeros(s.size) if b is None else b.astype(np.float64).reshape(-1)
        if b64.size != s.size:
            return f"{op.name}'s bias has {b64.size} values for {s.size} channels"
    new_b = (b64 - mean) * s + beta
    g.bn_params[op.name] = (np.abs(gamma), beta.copy())
    dtype = w.dtype
    # The op's own weight and bias are rewritten in place (same names); shared ones are copied.
    w_out = w_name if g.uses.get(w_name, 0) == 1 and w_name in g.inits else g.new_name(f"{w_name}_folded")
    if has_bias and g.uses.get(op.input[2], 0) == 1 and op.input[2] in g.inits:
        b_out = op.input[2]
    else:
        b_out = g.new_name(f"{op.name}.bias")  # the name AIMET's folding gives a new bias
    _put(g, w_out, scaled.astype(dtype))
    _put(g, b_out, new_b.astype(dtype))
    op.input[1] = w_out
    if has_bias:
        op.input[2] = b_out
    else:
        while len(op.input) < 3:
            op.input.append("")
        op.input[2] = b_out
    if op.op_type == "Gemm":
        _set_attr(op, "beta", 1.0)
    return Fold(bn.name, op.name, w_out, b_out)


def _put(g: _Graph, name: str, value: np.ndarray) -> None:
    t = numpy_helper.from_array(value, name)
    if name in g.inits:
        g.inits[name].CopyFrom(t)
    else:
        g.graph.initializer.append(t)
        g.inits[name] = g.graph.initializer[-1]


def _set_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    for a in node.attribute:
        if a.name == name:
            a.f = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


def fold_batchnorms(model: onnx.ModelProto, data_dir: str | None = None) -> tuple[onnx.ModelProto, FoldReport]:
    """A copy of `model` with every foldable main-graph BatchNormalization folded, and what was done.

    `data_dir`: where tensors still stored as external data are (a large model indexed lazily)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out, data_dir)
    report = FoldReport([], {})
    drop: set[int] = set()
    for i, bn in enumerate(out.graph.node):
        if bn.op_type != "BatchNormalization":
            continue
        label = bn.name or f"BatchNormalization_{i}"
        why = _why_not(g, bn)
        result = why if why is not None else _fold_one(g, g.producer[bn.input[0]], bn)
        if isinstance(result, str):
            report.kept[label] = result
            continue
        op = g.producer[bn.input[0]]
        old = op.output[0]
        op.output[0] = bn.output[0]  # the op writes the tensor the BatchNormalization wrote
        g.producer[bn.output[0]] = op
        g.producer.pop(old, None)
        drop.add(i)
        report.folded.append(Fold(label, result.into, result.weight, result.bias))
        _forget_value_info(out.graph, old)
    report.bn_params = {f.into: g.bn_params[f.into] for f in report.folded}
    if drop:
        kept = [n for i, n in enumerate(out.graph.node) if i not in drop]
        del out.graph.node[:]
        out.graph.node.extend(kept)
        _drop_unused(out.graph)
    main = {id(n) for n in out.graph.node}
    for node in _all_nodes(out.graph):  # BatchNormalizations inside subgraphs are left as they are
        if node.op_type == "BatchNormalization" and id(node) not in main:
            report.kept[node.name or "BatchNormalization"] = "inside a control-flow subgraph"
    return out, report


def _forget_value_info(graph: onnx.GraphProto, name: str) -> None:
    kept = [v for v in graph.value_info if v.name != name]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the constants nothing reads any more (the folded BatchNormalizations' parameters)."""
    used = {i for n in _all_nodes(graph) for i in n.input} | {o.name for o in graph.output}
    removed = {t.name for t in graph.initializer if t.name not in used}
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] not in used)]
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)
    if removed:
        kept = [t for t in graph.initializer if t.name not in removed]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        inputs = [v for v in graph.input if v.name not in removed]  # old models list initializers as inputs
        del graph.input[:]
        graph.input.extend(inputs)
