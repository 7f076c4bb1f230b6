"""Re-simulate only what lies downstream of a change.

The simulation graph (`Simulator.model`) is cut at a few points along its node order. The tail
from cut k onwards is a model of its own whose inputs are the tensors the head hands over (the
*frontier*), the graph inputs the tail reads, and the fake quantizers' parameters. A reference run
of the whole graph keeps every frontier's values; a variant that differs from that reference only
in feeds read at or after cut k (one group's quantizers, in sensitivity or the search) then runs
the tail alone, on the kept values: the same ops on the same numbers, a fraction of the work.

Cuts are placed at equal shares of the graph's estimated work (multiply-accumulates, and the size
of every other op's output). Tails are built when first used. Graphs with control flow (whose
bodies read outer tensors by name) are not cut.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .cost import op_macs

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
MAX_CUTS = 16


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
                 batch: int = 1, refresh: bool = False):
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
        self.frontiers: dict[int, list[str]] = {c: self._frontier(c) for c in self.cuts}
        self._sessions: dict[int, object] = {}
        self._whole = None

    def _place(self, index, batch: int, count: int) -> list[int]:
        macs = op_macs(index)
        work = np.array([max(macs.get(n.name, 0), _numel(index, n.output[0], batch) if n.output else 1, 1)
                         for n in self.nodes], dtype=np.float64)
        total = np.cumsum(work)
        cuts = sorted({int(np.searchsorted(total, total[-1] * k / (count + 1))) for k in range(1, count + 1)})
        return [c for c in cuts if 0 < c < len(self.nodes)]

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

    def run(self, cut: int, kept: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs, running the tail from `cut` on `kept` frontier values and `feeds`."""
        values = self.run_tail(cut, kept, feeds)
        return [values[o] if o in values else kept[o] for o in self.outputs]

    def run_tail(self, cut: int, kept: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the tail from `cut` makes, by name: the outputs made there and, with `refresh`, the
        later cuts' frontier tensors (so the run can serve as the next reference)."""
        session, names, own = self._tail(cut, kept)
        tail_feeds = {k: v for k, v in feeds.items() if k in names}
        tail_feeds.update({t: kept[t] for t in self.frontiers[cut] if t in names})
        return dict(zip(own, session.run(own, tail_feeds))) if own else {}

    def _tail(self, cut: int, kept: dict[str, np.ndarray]):
        if cut not in self._sessions:
            graph = self.model.graph
            nodes = self.nodes[cut:]
            read = {x for n in nodes for x in n.input if x}
            frontier = [t for t in self.frontiers[cut] if t in read]
            made = {y for n in nodes for y in n.output if y}
            inputs = [vi for vi in graph.input if vi.name in read]
            inputs += [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(kept[t].dtype), None)
                       for t in frontier]
            inits = [t for t in graph.initializer if t.name in read]
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
            self._sessions[cut] = (self._make_session(model), {vi.name for vi in inputs}, own)
        return self._sessions[cut]
