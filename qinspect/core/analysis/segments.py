"""Re-simulate only what lies downstream of a change.

The simulation graph (`Simulator.model`) is cut at a few points along its node order. The tail
from cut k onwards is a model of its own whose inputs are the tensors the head hands over (the
*frontier*), the graph inputs the tail reads, and the fake quantizers' parameters. A reference run
of the whole graph keeps every frontier's values; a variant that differs from that reference only
in feeds read at or after cut k (one group's quantizers, in sensitivity or the search) then runs
the tail alone, on the kept values: the same ops on the same numbers, a fraction of the work.

Cuts are placed where changes start (the first readers of the quantizer parameters and weights),
one at a time where each saves the most work between a change and the cut before it; a graph with
no such inputs is cut at equal shares of its estimated work. Tails are built when first used.
Graphs with control flow (whose bodies read outer tensors by name) are not cut.

A tail can also be built for one reference (`run(..., strip=...)`, sensitivity's plan and
all-float references). Beyond the tail's first segment (up to the next cut) the reference's
pass-through quantizers are removed (an identity block returns its input exactly, see
`Simulator.set_encodings`), its fixed 8-bit quantizers become QuantizeLinear/DequantizeLinear pairs
(`_as_qdq`), and its weights become constants onnxruntime can pack. A variant that changes none of
those runs on it: the same numbers for a fraction of the work, since the fake quantizers and the
fed weights are most of a simulated graph's cost.
"""
from __future__ import annotations

import threading

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .cost import op_macs
from .simulate import PARAM, PASS_SCALE

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
MAX_CUTS = 16
PER_OP = 16384  # an op's launch cost in values of elementwise work, for placing cuts


def _numel(index, name: str, batch: int) -> int:
    info = index.tensors.get(name)
    shape = getattr(info, "shape", None) or ()
    n = 1
    for i, d in enumerate(shape):
        n *= d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1)
    return n


