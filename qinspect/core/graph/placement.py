"""Where quantizers go: fused groups, aliases of data-movement ops, weight axes and RNN rules.

The rules are described in `model.py` (design §3); `PlacementMixin` is mixed into `ModelIndex`.
The op sets that differ between targets (which ops fuse, which only move data) are a `Placement`,
which a target profile carries.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from .walk import DEFAULT_DOMAINS, _walk

# Ops whose float output only moves or selects values of input 0, so it reuses input 0's encoding.
# Not Concat: its inputs' ranges differ (a C2f block's halves, a detector's box and class maps), and
# one input's encoding would clip the others, so its output gets its own quantizer, as onnxruntime's
# quantize_static gives it and as the target requantizes the inputs to it.
MOVE_OPS = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split", "Identity",
    "Dropout", "MaxPool", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Pad",
})
FUSE_FIRST = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})
FUSE_ACT = frozenset({"Relu", "Clip"})
# Float inputs that are settings rather than data (sizes, bounds, ratios, quantization parameters):
# never parameters.
NON_DATA_INPUTS = {
    "Resize": {1, 2}, "Upsample": {1}, "Clip": {1, 2}, "Pad": {2}, "Dropout": {1}, "Range": {0, 1, 2},
    "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2},
    "QLinearConv": {1, 2, 4, 5, 6, 7}, "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "ConvInteger": {2, 3}, "MatMulInteger": {2, 3},
    # A BatchNormalization that could not fold runs in float: onnxruntime has no integer kernel for it,
    # and AIMET's configs leave its statistics unquantized (an 8-bit variance can round to 0).
    "BatchNormalization": {1, 2, 3, 4},
}
# Recurrent ops: W [dirs, gates*hidden, input] and R [dirs, gates*hidden, hidden] are weights per
# output channel on axis 1 (one channel per gate row, shared by both directions); B [dirs,
# 2*gates*hidden] adds two biases of different inputs, so it is an int32 bias with its own scale.
RNN_OPS = frozenset({"LSTM", "GRU", "RNN"})


@dataclass(frozen=True)
class Placement:
    """The op sets a target decides: `fuse_first` followed by one of `fuse_act` runs as one op with one
    output quantizer; `move_ops` reuse their data input's encoding. The defaults are AIMET's HTP config.

    BatchNormalization is not fused here: a target folds it into the op before it before the model
    is indexed (`ptq.bn_fold`), and a BatchNormalization that could not fold runs as an op of its own."""

    fuse_first: frozenset = FUSE_FIRST
    fuse_act: frozenset = FUSE_ACT
    move_ops: frozenset = MOVE_OPS


@dataclass(frozen=True)
class OpGroup:
    """A weighted op's quantizers: what target rules that tie them together look at."""

    node: str
    op_type: str
    input: str          # the data input (input 0); "" if none
    output: str         # the tensor carrying the op's output quantizer (after a fused activation)
    weight: str | None  # the weight quantizer, if it has one
    bias: str | None


class PlacementMixin:
    """Mixed into ModelIndex; uses its tensors, nodes, constants, existing encodings and `_add`."""

    def _fused_inner(self) -> set[str]:
        """Outputs inside fused groups (no quantizer); fills `fused_output` (node -> the tensor
        whose quantizer is its output's) for every op of `fuse_first`."""
        inner: set[str] = set()
        place = self.placement

        def next_op(name: str, node: onnx.NodeProto, ops: frozenset) -> onnx.NodeProto | None:
            info = self.tensors.get(name)
            if info is None or len(info.consumers) != 1 or name in self._graph_outputs:
                return None
            nxt = self.nodes[info.consumers[0]]
            same_graph = self._graph_of[nxt.name] == self._graph_of[node.name]
            return nxt if same_graph and nxt.op_type in ops and nxt.input[0] == name else None

        for node in self.nodes.values():
            if node.op_type not in place.fuse_first or not node.output or not node.output[0]:
                continue
            out = node.output[0]
            act = next_op(out, node, place.fuse_act)
            if act is not None and act.output:
                inner.add(out)
                out = act.output[0]
            self.fused_output[node.name] = out
        return inner

    def group_of(self, name: str) -> OpGroup | None:
        """The weighted op a quantizer belongs to: a weight's or bias's op, or the op whose (fused)
        output an activation is; None for anything else."""
        t = self.targets.get(name)
        if t is None:
            return None
        if t.kind != "activation":
            return self.op_groups().get(t.node)
        return self._groups_by("output").get(name)

    def groups_reading(self, name: str) -> list[OpGroup]:
        """The weighted ops whose data input takes its encoding from `name`."""
        return self._groups_by("input").get(name, [])

    def _groups_by(self, key: str) -> dict:
        if self._group_maps is None:
            by_output = {g.output: g for g in self.op_groups().values()}
            by_input: dict[str, list[OpGroup]] = {}
            for g in self.op_groups().values():
                if g.input:
                    by_input.setdefault(self.encoding_source(g.input), []).append(g)
            self._group_maps = {"output": by_output, "input": by_input}
        return self._group_maps[key]

    def op_groups(self) -> dict[str, OpGroup]:
        """Every op with a weight quantizer (Conv, ConvTranspose, Gemm, MatMul with a constant B,
        RNNs), by node name, with its input, fused output, weight and bias quantizers."""
        if self._op_groups is None:
            groups = {}
            for name, t in self.targets.items():
                if t.kind == "activation":
                    continue
                g = groups.setdefault(t.node, {"weight": None, "bias": None})
                if g[t.kind] is None:
                    g[t.kind] = name
            self._op_groups = {}
            for node, g in groups.items():
                n = self.nodes[node]
                if g["weight"] is None or not n.output:
                    continue
                out = self.fused_output.get(node, n.output[0])
                self._op_groups[node] = OpGroup(node, n.op_type, n.input[0] if n.input else "", out,
                                                g["weight"], g["bias"])
        return self._op_groups

    def _place_quantizers(self) -> None:
        self._op_groups = self._group_maps = None
        inner = self._fused_inner()
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
                    self._place_constant(node, k, name)
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

    def _place_constant(self, node: onnx.NodeProto, k: int, name: str) -> None:
        op = node.op_type
        existing = self.existing_encodings.get(name)
        if k in NON_DATA_INPUTS.get(op, ()):
            return  # settings, not data
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
        if node.op_type in self.placement.move_ops:
            src = node.input[0] if node.input else ""
            return src if src and self._quantized(src) else None
        return None  # Concat included: one input's encoding would clip the others (see MOVE_OPS)

    def _quantized(self, name: str) -> bool:
        return name in self.targets or name in self.aliases
