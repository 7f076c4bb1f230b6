"""Where quantizers go: fused groups, aliases of data-movement ops, weight axes and RNN rules.

The rules are described in `model.py` (design §3); `PlacementMixin` is mixed into `ModelIndex`.
"""
from __future__ import annotations

import onnx

from .walk import DEFAULT_DOMAINS, _walk

# Ops whose float output only moves or selects values of input 0, so it reuses input 0's encoding.
# Concat is handled apart (only when all its float inputs are already quantized).
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
}
# Recurrent ops: W [dirs, gates*hidden, input] and R [dirs, gates*hidden, hidden] are weights per
# output channel on axis 1 (one channel per gate row, shared by both directions); B [dirs,
# 2*gates*hidden] adds two biases of different inputs, so it is an int32 bias with its own scale.
RNN_OPS = frozenset({"LSTM", "GRU", "RNN"})


class PlacementMixin:
    """Mixed into ModelIndex; uses its tensors, nodes, constants, existing encodings and `_add`."""

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
