"""Load an ONNX model, index its tensors and decide where quantizers go (design §3).

`load_model(path_or_proto)` returns a `ModelIndex`: the loaded model (external data included), every
tensor with its dtype, shape, producer and consumers, the feed inputs, and the quantizer positions
(`targets`) with the defaults of AIMET's HTP config:

- only float tensors (float32/16, bfloat16, double) are quantized; int/bool tensors never are;
- activations: float graph inputs and float node outputs, except that data-movement ops (`MOVE_OPS`)
  reuse their data input's encoding (`aliases`), and the inner outputs of fused groups
  (Conv/ConvTranspose/Gemm/MatMul/Add -> Relu/Clip) get no quantizer at all (`fused_output` maps
  each such op to the tensor that carries its output's quantizer). The op sets come from a
  `Placement` (a target's); BatchNormalization is folded before indexing by the target
  (`ptq.prepare`), so one that is still here runs as an op of its own;
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

Placement rules are in `placement.py`, the reading of an already quantized model in
`prequantized.py` and graph walking in `walk.py`; `ModelIndex` mixes the first two in.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from ..quant.encoding import Encoding
from ..errors import ModelError
from .placement import RNN_OPS, Placement, PlacementMixin
from .prequantized import PrequantizedMixin
from .walk import NOT_A_TENSOR, _all_tensors, _constant_tensor, _constant_value, _dims, _np_dtype, _subgraphs, _walk

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
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


# A model transform run between loading and indexing: (model, folder of data left on disk) ->
# (new model, notes for the user). Targets use it to fold BatchNormalization as the device does.
Transform = Callable[[onnx.ModelProto, "str | None"], "tuple[onnx.ModelProto, list[str]]"]


def load_model(path_or_proto: str | os.PathLike | onnx.ModelProto, *, placement: Placement | None = None,
               transform: Transform | None = None) -> ModelIndex:
    """Load, check and index a model. Every failure a user can fix raises `ModelError`.

    `placement` gives the op sets of the target (AIMET's HTP config by default); `transform`
    rewrites the checked model before it is indexed (its notes go first in `index.notes`).

    A model whose external data reach `LAZY_EXTERNAL_BYTES` (any model over 2 GB) is indexed
    without reading that data: `index.model` keeps the references, `index.external_dir` says where
    the files are, `initializer()` maps a tensor from its file on demand, and onnxruntime sessions
    read the files themselves. So the weights are never held twice in memory.
    """
    if isinstance(path_or_proto, onnx.ModelProto):
        model, path, external_dir = _prepare_proto(path_or_proto), None, None
    else:
        path = os.fspath(path_or_proto)
        model, external_dir = _read_file(path)
    notes: list[str] = []
    if transform is not None:
        model, notes = transform(model, external_dir)
    index = ModelIndex(model, path, external_dir=external_dir, placement=placement)
    index.notes[:0] = notes
    return index


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


class ModelIndex(PlacementMixin, PrequantizedMixin):
    """Tensors, nodes and quantizer positions of one model.

    Build it with `load_model`; `ModelIndex(proto)` indexes a proto as it is (no checker, no shape
    inference, nodes renamed in place), which tests use.
    """

    def __init__(self, model: onnx.ModelProto, path: str | None = None, *, external_dir: str | None = None,
                 placement: Placement | None = None):
        self.path = path
        self.model = model
        self.placement = placement or Placement()
        self.fused_output: dict[str, str] = {}  # fuse_first node -> the tensor carrying its output quantizer
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
        self.bn_params: dict = {}             # folded layer -> (|gamma|, beta) of its output (ptq.prepare)
        # Values PTQ steps give a constant's quantizer in place of its float value (AdaRound's
        # rounding, bias correction's biases); the float model itself stays the reference.
        self.ptq_values: dict[str, np.ndarray] = {}
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

    def quantized_value(self, name: str) -> np.ndarray:
        """What the quantizer of a constant is given: a PTQ step's value, else the float value."""
        value = self.ptq_values.get(name)
        return value if value is not None else self.initializer(name)

    def with_ptq_values(self, values: dict[str, np.ndarray]) -> ModelIndex:
        """This index with `values` added to `ptq_values` (a new object; this one is unchanged)."""
        clone = copy.copy(self)
        clone.ptq_values = {**self.ptq_values, **values}
        return clone

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

    # Placement calls this; it lives here, next to QuantTarget, so placement.py never imports model.py.
    def _add(self, name: str, kind: str, op: str, node: str, **extra) -> None:
        self.targets[name] = QuantTarget(name, kind, op, node, self._shapes.get(name), **extra)

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