class Segments:
    """Cut points of a simulation graph, their frontiers and (lazily) their tail sessions."""

    def __init__(self, model: onnx.ModelProto, index, outputs: list[str], make_session, *, cuts: int = MAX_CUTS,
                 batch: int = 1, refresh: bool = False, from_start: bool = False):
        """`from_start`: node 0 is a cut too (its tail, the whole graph, can be stripped)."""
        graph = model.graph
        self.model, self.outputs, self._make_session = model, list(outputs), make_session
        self.refresh = refresh
        self.nodes = list(graph.node)
        self.inputs = {vi.name for vi in graph.input}
        produced_at: dict[str, int] = {}
        self.first_use: dict[str, int] = {}  # graph input -> position of its first reader
        ordered = True
        inits = {t.name for t in graph.initializer}
        for i, node in enumerate(self.nodes):
            for x in node.input:
                if x and x not in self.inputs and x not in produced_at and x not in inits:
                    ordered = False
                if x in self.inputs and x not in self.first_use:
                    self.first_use[x] = i
            for y in node.output:
                produced_at[y] = i
        self.produced_at = produced_at
        usable = ordered and not any(n.op_type in CONTROL_FLOW for n in self.nodes)
        self.cuts: list[int] = self._place(index, batch, cuts) if usable else []
        if usable and from_start:
            self.cuts.insert(0, 0)
        self.frontiers: dict[int, list[str]] = {c: self._frontier(c) for c in self.cuts}
        self._sessions: dict[tuple, object] = {}  # (cut, single) -> (session, input names, what it makes)
        # graph inputs with an initializer: the weights the simulation feeds
        self.weights = {t.name for t in graph.initializer if t.name in self.inputs}
        self._stripped: dict[tuple, tuple] = {}   # (cut, key, single) -> (token, inputs it fixes, tail)
        self.blocks = self._blocks()
        # A model with quantizers of its own keeps onnxruntime's QDQ fusions for them: ours are
        # then never written as QuantizeLinear/DequantizeLinear pairs, which would turn them off.
        self._qdq_ok = not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in self.nodes)
        self._lock = threading.Lock()
        self._whole = None

    def _place(self, index, batch: int, count: int) -> list[int]:
        macs = op_macs(index)
        work, last = [], 1
        for n in self.nodes:
            # A fake quantizer's nodes write tensors the index does not know: they are the size of
            # the tensor before them. Every op also costs a fixed amount to launch (PER_OP values'
            # worth), which made a detector's decode head, many small ops, a tail of half a pass.
            size = _numel(index, n.output[0], batch) if n.output and n.output[0] in index.tensors else last
            last = size
            work.append(max(macs.get(n.name, 0), size, 1) + PER_OP)
        work = np.array(work, dtype=np.float64)
        total = np.cumsum(work)
        before = np.concatenate([[0.0], total])  # work before node i
        # Where changes start: the first readers of the graph's inputs (quantizer parameters,
        # weights). A change at q runs the tail from the last cut c <= q: work from c to q is
        # wasted. Cuts are chosen one at a time, each where it saves the most of that waste.
        # A quantizer's parameters are first read by its block, right after the op that makes its
        # tensor: the change starts at that op (which also reads the group's weight, if any).
        starts = {i - 1 if x.startswith(PARAM) else i for x, i in self.first_use.items()}
        starts = np.array(sorted(i for i in starts if 0 < i < len(self.nodes)), dtype=np.int64)
        if starts.size == 0:
            cuts = sorted({int(np.searchsorted(total, total[-1] * k / (count + 1))) for k in range(1, count + 1)})
            return [c for c in cuts if 0 < c < len(self.nodes)]
        at = before[starts]
        current = np.zeros(starts.size)  # work before each start's cut (none yet: the graph's start)
        cuts: list[int] = []
        for _ in range(count):
            # gain of a cut at candidate j: for every start q >= j whose cut lies before j,
            # the work between its cut and j
            gains = np.where(starts[None, :] >= starts[:, None], np.maximum(at[:, None] - current[None, :], 0), 0).sum(1)
            j = int(np.argmax(gains))
            if gains[j] <= 0:
                break
            cuts.append(int(starts[j]))
            current = np.where(starts >= starts[j], np.maximum(current, at[j]), current)
        return sorted(cuts)

    def _frontier(self, cut: int) -> list[str]:
        """Tensors made before `cut` that nodes from `cut` on (or the outputs) read."""
        made = set()
        for node in self.nodes[:cut]:
            made.update(y for y in node.output if y)
        wanted = []
        for node in self.nodes[cut:]:
            for x in node.input:
                if x in made and x not in wanted:
                    wanted.append(x)
        for o in self.outputs:
            if o in made and o not in wanted:
                wanted.append(o)
        return wanted

    def exposed(self) -> list[str]:
        """Every frontier tensor: what a reference run keeps."""
        out = []
        for c in self.cuts:
            out.extend(t for t in self.frontiers[c] if t not in out)
        return out

    def cut_for(self, changed, available) -> int | None:
        """The latest cut among `available` at or before the first reader of any `changed` graph
        input, or None (run the whole graph)."""
        first = min((self.first_use.get(name, 0) for name in changed), default=None)
        if first is None:
            return None
        best = None
        for c in self.cuts:
            if c <= first and c in available:
                best = c
        return best

    def run_all(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The whole graph on `feeds`: the outputs and every frontier tensor, by name."""
        if self._whole is None:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            have = {o.name for o in model.graph.output}
            model.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in self.exposed() if t not in have)
            names = {vi.name for vi in model.graph.input}
            self._whole = (self._make_session(model), names, [o.name for o in model.graph.output])
        session, names, outs = self._whole
        return dict(zip(outs, session.run(outs, {k: v for k, v in feeds.items() if k in names})))

    def _blocks(self) -> list[tuple[int, int, frozenset]]:
        """The fake quantizers' cores (Div .. Mul, see `Simulator._int_block`): (first node, node
        count, parameter names)."""
        found = []
        for i, node in enumerate(self.nodes):
            if node.op_type != "Div" or len(node.input) < 2 or not node.input[1].startswith(PARAM) \
                    or not node.input[1].endswith("::scale"):
                continue
            size = 4 if i + 2 < len(self.nodes) and self.nodes[i + 2].op_type == "Clip" else 6
            core = self.nodes[i:i + size]
            if len(core) != size or core[-1].op_type != "Mul" or any(
                    core[k].input[0] != core[k - 1].output[0] for k in range(1, size)):
                continue
            found.append((i, size, frozenset(x for n in core for x in n.input if x.startswith(PARAM))))
        return found

    def run(self, cut: int, kept: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
            single: bool = False, strip=None) -> list[np.ndarray]:
        """The outputs, running the tail from `cut` on `kept` frontier values and `feeds`. `strip`:
        (key, token, the reference's feeds, changed input names), to run on the tail stripped of
        the reference's identity quantizers where the change allows (see the module doc)."""
        tail = self._stripped_tail(cut, kept, single, *strip) if strip is not None else None
        values = self.run_tail(cut, kept, feeds, single, tail)
        return [values[o] if o in values else kept[o] for o in self.outputs]

    def _stripped_tail(self, cut: int, kept, single: bool, key, token, reference: dict, changed):
        slot = (cut, key, single)
        with self._lock:  # built once per reference (`token`), whichever thread asks first
            entry = self._stripped.get(slot)
            if entry is None or entry[0] is not token:
                entry = self._stripped[slot] = (token, *self._build_stripped(cut, kept, single, reference))
        _, fixed, tail = entry
        if tail is None or any(name in fixed for name in changed):
            return None
        return tail

    def _build_stripped(self, cut: int, kept, single: bool, reference: dict):
        """(the inputs it fixes, the tail) for a reference: beyond the tail's first segment, its
        identity quantizers are gone, its 8-bit ones are QuantizeLinear/DequantizeLinear pairs
        (see `_as_qdq`), and its weights are constants with the reference's values (fed weights
        keep onnxruntime from packing them for its blocked convolutions)."""
        later = [c for c in self.cuts if c > cut]
        end = later[0] if later else len(self.nodes)
        skip, nodes, fixed, extra = set(), list(self.nodes), set(), []
        for i, size, params in self.blocks:
            if i < end:
                continue
            scale = reference.get(next(p for p in params if p.endswith("::scale")))
            src, dst = self.nodes[i].input[0], self.nodes[i + size - 1].output[0]
            if scale is not None and float(np.asarray(scale).reshape(-1)[0]) == PASS_SCALE:
                replacement = [helper.make_node("Identity", [src], [dst])]
            else:
                replacement = self._as_qdq(i, size, params, reference, src, dst, extra) if self._qdq_ok else None
            if replacement is None:
                continue
            skip.update(range(i, i + size))
            nodes[i + size - 1] = replacement  # a list: spliced below
            fixed |= params
        nodes = [n for k, n in enumerate(nodes) if k not in skip or isinstance(n, list)]
        nodes = [m for n in nodes for m in (n if isinstance(n, list) else [n])]
        nodes = nodes[sum(1 for k in range(cut) if k not in skip):]
        read = {x for n in nodes for x in n.input if x}
        weights = {w for w in self.weights if w in read and not cut <= self.first_use.get(w, -1) < end}
        if not fixed and not weights:
            return frozenset(), None
        values = {w: reference[w] for w in weights if w in reference}  # the others keep their initializer
        fixed = frozenset(fixed) | weights
        return fixed, self._build_tail(cut, kept, single, nodes, weights, values, extra)

    def _as_qdq(self, i, size, params, reference, src, dst, extra):
        """A fixed per-tensor quantizer over the whole 8-bit range as QuantizeLinear ->
        DequantizeLinear (its ONNX definition: the same numbers, in two passes instead of four, the
        middle one a byte per value), or None. Its tails run with onnxruntime's QDQ fusions off
        (`session.disable_quant_qdq`), so the pair stays two plain ops."""
        if size != 4:
            return None
        name = next(p for p in params if p.endswith("::scale"))[:-len("::scale")]
        scale, lo, hi = (reference.get(name + "::" + k) for k in ("scale", "lo", "hi"))
        if scale is None or lo is None or hi is None or np.size(scale) != 1:
            return None
        lo, hi = float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0])
        if hi - lo != 255 or lo != int(lo):
            return None
        zp = np.array(-lo, np.uint8) if 0 <= -lo <= 255 else np.array(-128 - lo, np.int8) if -128 <= -128 - lo <= 127 else None
        if zp is None:
            return None
        s_name, z_name, q_name = f"{name}::qdq_scale", f"{name}::qdq_zp", f"{dst}::q"
        extra += [numpy_helper.from_array(np.asarray(scale, np.float32).reshape(()), s_name),
                  numpy_helper.from_array(zp, z_name)]
        return [helper.make_node("QuantizeLinear", [src, s_name, z_name], [q_name]),
                helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dst])]


    def run_tail(self, cut: int, kept: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                 single: bool = False, tail=None) -> dict[str, np.ndarray]:
        """What the tail from `cut` makes, by name: the outputs made there and, with `refresh`, the
        later cuts' frontier tensors (so the run can serve as the next reference). `single`: on a
        session of one thread, for callers that run several tails at once (any thread may call)."""
        session, names, own = tail if tail is not None else self._tail(cut, kept, single)
        tail_feeds = {k: v for k, v in feeds.items() if k in names}
        tail_feeds.update({t: kept[t] for t in self.frontiers[cut] if t in names})
        return dict(zip(own, session.run(own, tail_feeds))) if own else {}

    def _tail(self, cut: int, kept: dict[str, np.ndarray], single: bool = False):
        with self._lock:
            if (cut, single) not in self._sessions:
                self._sessions[(cut, single)] = self._build_tail(cut, kept, single)
            return self._sessions[(cut, single)]

    def _build_tail(self, cut: int, kept: dict[str, np.ndarray], single: bool, nodes=None,
                    constants=frozenset(), values=None, extra=()):
        """The tail from `cut` (or `nodes`) as (session, its input names, what it makes); the
        weights in `constants` are no inputs, with their value in `values` or their initializer's."""
        graph = self.model.graph
        nodes = self.nodes[cut:] if nodes is None else nodes
        values = values or {}
        read = {x for n in nodes for x in n.input if x}
        frontier = [t for t in self.frontiers[cut] if t in read]
        made = {y for n in nodes for y in n.output if y}
        inputs = [vi for vi in graph.input if vi.name in read and vi.name not in constants]
        inputs += [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(kept[t].dtype), None)
                   for t in frontier]
        inits = [numpy_helper.from_array(np.asarray(values[t.name], helper.tensor_dtype_to_np_dtype(t.data_type)),
                                         t.name) if t.name in values else t
                 for t in graph.initializer if t.name in read] + list(extra)
        own = [o for o in self.outputs if o in made]
        outputs = [vi for vi in graph.output if vi.name in own]
        if self.refresh:
            later = [t for c in self.cuts if c > cut for t in self.frontiers[c] if t in made and t not in own]
            own += list(dict.fromkeys(later))
            outputs += [helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(later)]
        outputs += [helper.make_empty_tensor_value_info(o) for o in own[:len(own)] if o not in {v.name for v in outputs}]
        tail = helper.make_graph(nodes, graph.name + f"_from_{cut}", inputs, outputs, initializer=inits)
        model = helper.make_model(tail, opset_imports=self.model.opset_import)
        model.ir_version = self.model.ir_version
        plain_qdq = bool(extra)  # our pairs must stay plain ops (see `_as_qdq`)
        session = self._make_session(model, 1 if single else 0, plain_qdq) if plain_qdq else (
            self._make_session(model, 1) if single else self._make_session(model))
        return session, {vi.name for vi in inputs}, own
