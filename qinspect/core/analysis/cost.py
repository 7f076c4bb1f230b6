"""A cost model of a precision plan, computed from the graph: bit operations and parameter bytes.

- `op_macs(index)`: multiply-accumulates per node for one sample (symbolic dims count as 1):
  Conv ``numel(Y) x prod(W.shape[1:])``, ConvTranspose ``numel(X) x prod(W.shape[1:])``,
  Gemm ``numel(Y) x K``, MatMul ``numel(Y) x A.shape[-1]``; pooling and reductions
  ``numel(X)``; any other op with a float output its element count, except data movement
  (which reuses its input's encoding), activations fused into the op before them (Relu/Clip
  after Conv/Gemm/...), Constant and ops without a float output, which count 0. A node of
  unknown shape counts 0. Nodes inside control-flow bodies count once.
- `plan_cost(index, encodings)`: ``bit_ops = sum over nodes of MACs x a x b`` with ``a`` the bits
  of the node's data input (input 0) and ``b`` those of its weight (input 1) or, without one, of
  its second float input (else ``a``); ``param_bytes`` is the size of every weight and bias at its
  encoding's bits. Bits: an integer encoding's bitwidth, float16 16, float32 (and no encoding)
  the tensor's own dtype width, 32 for float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.placement import MOVE_OPS

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
POOLS = frozenset({
    "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "ReduceMean", "ReduceSum",
    "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp",
})
NO_COMPUTE = MOVE_OPS | {"Concat", "Constant", "Shape", "Size", "Cast", "CastLike", "ConstantOfShape"}


@dataclass
class Cost:
    bit_ops: float       # sum over nodes of MACs x input bits x weight bits
    param_bytes: float   # weights and biases at their encodings' bits
    macs: int = 0        # total MACs of one sample (independent of the plan)

    def to_dict(self) -> dict:
        return {"bit_ops": self.bit_ops, "param_bytes": self.param_bytes, "macs": self.macs}


def _numel(shape) -> int | None:
    """Elements of one sample's tensor: symbolic or unknown dims count 1; None if the rank is unknown."""
    if shape is None:
        return None
    return int(np.prod([d if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shape], dtype=np.int64))


def _dim(shape, i) -> int:
    if shape is None or not -len(shape) <= i < len(shape):
        return 1
    d = shape[i]
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1


def _shape(index, name):
    info = index.tensors.get(name) if name else None
    return info.shape if info is not None else None


def _fused(index, node) -> bool:
    """A Relu/Clip (or BatchNorm) whose input has no quantizer of its own: it runs inside the op before it."""
    x = node.input[0] if node.input else ""
    info = index.tensors.get(x) if x else None
    return (info is not None and info.producer is not None and index.is_float(x) and not index.is_constant(x)
            and x not in index.targets and x not in index.aliases)


def node_macs(index, node) -> int:
    op = node.op_type
    ins = list(node.input)
    out = node.output[0] if node.output else ""
    if op in WEIGHTED and len(ins) >= 2:
        y, w = _numel(_shape(index, out)), _shape(index, ins[1])
        if op == "Conv":
            return 0 if y is None or w is None else y * _numel(w[1:])
        if op == "ConvTranspose":
            x = _numel(_shape(index, ins[0]))
            return 0 if x is None or w is None else x * _numel(w[1:])
        if op == "Gemm":
            if y is None:
                return 0
            if w is not None and len(w) == 2:
                trans_b = next((t.i for t in node.attribute if t.name == "transB"), 0)
                return y * _dim(w, 1 if trans_b else 0)
            a = _shape(index, ins[0])
            trans_a = next((t.i for t in node.attribute if t.name == "transA"), 0)
            return 0 if a is None else y * _dim(a, 0 if trans_a else -1)
        a = _shape(index, ins[0])  # MatMul
        return 0 if y is None or a is None else y * _dim(a, -1)
    if op in NO_COMPUTE or not out or not index.is_float(out) or _fused(index, node):
        return 0
    if op in POOLS:
        return _numel(_shape(index, ins[0]) if ins else None) or 0
    return _numel(_shape(index, out)) or 0


def op_macs(index) -> dict[str, int]:
    """MACs per node name (every node of the model, subgraphs included) for one sample."""
    return {name: node_macs(index, node) for name, node in index.nodes.items()}


def _default_bits(index, name) -> int:
    info = index.tensors.get(name)
    return 8 * info.dtype.itemsize if info is not None and info.dtype is not None else 32


def tensor_bits(index, encodings) -> dict[str, int]:
    """Bits of every quantizer position (targets): its encoding's bitwidth; float32 and no
    encoding give the tensor's own dtype width."""
    out = {}
    for name in index.targets:
        enc = encodings.get(name)
        if enc is None or (enc.is_float and enc.bw == 32):
            out[name] = _default_bits(index, name)
        else:
            out[name] = int(enc.bw)
    return out


def _input_bits(index, bits, name) -> int:
    src = index.encoding_source(name)
    return bits.get(src, _default_bits(index, src))


def cost_of_bits(index, bits: dict[str, int], macs: dict[str, int] | None = None) -> Cost:
    """The cost of a plan given the bits of each quantizer position (see `tensor_bits`)."""
    macs = op_macs(index) if macs is None else macs
    bit_ops = 0.0
    for name, m in macs.items():
        if not m:
            continue
        node = index.nodes[name]
        data = [n for n in node.input if n and index.is_float(n)]
        if not data:
            continue
        a = _input_bits(index, bits, data[0])
        b = _input_bits(index, bits, data[1]) if len(data) > 1 else a
        bit_ops += float(m) * a * b
    param_bytes = 0.0
    for name in index.weights() + index.biases():
        size = int(np.prod(index.initializer(name).shape, dtype=np.int64))
        param_bytes += size * bits.get(name, _default_bits(index, name)) / 8
    return Cost(bit_ops, param_bytes, int(sum(macs.values())))


def plan_cost(index, encodings) -> Cost:
    """Bit operations and parameter bytes of the model under `encodings` (see the module doc)."""
    return cost_of_bits(index, tensor_bits(index, encodings))
