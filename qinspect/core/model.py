"""Load an ONNX model, index its tensors and decide where quantizers go (design §3).

`load_model(path_or_proto)` returns a `ModelIndex`: the loaded model (external data included), every
tensor with its dtype, shape, producer and consumers, the feed inputs, and the quantizer positions
(`targets`) with the defaults of AIMET's HTP config:

- only float tensors (float32/16, bfloat16, double) are quantized; int/bool tensors never are;
- activations: float graph inputs and float node outputs, except that data-movement ops (`MOVE_OPS`)
  reuse their data input's encoding (`aliases`), and the inner outputs of fused groups
  (Conv/ConvTranspose/Gemm/MatMul/Add -> Relu/Clip, Conv -> BatchNormalization [-> Relu/Clip]) get no
  quantizer at all;
- weights: constant input 1 of Conv/ConvTranspose/Gemm/MatMul, per output channel (`axis`); other
  constant float inputs are parameters (kind "weight", axis None);
- biases: constant input 2 of Conv/ConvTranspose/Gemm, scale = input scale x weight scale.

Limits, kept on purpose for the simple cases to stay right:
- Control flow (If/Loop/Scan): subgraph tensors are indexed with the same rules (names are unique
  across scopes in valid ONNX). Loop/Scan body inputs reuse the encoding of the outer tensor that
  feeds them (exact for the first Loop iteration and for Scan slices, approximate for loop-carried
  state). The node's own outputs get their own target because they merge branches or iterations.
- Constants are initializers and Constant nodes only; a weight reached through Identity/Transpose
  is not folded, so it is a parameter (axis None) and the op sees an aliased activation.
- A ModelProto passed in memory must hold its data inline; one over 2 GB is neither checked nor
  shape-inferred (protobuf cannot serialize it), so unknown dtypes are taken from the ops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from .errors import ModelError

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
NOT_A_TENSOR = -1  # elem type marker for sequence/map/optional values: never quantized

# Ops whose float output only moves or selects values of input 0, so it reuses input 0's encoding.
# Concat is handled apart (only when all its float inputs are already quantized).
MOVE_OPS = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split", "Identity",
    "Dropout", "MaxPool", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Pad",
})
FUSE_FIRST = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})
FUSE_ACT = frozenset({"Relu", "Clip"})
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
# Float inputs that are settings rather than data (sizes, bounds, ratios): never parameters.
NON_DATA_INPUTS = {
    "Resize": {1, 2}, "Upsample": {1}, "Clip": {1, 2}, "Pad": {2}, "Dropout": {1}, "Range": {0, 1, 2},
    "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2},
}
# Fallback output dtypes when shape inference left one unknown.
INT64_OPS = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero", "NonMaxSuppression"})
BOOL_OPS = frozenset({
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
})
INT64_SECOND_OUTPUTS = frozenset({"TopK", "MaxPool", "Unique"})  # outputs 1.. are indices/counts
# Sizes are checked after external data is read; 4-bit, 2-bit and string tensors are skipped.
FIXED_SIZE_TYPES = frozenset({
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8,
    TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.UINT32,
    TensorProto.INT64, TensorProto.UINT64, TensorProto.BOOL,
})
PROTO_LIMIT = 2**31  # protobuf cannot serialize a message this large


@dataclass
class TensorInfo:
    name: str
    dtype: np.dtype | None        # None if unknown or not a tensor
    shape: tuple | None           # int dims, str/None for symbolic/unknown; None if rank unknown
    producer: str | None          # producing node name; None for graph inputs and initializers
    consumers: list[str]          # consuming node names, each once, graph order
    is_initializer: bool


@dataclass
class InputInfo:
    """A graph input that needs a feed (initializers are excluded)."""
    name: str
    dtype: np.dtype
    shape: tuple


@dataclass
class QuantTarget:
    """One quantizer position: a tensor that gets its own encoding."""
    name: str
    kind: str                     # "activation" | "weight" | "bias"
    op_type: str                  # activation: producing op ("Input" for inputs); weight/bias: consuming op
    node: str                     # activation: producing node ("" for graph inputs); weight/bias: consumer
    shape: tuple | None
    axis: int | None = None       # per-channel (output channel) axis of a weight, else None
    bias_inputs: tuple[str, str] | None = None  # bias: (activation input, weight) of the op


def load_model(path_or_proto: str | os.PathLike | onnx.ModelProto) -> ModelIndex:
    """Load, check and index a model. Every failure a user can fix raises `ModelError`."""
    if isinstance(path_or_proto, onnx.ModelProto):
        return ModelIndex(_prepare_proto(path_or_proto), None)
    path = os.fspath(path_or_proto)
    return ModelIndex(_read_file(path), path)


def _read_file(path: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise ModelError(f"{path} not found: check the path")
    if os.path.isdir(path):
        raise ModelError(f"{path} is a folder, not an ONNX file: choose the .onnx file")
    try:
        raw = onnx.load(path, load_external_data=False)
    except Exception as e:  # DecodeError, OSError, ... all mean the same thing to the user
        raise ModelError(f"{path} is not a readable ONNX model ({_first_line(e)}): re-export it") from e
    if not raw.HasField("graph"):
        raise ModelError(f"{path} is not a readable ONNX model (no graph found): re-export it")
    base = os.path.dirname(os.path.abspath(path))
    external = {}
    for t in _all_tensors(raw.graph):
        if t.data_location == TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            if not os.path.isfile(os.path.join(base, loc)):
                raise ModelError(f"{path} needs external data file '{loc}', which is missing: "
                                 f"put it in {base}")
            external[t.name] = loc
    _check(path, path)  # by path: the checker resolves external data next to the file, not in cwd
    # Infer before reading external data: the proto is then small (a file can't exceed 2 GB without
    # external data), so in-memory inference always works and infer_shapes_path is never needed.
    model = _infer(raw)
    if external:
        try:
            load_external_data_for_model(model, base)
        except Exception as e:
            raise ModelError(f"{path}: cannot read its external data ({_first_line(e)}): re-export it") from e
        for t in _all_tensors(model.graph):
            if t.name in external and t.data_type in FIXED_SIZE_TYPES:
                want = int(np.prod(t.dims, dtype=np.int64)) * _np_dtype(t.data_type).itemsize
                if len(t.raw_data) != want:
                    raise ModelError(f"{path}: external data '{external[t.name]}' is truncated or does not "
                                     f"match tensor '{t.name}': re-export the model")
    return model


def _prepare_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    if not proto.HasField("graph"):
        raise ModelError("the in-memory model has no graph: pass a complete ONNX model")
    if any(t.data_location == TensorProto.EXTERNAL for t in _all_tensors(proto.graph)):
        raise ModelError("the in-memory model refers to external data: load it from its file path instead")
    if proto.ByteSize() >= PROTO_LIMIT:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)  # we name nodes on our own copy; the caller's model is never modified
        return copy
    _check(proto, "the in-memory model")
    return _infer(proto)  # a new proto, so the caller's is untouched


def _check(model: onnx.ModelProto | str, name: str) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        msg = f"{name} fails the ONNX checker ({_first_line(e)}): fix or re-export the model"
        raise ModelError(msg) from e


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with inferred value_info. If inference fails we still index what we know."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0].strip() if text else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _np_dtype(elem: int) -> np.dtype | None:
    if elem in (0, NOT_A_TENSOR):
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:
        return None


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _all_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors
        for sub in _subgraphs(node):
            yield from _all_tensors(sub)


def _walk(graph: onnx.GraphProto, owner: onnx.NodeProto | None = None, counter: list | None = None):
    """Yield (graph, graph id, owner node, node) in execution order; node None marks a graph's entry.

    A control-flow node's subgraphs are yielded just before the node itself, since they run as part
    of it. Graph ids count graphs in this order, so they are the same on every walk.
    """
    counter = counter if counter is not None else [0]
    gid = counter[0]
    counter[0] += 1
    yield graph, gid, owner, None
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _walk(sub, node, counter)
        yield graph, gid, owner, node


def _dims(vtype: onnx.TypeProto) -> tuple | None:
    if not vtype.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in vtype.tensor_type.shape.dim)


class ModelIndex:
    """Tensors, nodes and quantizer positions of one model.

    Build it with `load_model`; `ModelIndex(proto)` indexes a proto as it is (no checker, no shape
    inference, nodes renamed in place), which tests use.
    """

    def __init__(self, model: onnx.ModelProto, path: str | None = None):
        self.path = path
        self.model = model
        self.tensors: dict[str, TensorInfo] = {}
        self.nodes: dict[str, onnx.NodeProto] = {}
        self.targets: dict[str, QuantTarget] = {}
        self.aliases: dict[str, str] = {}
        self._elem: dict[str, int] = {}       # onnx elem type per tensor (0 unknown)
        self._const: dict[str, object] = {}   # constant name -> TensorProto or Constant NodeProto
        self._values: dict[str, np.ndarray] = {}
        self._graph_of: dict[str, int] = {}   # node name -> graph id
        self._graph_outputs: set[str] = set() # outputs of every graph, subgraphs included
        self._shapes: dict[str, tuple | None] = {}
        self._name_nodes()
        self._read_types()
        self._link()
        self._place_quantizers()
        g = model.graph
        inits = {t.name for t in g.initializer}
        self.outputs = [o.name for o in g.output]
        self.inputs = []
        for i in g.input:
            if i.name in inits:
                continue  # old exports list initializers as inputs; they need no feed
            if not i.type.HasField("tensor_type"):
                raise ModelError(f"{self._label()}: input '{i.name}' is not a tensor, which qinspect "
                                 "cannot feed: re-export with tensor inputs")
            info = self.tensors[i.name]
            self.inputs.append(InputInfo(i.name, info.dtype, info.shape if info.shape is not None else ()))

    # -- queries --------------------------------------------------------------------------------
    def activations(self) -> list[str]:
        return [n for n, t in self.targets.items() if t.kind == "activation"]

    def weights(self) -> list[str]:
        return [n for n, t in self.targets.items() if t.kind == "weight"]

    def biases(self) -> list[str]:
        return [n for n, t in self.targets.items() if t.kind == "bias"]

    def is_float(self, name: str) -> bool:
        return self._elem.get(name, 0) in FLOAT_TYPES

    def is_constant(self, name: str) -> bool:
        """True for initializers and Constant node outputs."""
        return name in self._const

    def initializer(self, name: str) -> np.ndarray:
        """The value of a constant tensor (initializer or Constant node), read-only and cached."""
        if name not in self._values:
            src = self._const.get(name)
            if src is None:
                raise KeyError(f"'{name}' is not an initializer or Constant output")
            value = numpy_helper.to_array(src) if isinstance(src, TensorProto) else _constant_value(src)
            value.flags.writeable = False  # the cache is shared; callers copy to change it
            self._values[name] = value
        return self._values[name]

    def encoding_source(self, name: str) -> str:
        """The tensor whose encoding `name` uses: the end of its alias chain (itself if not aliased).

        The result is in `targets` unless `name` is not quantized at all (int, fused-inner, unknown).
        """
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            name = self.aliases[name]
        return name

    def _label(self) -> str:
        return self.path or "the in-memory model"

    # -- building -------------------------------------------------------------------------------
    def _name_nodes(self) -> None:
        """Give every node a unique name on our copy: producers and consumers are named by node."""
        walk = [node for _, _, _, node in _walk(self.model.graph) if node is not None]
        taken = {n.name for n in walk if n.name}
        for i, node in enumerate(walk):
            if node.name and node.name not in self.nodes:
                self.nodes[node.name] = node
                continue
            name, k = f"{node.op_type}_{i}", 1
            while name in taken:
                name, k = f"{node.op_type}_{i}_{k}", k + 1
            taken.add(name)
            node.name = name
            self.nodes[name] = node

    def _read_types(self) -> None:
        """Dtypes and shapes the model declares or shape inference found."""
        for graph, gid, _, node in _walk(self.model.graph):
            if node is not None:
                self._graph_of[node.name] = gid
                t = _constant_tensor(node) if node.op_type == "Constant" and node.output else None
                if t is not None:
                    self._const[node.output[0]] = node
                    self._set_type(node.output[0], t.data_type, tuple(t.dims))
                continue
            for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
                if vi.type.HasField("tensor_type"):
                    self._set_type(vi.name, vi.type.tensor_type.elem_type, _dims(vi.type))
                elif vi.type.WhichOneof("value") is not None:
                    self._set_type(vi.name, NOT_A_TENSOR, None)
            for t in graph.initializer:
                self._const[t.name] = t
                self._set_type(t.name, t.data_type, tuple(t.dims))
            self._graph_outputs.update(o.name for o in graph.output)

    def _set_type(self, name: str, elem: int, shape: tuple | None) -> None:
        if elem and self._elem.get(name, 0) == 0:
            self._elem[name] = elem
        if shape is not None and self._shapes.get(name) is None:
            self._shapes[name] = shape

    def _tensor(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            info = TensorInfo(name, None, None, None, [], isinstance(self._const.get(name), TensorProto))
            self.tensors[name] = info
        return info

    def _link(self) -> None:
        """Producers, consumers and the dtypes shape inference left unknown, in graph order."""
        for graph, _, _, node in _walk(self.model.graph):
            if node is None:
                for v in list(graph.input) + list(graph.initializer):
                    self._tensor(v.name)
                continue
            for name in node.input:
                if name:
                    info = self._tensor(name)
                    if node.name not in info.consumers:  # Mul(x, x) consumes x once
                        info.consumers.append(node.name)
            for i, name in enumerate(node.output):
                if name:
                    self._tensor(name).producer = node.name
                    if self._elem.get(name, 0) == 0:
                        self._elem[name] = self._guess_elem(node, i)
        for name, info in self.tensors.items():
            info.dtype = _np_dtype(self._elem.get(name, 0))
            info.shape = self._shapes.get(name)

    def _guess_elem(self, node: onnx.NodeProto, i: int) -> int:
        """An output's elem type from what the op is known to produce; 0 if we can't tell."""
        op = node.op_type
        attrs = {a.name: a for a in node.attribute}
        inp = [self._elem.get(n, 0) if n else 0 for n in node.input]
        if op in INT64_OPS or (op in INT64_SECOND_OUTPUTS and i > 0):
            return TensorProto.INT64
        if op in BOOL_OPS or (op == "Dropout" and i == 1):
            return TensorProto.BOOL
        if op == "Cast":
            return attrs["to"].i if "to" in attrs else 0
        if op == "CastLike":
            return inp[1] if len(inp) > 1 else 0
        if op == "Where":
            return inp[1] if len(inp) > 1 else 0
        if op == "ConstantOfShape":
            return attrs["value"].t.data_type if "value" in attrs else TensorProto.FLOAT
        if op in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike"):
            return attrs["dtype"].i if "dtype" in attrs else (inp[0] if inp else TensorProto.FLOAT)
        if op == "QuantizeLinear":
            if "output_dtype" in attrs and attrs["output_dtype"].i:
                return attrs["output_dtype"].i
            return inp[2] if len(inp) > 2 and inp[2] else TensorProto.UINT8
        if op == "DequantizeLinear":
            return inp[1] if len(inp) > 1 else TensorProto.FLOAT
        if op in CONTROL_FLOW:
            body = next(_subgraphs(node), None)
            skip = 1 if op == "Loop" else 0  # a Loop body's first output is its condition
            outs = list(body.output) if body is not None else []
            if i + skip < len(outs) and outs[i + skip].type.HasField("tensor_type"):
                return outs[i + skip].type.tensor_type.elem_type or self._elem.get(outs[i + skip].name, 0)
            return 0
        return inp[0] if inp else 0

    def _fused_inner(self) -> tuple[set[str], set[str]]:
        """Outputs inside fused groups (no quantizer), and the BatchNorm nodes folded into a Conv."""
        inner: set[str] = set()
        folded_bn: set[str] = set()

        def next_op(name: str, node: onnx.NodeProto, ops: frozenset) -> onnx.NodeProto | None:
            info = self.tensors.get(name)
            if info is None or len(info.consumers) != 1 or name in self._graph_outputs:
                return None
            nxt = self.nodes[info.consumers[0]]
            same_graph = self._graph_of[nxt.name] == self._graph_of[node.name]
            return nxt if same_graph and nxt.op_type in ops and nxt.input[0] == name else None

        for node in self.nodes.values():
            if node.op_type not in FUSE_FIRST or not node.output:
                continue
            out = node.output[0]
            if next_op(out, node, FUSE_ACT):
                inner.add(out)
            elif node.op_type == "Conv" and (bn := next_op(out, node, frozenset({"BatchNormalization"}))):
                inner.add(out)
                folded_bn.add(bn.name)
                if bn.output and next_op(bn.output[0], bn, FUSE_ACT):
                    inner.add(bn.output[0])
        return inner, folded_bn

    def _place_quantizers(self) -> None:
        inner, folded_bn = self._fused_inner()
        for graph, _, owner, node in _walk(self.model.graph):
            if node is None:
                self._place_graph_inputs(graph, owner)
                continue
            op = node.op_type
            for k, name in enumerate(node.input):
                if name and name in self._const and self.is_float(name) and name not in self.targets:
                    self._place_constant(node, k, name, folded_bn)
            if op == "Constant":
                continue
            for name in node.output:
                if not name or not self.is_float(name) or name in inner:
                    continue
                src = self._reused_input(node)
                if src is not None:
                    self.aliases[name] = src
                else:
                    self._add(name, "activation", op, node.name)

    def _place_graph_inputs(self, graph: onnx.GraphProto, owner: onnx.NodeProto | None) -> None:
        inits = {t.name for t in graph.initializer}
        outer = list(owner.input) if owner is not None else []
        skip = max(len(outer) - len(graph.input), 0)  # body inputs line up with the owner's last inputs
        for j, vi in enumerate(graph.input):
            name = vi.name
            if name in inits or not self.is_float(name):
                continue
            flows = owner is not None and owner.op_type in ("Loop", "Scan") and skip + j < len(outer)
            src = outer[skip + j] if flows else ""
            if src and self._quantized(src):
                self.aliases[name] = src  # subgraph inputs flow through from the outer tensor
            else:
                self._add(name, "activation", "Input", owner.name if owner is not None else "")

    def _place_constant(self, node: onnx.NodeProto, k: int, name: str, folded_bn: set[str]) -> None:
        op = node.op_type
        if k in NON_DATA_INPUTS.get(op, ()) or (node.name in folded_bn and k >= 1):
            return  # settings, or BatchNorm params that fold into the conv
        if op in ("Conv", "ConvTranspose", "Gemm") and k == 2:
            self._add(name, "bias", op, node.name, bias_inputs=(node.input[0], node.input[1]))
            return
        axis = None
        if k == 1 and op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            rank = len(self._shapes.get(name) or ())
            if op == "Conv":
                axis = 0
            elif op == "ConvTranspose":
                axis = 1
            elif op == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            elif rank >= 2:
                axis = rank - 1  # MatMul weight [..., K, N]: output channels are the last axis
        self._add(name, "weight", op, node.name, axis=axis)

    def _reused_input(self, node: onnx.NodeProto) -> str | None:
        """The input whose encoding a data-movement output reuses, or None if it needs its own."""
        if node.op_type in MOVE_OPS:
            src = node.input[0] if node.input else ""
            return src if src and self._quantized(src) else None
        if node.op_type == "Concat":
            floats = [n for n in node.input if n and self.is_float(n)]
            if floats and all(self._quantized(n) for n in floats):
                return floats[0]
        return None

    def _quantized(self, name: str) -> bool:
        return name in self.targets or name in self.aliases

    def _add(self, name: str, kind: str, op: str, node: str, **extra) -> None:
        self.targets[name] = QuantTarget(name, kind, op, node, self._shapes.get(name), **extra)


def _constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The value of a Constant node as a TensorProto (dense attributes only)."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), np.int64))
    return None  # sparse_value and strings: not treated as constants


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    return numpy_helper.to_array(_constant_tensor(node))
