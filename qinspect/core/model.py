"""Load an ONNX model, index its tensors and decide where quantizers go (design §3).

`load_model(path_or_proto)` returns a `ModelIndex`: the loaded model (external data included), every
tensor with its dtype, shape, producer and consumers, the feed inputs, and the quantizer positions
(`targets`) with the defaults of AIMET's HTP config:

- only float tensors (float32/16, bfloat16, double) are quantized; int/bool tensors never are;
- activations: float graph inputs and float node outputs, except that data-movement ops (`MOVE_OPS`)
  reuse their data input's encoding (`aliases`), and the inner outputs of fused groups
  (Conv/ConvTranspose/Gemm/MatMul/Add -> Relu/Clip, Conv -> BatchNormalization [-> Relu/Clip]) get no
  quantizer at all;
- weights: constant input 1 of Conv/ConvTranspose/Gemm/MatMul, per output channel (`axis`); W and R
  of LSTM/GRU/RNN per gate row (axis 1); other constant float inputs are parameters (kind
  "weight", axis None);
- biases: constant input 2 of Conv/ConvTranspose/Gemm, scale = input scale x weight scale; B of
  LSTM/GRU/RNN (two summed biases) is an int32 bias with its own scale.

Models from other tools:
- Ops of other domains (ai.onnx.ml, com.microsoft, ...) stay float: neither their outputs nor their
  parameters get a quantizer; they are listed in `custom_ops` and `notes`.
- An already quantized model (QuantizeLinear/DequantizeLinear pairs, QLinearConv/QLinearMatMul,
  ConvInteger/MatMulInteger, DynamicQuantizeLinear, integer weights dequantized by Cast -> (Sub) ->
  Mul) keeps what it has: `existing_encodings` holds every encoding read from it (integer tensors
  included), `prequantized` says how each tensor is quantized, and targets it already quantizes
  carry `existing` (derived encodings use it, exporters add nothing there). Its other float tensors
  default to float. A DequantizeLinear (or Cast -> Mul) of an integer constant is a float weight
  whose value `initializer()` computes; quantization machinery (scales, integer accumulators cast
  to float) never gets a quantizer.
- A model whose external data reach `LAZY_EXTERNAL_BYTES` (every model over 2 GB) is indexed without
  reading that data: see `load_model`.

Limits, kept on purpose for the simple cases to stay right:
- Control flow (If/Loop/Scan): subgraph tensors are indexed with the same rules (names are unique
  across scopes in valid ONNX). Loop/Scan body inputs reuse the encoding of the outer tensor that
  feeds them (exact for the first Loop iteration and for Scan slices, approximate for loop-carried
  state). The node's own outputs get their own target because they merge branches or iterations.
- Constants are initializers, Constant nodes and dequantized integer constants only; a weight
  reached through Identity/Transpose is not folded, so it is a parameter (axis None) and the op sees
  an aliased activation.
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

from .encoding import Encoding
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
# Float inputs that are settings rather than data (sizes, bounds, ratios, quantization parameters):
# never parameters.
NON_DATA_INPUTS = {
    "Resize": {1, 2}, "Upsample": {1}, "Clip": {1, 2}, "Pad": {2}, "Dropout": {1}, "Range": {0, 1, 2},
    "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2},
    "QLinearConv": {1, 2, 4, 5, 6, 7}, "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "ConvInteger": {2, 3}, "MatMulInteger": {2, 3},
}
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
# Recurrent ops: W [dirs, gates*hidden, input] and R [dirs, gates*hidden, hidden] are weights per
# output channel on axis 1 (one channel per gate row, shared by both directions); B [dirs,
# 2*gates*hidden] adds two biases of different inputs, so it is an int32 bias with its own scale.
RNN_OPS = frozenset({"LSTM", "GRU", "RNN"})
# Ops of an already quantized model (QDQ, QOperator, dynamic quantization).
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
STORAGE_BITS = {  # ONNX integer storage -> (bits, signed)
    TensorProto.INT8: (8, True), TensorProto.UINT8: (8, False), TensorProto.INT16: (16, True),
    TensorProto.UINT16: (16, False), TensorProto.INT4: (4, True), TensorProto.UINT4: (4, False),
    TensorProto.INT32: (32, True),
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
# External data at least this large stay on disk (memory-mapped on demand) instead of being loaded.
LAZY_EXTERNAL_BYTES = 1 << 30


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
    existing: Encoding | None = None  # the encoding the model already gives it (a quantized model)


def load_model(path_or_proto: str | os.PathLike | onnx.ModelProto) -> ModelIndex:
    """Load, check and index a model. Every failure a user can fix raises `ModelError`.

    A model whose external data reach `LAZY_EXTERNAL_BYTES` (any model over 2 GB) is indexed
    without reading that data: `index.model` keeps the references, `index.external_dir` says where
    the files are, `initializer()` maps a tensor from its file on demand, and onnxruntime sessions
    read the files themselves. So the weights are never held twice in memory.
    """
    if isinstance(path_or_proto, onnx.ModelProto):
        return ModelIndex(_prepare_proto(path_or_proto), None)
    path = os.fspath(path_or_proto)
    model, external_dir = _read_file(path)
    return ModelIndex(model, path, external_dir=external_dir)


def _external_info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _tensor_bytes(t: TensorProto) -> int | None:
    dtype = _np_dtype(t.data_type) if t.data_type in FIXED_SIZE_TYPES else None
    return None if dtype is None else int(np.prod(t.dims, dtype=np.int64)) * dtype.itemsize


def _read_file(path: str) -> tuple[onnx.ModelProto, str | None]:
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
    total = 0
    for t in _all_tensors(raw.graph):
        if t.data_location == TensorProto.EXTERNAL:
            info = _external_info(t)
            loc = info.get("location", "")
            file = os.path.join(base, loc)
            if not os.path.isfile(file):
                raise ModelError(f"{path} needs external data file '{loc}', which is missing: "
                                 f"put it in {base}")
            want = _tensor_bytes(t)
            offset = int(info.get("offset", 0) or 0)
            length = int(info.get("length", 0) or 0) or (want or 0)
            if (want is not None and length != want) or offset + length > os.path.getsize(file):
                raise ModelError(f"{path}: external data '{loc}' is truncated or does not match tensor "
                                 f"'{t.name}': re-export the model")
            external[t.name] = loc
            total += length
    _check(path, path)  # by path: the checker resolves external data next to the file, not in cwd
    # Infer before reading external data: the proto is then small (a file can't exceed 2 GB without
    # external data), so in-memory inference always works and infer_shapes_path is never needed.
    model = _infer(raw)
    if external and total >= LAZY_EXTERNAL_BYTES:
        return model, base  # read on demand (memory-mapped), never loaded into the proto
    if external:
        try:
            load_external_data_for_model(model, base)
        except Exception as e:
            raise ModelError(f"{path}: cannot read its external data ({_first_line(e)}): re-export it") from e
        for t in _all_tensors(model.graph):
            if t.name in external and t.data_type in FIXED_SIZE_TYPES:
                if len(t.raw_data) != _tensor_bytes(t):
                    raise ModelError(f"{path}: external data '{external[t.name]}' is truncated or does not "
                                     f"match tensor '{t.name}': re-export the model")
    return model, None


def external_array(t: TensorProto, base: str) -> np.ndarray:
    """A tensor stored in an external file, memory-mapped read-only (read from disk when touched)."""
    info = _external_info(t)
    file = os.path.join(base, info.get("location", ""))
    dtype = _np_dtype(t.data_type)
    if t.data_type not in FIXED_SIZE_TYPES or dtype is None:
        return numpy_helper.to_array(t, base)  # 4-bit, strings: small; read them whole
    shape = tuple(int(d) for d in t.dims)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(file, dtype=dtype.newbyteorder("<"), mode="r", offset=int(info.get("offset", 0) or 0),
                     shape=shape)


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

    def __init__(self, model: onnx.ModelProto, path: str | None = None, *, external_dir: str | None = None):
        self.path = path
        self.model = model
        self.external_dir = external_dir  # where tensors still stored externally are (large models)
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
        # An already quantized model: the encodings it has, how each tensor is quantized already,
        # and the float tensors that are quantization machinery rather than data.
        self.existing_encodings: dict[str, Encoding] = {}
        self.prequantized: dict[str, str] = {}
        self.quantized_model = False
        self.custom_ops: dict[str, str] = {}  # node -> "domain.op" of ops in other domains, kept float
        self.notes: list[str] = []            # what the user should know about this model, one line each
        self._folded: dict[str, tuple] = {}   # float constants computed from integer ones (DQ, Cast -> Mul)
        self._skip: set[str] = set()          # float tensors that never get a quantizer
        self._qparams: set[str] = set()       # constants that are quantization parameters
        self._dynamic: set[str] = set()       # tensors quantized at run time (DynamicQuantizeLinear)
        self._pairs: dict[str, str] = {}      # DequantizeLinear output -> the float input of its QuantizeLinear
        self._name_nodes()
        self._read_types()
        self._link()
        self._find_existing()
        self._place_quantizers()
        self._write_notes()
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
        """True for initializers, Constant node outputs and float weights dequantized from integer
        constants (DequantizeLinear or Cast -> Mul of an integer initializer)."""
        return name in self._const or name in self._folded

    def initializer(self, name: str) -> np.ndarray:
        """The value of a constant tensor (initializer or Constant node), read-only and cached."""
        if name not in self._values:
            src = self._const.get(name)
            if src is None and name in self._folded:
                value = self._fold(name)
            elif src is None:
                raise KeyError(f"'{name}' is not an initializer or Constant output")
            elif isinstance(src, TensorProto) and src.data_location == TensorProto.EXTERNAL and self.external_dir:
                value = external_array(src, self.external_dir)
            else:
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

    # -- an already quantized model ---------------------------------------------------------------
    def _const_array(self, name: str) -> np.ndarray | None:
        if not name or name not in self._const:
            return None
        try:
            return np.asarray(self.initializer(name))
        except Exception:
            return None

    def _onnx_encoding(self, scale: str, zero_point: str, elem: int, data: str, axis: int | None) -> Encoding | None:
        """Our encoding of ONNX (scale, zero point) on storage `elem`; None if it is not a static
        integer encoding we can express (computed scales, float8, blocked quantization)."""
        if elem not in STORAGE_BITS:
            return None
        bw, signed = STORAGE_BITS[elem]
        s = self._const_array(scale)
        if s is None:
            return None
        z = self._const_array(zero_point) if zero_point else np.zeros(1, np.int64)
        if z is None:
            return None
        s = s.astype(np.float64).ravel()
        z = z.astype(np.int64).ravel()
        if z.size not in (1, s.size) or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            return None
        z = np.broadcast_to(z, s.shape)
        offsets = -z - 2 ** (bw - 1) if signed else -z
        if np.any(offsets > 0) or np.any(offsets < -(2**bw - 1)):
            return None
        if s.size > 1:
            rank = len(self._shapes.get(data) or ())
            if axis is None or not rank or not -rank <= axis < rank:
                return None
            axis = axis % rank
        else:
            axis = None
        return Encoding(bw=bw, scale=tuple(float(v) for v in s), offset=tuple(int(o) for o in offsets),
                        symmetric=bool(signed and np.all(z == 0)), axis=axis)

    def _mark(self, name: str, enc: Encoding | None, how: str) -> None:
        if not name:
            return
        self.quantized_model = True
        self.prequantized.setdefault(name, how)
        if enc is not None:
            self.existing_encodings.setdefault(name, enc)

    def _find_existing(self) -> None:
        """Read the quantization an already quantized model has: Q/DQ pairs, QOperator and integer
        ops, dynamic quantization, and integer weights dequantized by Cast -> (Sub) -> Mul."""
        cast_of: dict[str, str] = {}        # Cast output -> integer constant it converts
        minus_zp: dict[str, tuple] = {}     # Sub output -> (integer constant, zero point constant)
        accumulators: set[str] = set()      # int32 outputs of ConvInteger/MatMulInteger
        accumulators_f: set[str] = set()    # ... cast to float
        scale_values: set[str] = set()      # float scales computed at run time
        for _, _, _, node in _walk(self.model.graph):
            if node is None:
                continue
            op, dom = node.op_type, node.domain
            ins = list(node.input) + [""] * 9
            outs = list(node.output)
            if op in ("QuantizeLinear", "DequantizeLinear") and dom in DEFAULT_DOMAINS | {"com.microsoft"}:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                quantize = op == "QuantizeLinear"
                data, q = (ins[0], outs[0]) if quantize else (outs[0], ins[0])
                elem = self._elem.get(q, 0)
                if attrs.get("block_size"):
                    enc = None
                else:
                    enc = self._onnx_encoding(ins[1], ins[2], elem, data, attrs.get("axis", 1))
                label = f"{op} ({_storage_name(elem)})"
                self._mark(data, enc, label)
                self._mark(q, enc, label)
                self._qparams.update(n for n in ins[1:3] if n)
                if not quantize:
                    producer = self.tensors[q].producer if q in self.tensors else None
                    pnode = self.nodes.get(producer) if producer else None
                    if q in self._const and enc is not None and self.is_float(data):
                        self._folded[data] = ("dq", q, enc)
                    elif pnode is not None and pnode.op_type == "QuantizeLinear" and pnode.input:
                        self._pairs[data] = pnode.input[0]
            elif op == "DynamicQuantizeLinear" and dom in DEFAULT_DOMAINS:
                self._mark(ins[0], None, "quantized at run time by DynamicQuantizeLinear")
                self._dynamic.add(ins[0])
                scale_values.update(outs[1:2])
            elif op in ("QLinearConv", "QLinearMatMul") and dom in DEFAULT_DOMAINS:
                per_tensor = 0  # ignored: one scale
                self._mark(ins[0], self._onnx_encoding(ins[1], ins[2], self._elem.get(ins[0], 0), ins[0], per_tensor),
                           f"input of {op}")
                w_axis = 0 if op == "QLinearConv" else -1
                self._mark(ins[3], self._onnx_encoding(ins[4], ins[5], self._elem.get(ins[3], 0), ins[3], w_axis),
                           f"weight of {op}")
                y_enc = self._onnx_encoding(ins[6], ins[7], self._elem.get(outs[0], 0), outs[0], per_tensor)
                self._mark(outs[0], y_enc, f"output of {op}")
                if op == "QLinearConv" and ins[8]:
                    self._mark(ins[8], None, "int32 bias of QLinearConv")
            elif op in ("ConvInteger", "MatMulInteger") and dom in DEFAULT_DOMAINS:
                for name in ins[:2]:
                    self._mark(name, None, f"integer input of {op} (zero point only; scales are applied after it)")
                accumulators.update(outs[:1])
            elif op == "Cast" and outs and self.is_float(outs[0]):
                if ins[0] in accumulators:
                    self._skip.add(outs[0])
                    accumulators_f.add(outs[0])
                    self._mark(outs[0], None, "integer accumulator as float (dequantized by the next Mul)")
                elif ins[0] in self._const and self._elem.get(ins[0], 0) in STORAGE_BITS:
                    cast_of[outs[0]] = ins[0]
            elif op == "Sub" and ins[0] in cast_of and ins[1] in self._const:
                minus_zp[outs[0]] = (cast_of[ins[0]], ins[1])
            elif op == "Mul" and outs and self._fold_mul(node, cast_of, minus_zp):
                continue
            elif op in ("Mul", "Div") and any(n in accumulators_f for n in ins[:2]):
                self._qparams.update(n for n in ins[:2] if n in self._const)  # the dequantizing scale
            # Scales computed at run time (DynamicQuantizeLinear's scale times a weight scale): not data.
            data_ins = [n for n in node.input if n]
            if outs and data_ins and any(n in scale_values for n in data_ins) and all(
                    n in scale_values or n in self._const for n in data_ins):
                scale_values.update(outs)
                self._qparams.update(n for n in data_ins if n in self._const)
        self._skip |= scale_values

    def _fold_mul(self, node: onnx.NodeProto, cast_of: dict, minus_zp: dict) -> bool:
        """Cast(int const) [- zp] * scale: a float weight with an existing encoding (True if so)."""
        a, b = (list(node.input) + ["", ""])[:2]
        for chain, scale in ((a, b), (b, a)):
            if chain in cast_of:
                src, zp = cast_of[chain], ""
            elif chain in minus_zp:
                src, zp = minus_zp[chain]
            else:
                continue
            if scale not in self._const or not self.is_float(scale):
                continue
            q = self._const_array(src)
            s = self._const_array(scale)
            z = self._const_array(zp) if zp else np.zeros((), np.int64)
            if q is None or s is None or z is None:
                continue
            axis_s, axis_z = _broadcast_axis(s.shape, q.ndim), _broadcast_axis(z.shape, q.ndim)
            if axis_s is False or axis_z is False or (axis_s is not None and axis_z is not None and axis_s != axis_z):
                continue
            axis = axis_s if axis_s is not None else axis_z
            channels = q.shape[axis] if axis is not None else 1
            flat_s = np.broadcast_to(s.reshape(-1), (channels,)) if s.size in (1, channels) else None
            flat_z = np.broadcast_to(np.asarray(z).reshape(-1), (channels,)) if np.size(z) in (1, channels) else None
            if flat_s is None or flat_z is None or np.any(flat_z != np.round(flat_z)):
                continue
            bw, signed = STORAGE_BITS[self._elem[src]]
            zi = flat_z.astype(np.int64)
            offsets = -zi - 2 ** (bw - 1) if signed else -zi
            bad_scale = np.any(flat_s <= 0) or not np.all(np.isfinite(flat_s))
            if bad_scale or np.any(offsets > 0) or np.any(offsets < -(2**bw - 1)):
                continue
            enc = Encoding(bw=bw, scale=tuple(float(v) for v in flat_s), offset=tuple(int(o) for o in offsets),
                           symmetric=bool(signed and np.all(zi == 0)), axis=axis if channels > 1 else None)
            out = node.output[0]
            self._folded[out] = ("mul", src, zp, scale)
            self._mark(out, enc, f"{_storage_name(self._elem[src])} weight dequantized by Cast -> Mul")
            self._mark(src, enc, f"{_storage_name(self._elem[src])} weight dequantized by Cast -> Mul")
            self._skip.add(chain)
            self._skip.update(n for n in cast_of if cast_of[n] == src)
            self._qparams.update(n for n in (scale, zp) if n)
            return True
        return False

    def _fold(self, name: str) -> np.ndarray:
        """The float32 value of a folded constant, as the model computes it."""
        kind, src, *rest = self._folded[name]
        q = np.asarray(self.initializer(src)).astype(np.float64)
        if kind == "dq":
            enc = rest[0]
            scale, zp = np.asarray(enc.scale), -np.asarray(enc.offset, np.float64)
            if STORAGE_BITS[self._elem[src]][1]:
                zp = zp - 2 ** (enc.bw - 1)
            if enc.axis is not None:
                shape = [1] * q.ndim
                shape[enc.axis] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            else:
                scale, zp = scale.reshape(()), zp.reshape(())
            return ((q - zp) * scale).astype(np.float32)
        zp_name, scale_name = rest
        zp = np.asarray(self.initializer(zp_name)).astype(np.float64) if zp_name else 0.0
        scale = np.asarray(self.initializer(scale_name)).astype(np.float32)
        return ((q - zp).astype(np.float32) * scale).astype(np.float32)

    def _write_notes(self) -> None:
        if self.quantized_model:
            kept = [n for n, t in self.targets.items() if t.existing is not None]
            self.notes.append(
                f"the model is already quantized: {len(kept)} tensor(s) keep the encodings it gives them and get "
                f"no second quantizer, and its other float tensors stay float unless you edit them")
        if self.custom_ops:
            listed = ", ".join(f"{op} ({node})" for node, op in list(self.custom_ops.items())[:6])
            more = f" and {len(self.custom_ops) - 6} more" if len(self.custom_ops) > 6 else ""
            self.notes.append(f"{len(self.custom_ops)} op(s) of other domains stay float (qinspect does not "
                              f"quantize them): {listed}{more}")
        rnn = sorted({n.op_type for n in self.nodes.values() if n.op_type in RNN_OPS})
        if rnn:
            self.notes.append(f"{'/'.join(rnn)}: weights W and R are quantized per channel on axis 1 (a channel per "
                              f"gate row, shared by both directions) and B as an int32 bias")

    def _place_quantizers(self) -> None:
        inner, folded_bn = self._fused_inner()
        for graph, _, owner, node in _walk(self.model.graph):
            if node is None:
                self._place_graph_inputs(graph, owner)
                continue
            op = node.op_type
            if not self._known_domain(node):
                self.custom_ops[node.name] = f"{node.domain}.{op}"
                continue  # neither its parameters nor its outputs: the op stays float
            for k, name in enumerate(node.input):
                if (name and (name in self._const or name in self._folded) and self.is_float(name)
                        and name not in self.targets and name not in self._qparams and name not in self._skip):
                    self._place_constant(node, k, name, folded_bn)
            if op == "Constant":
                continue
            for name in node.output:
                if (not name or not self.is_float(name) or name in inner or name in self._skip
                        or name in self._folded or name in self._dynamic):
                    continue
                if name in self.existing_encodings:
                    pair = self._pairs.get(name)
                    if pair and self._quantized(pair):
                        self.aliases[name] = pair  # the DQ of a Q/DQ pair carries its Q input's encoding
                    else:
                        self._add(name, "activation", op, node.name, existing=self.existing_encodings[name])
                    continue
                src = self._reused_input(node)
                if src is not None:
                    self.aliases[name] = src
                else:
                    self._add(name, "activation", op, node.name)

    @staticmethod
    def _known_domain(node: onnx.NodeProto) -> bool:
        return node.domain in DEFAULT_DOMAINS or (
            node.domain == "com.microsoft" and node.op_type in ("QuantizeLinear", "DequantizeLinear"))

    def _place_graph_inputs(self, graph: onnx.GraphProto, owner: onnx.NodeProto | None) -> None:
        inits = {t.name for t in graph.initializer}
        outer = list(owner.input) if owner is not None else []
        skip = max(len(outer) - len(graph.input), 0)  # body inputs line up with the owner's last inputs
        for j, vi in enumerate(graph.input):
            name = vi.name
            if name in inits or not self.is_float(name) or name in self._dynamic:
                continue
            flows = owner is not None and owner.op_type in ("Loop", "Scan") and skip + j < len(outer)
            src = outer[skip + j] if flows else ""
            if src and self._quantized(src):
                self.aliases[name] = src  # subgraph inputs flow through from the outer tensor
            else:
                self._add(name, "activation", "Input", owner.name if owner is not None else "",
                          existing=self.existing_encodings.get(name))

    def _place_constant(self, node: onnx.NodeProto, k: int, name: str, folded_bn: set[str]) -> None:
        op = node.op_type
        existing = self.existing_encodings.get(name)
        if k in NON_DATA_INPUTS.get(op, ()) or (node.name in folded_bn and k >= 1):
            return  # settings, or BatchNorm params that fold into the conv
        if op in ("Conv", "ConvTranspose", "Gemm") and k == 2:
            self._add(name, "bias", op, node.name, bias_inputs=(node.input[0], node.input[1]), existing=existing)
            return
        if op in RNN_OPS and k == 3:
            self._add(name, "bias", op, node.name, existing=existing)  # W and R biases summed: own scale
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
        elif k in (1, 2) and op in RNN_OPS and len(self._shapes.get(name) or ()) == 3:
            axis = 1  # W/R [dirs, gates*hidden, in]: a channel per gate row
        self._add(name, "weight", op, node.name, axis=axis, existing=existing)

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


def _storage_name(elem: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name if elem else "unknown type"
    except Exception:
        return TensorProto.DataType.Name(elem).lower() if elem in TensorProto.DataType.values() else "unknown type"


def _broadcast_axis(shape: tuple, rank: int):
    """The axis a parameter of `shape` varies along when broadcast against a tensor of `rank`
    (None: one value for all; False: along several axes, which no encoding holds)."""
    shape = tuple(shape)
    if len(shape) > rank:
        return False
    aligned = (1,) * (rank - len(shape)) + shape
    axes = [i for i, d in enumerate(aligned) if d != 1]
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else False


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
