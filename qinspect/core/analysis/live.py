"""The live error: `Comparer` keeps the inputs and float activations of a few samples, so the
window can re-run a comparison after an edit; see `Comparer.update` for what is reused (the tensors
at the simulation's cut points, within `KEPT_BUDGET`; float activations beyond `FLOAT_BUDGET` go to
disk)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import onnx

from ..progress import NullProgress, Progress, check_cancel
from ..quant.encoding import Encoding
from ..quant.qparams import complete_encodings
from .compare import (
    Comparison,
    TensorError,
    _activation_names,
    _Batches,
    _comparison,
    _constant_errors,
    _float_session,
    _Run,
    _run_float,
    data_outputs,
)
from .segments import Segments
from .simulate import Simulator, make_session


class Comparer:
    """Float vs quantized on a few cached samples, cheap to re-run after an edit.

    The constructor runs the float model once on the first `samples` samples of `data` and keeps
    their inputs and float activations. `update(encodings)` then:

    - re-quantizes only the weights and biases whose encoding changed (numpy, no session run);
    - recomputes local SQNRs only for changed activations (numpy on the cached float values);
    - re-runs the quantized model on the cached inputs and recomputes the end-to-end errors of the
      tensors downstream of a change (upstream tensors cannot be affected, so theirs are reused).
      Only the graph from the last cut point before the first changed quantizer runs: the last
      run's tensors at the cut points (`segments`, within `KEPT_BUDGET`) stand in for the rest;
    - keeps its onnxruntime session when every changed tensor stays of the same kind (integer of
      any bitwidth, float16 or float32): only the fed scales, zero points and weights change. A
      change of kind, or of a constant inside a control-flow subgraph, rebuilds the session.
    """

    def __init__(self, index, data, samples: int | None = 16, *, batch_size: int = 8, providers=None,
                 progress: Progress | None = None, float_budget: int | None = None):
        self.index = index
        self._spill = _Spill(FLOAT_BUDGET if float_budget is None else float_budget)
        self.providers = providers or ["CPUExecutionProvider"]
        progress = progress or NullProgress()
        self.names = _activation_names(index)
        self.outputs, self.notes = data_outputs(index, data)
        self.wanted = list(dict.fromkeys(self.names + self.outputs))
        batches = _Batches(data, samples, batch_size)
        session = _float_session(index, self.wanted, self.providers)
        self._batches: list[tuple[int, dict, np.ndarray | None]] = []
        self._float: list[dict[str, np.ndarray]] = []
        done = 0
        progress.update(0, batches.total, "running the float model")
        for count, feeds, labels in batches:
            check_cancel(progress)
            self._batches.append((count, feeds, labels))
            self._float.append(self._spill.keep(_run_float(session, feeds, self.wanted)))
            done += count
            progress.update(done, batches.total, "running the float model")
        self.samples = done
        self._downstream = _downstream_map(index)
        self._sim: Simulator | None = None
        self._segments = None      # cut points of the simulation graph (see `segments`)
        self._kept: list[dict] | None = None  # per batch: the last run's tensors at the cuts
        self._allowed: set[int] = set()  # the cuts whose tensors are kept (within KEPT_BUDGET)
        self._kept_feeds: dict = {}  # the feeds that run had
        self._encodings: dict[str, Encoding] = {}
        self._tensors: dict[str, TensorError] = {}
        self._constants: dict[str, TensorError] = {}
        self.comparison: Comparison | None = None
        self.last_update: dict = {}

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
        self._spill.close()

    def update(self, encodings: dict[str, Encoding], changed=None, *,
               progress: Progress | None = None) -> Comparison:
        """Compare with `encodings`. The tensors whose encoding changed since the last update are
        found by comparing; `changed` adds tensors to treat as changed anyway. `last_update` then
        tells what was recomputed."""
        started = time.perf_counter()
        progress = progress or NullProgress()
        encodings = complete_encodings(self.index, encodings)
        first = self.comparison is None  # nothing to reuse yet (or the first update was cancelled)
        # What really changed is found by comparing encodings: an edit also moves the biases that
        # follow their inputs and whatever a target rule ties to the edited tensor. `changed` can
        # only add to that (a tensor the caller wants re-measured).
        keys = set(encodings) | set(self._encodings)
        changed = {n for n in keys if encodings.get(n) != self._encodings.get(n)} | set(changed or ())
        if self._sim is None:
            self._sim = Simulator(self.index, encodings, names=self.wanted, providers=self.providers)
            rebuilt = True
        else:
            rebuilt = self._sim.set_encodings(encodings)
        new = self._sim.encodings
        constants = [n for n in self.index.weights() + self.index.biases() if first or n in changed]
        constant_errors = {**self._constants, **_constant_errors(self.index, new, constants)}
        if first or rebuilt:
            affected = list(self.wanted)
        else:
            reach = self._downstream(changed)
            affected = [n for n in self.wanted if n in reach]
        run = _Run(self.index, new, [n for n in affected if n in self.names],
                   [n for n in self.outputs if n in affected])
        progress.update(0, self.samples, "running the quantized model")
        done = 0
        cut, kept = None, []
        if affected:
            segments = self._segments_for(rebuilt)
            if segments is not None and self._kept is not None and not rebuilt:
                moved = [k for k, v in self._sim.feeds.items() if self._kept_feeds.get(k) is not v]
                moved += [k for k in self._kept_feeds if k not in self._sim.feeds]
                cut = segments.cut_for(moved, self._allowed) if moved else None
            for i, ((count, feeds, labels), f) in enumerate(zip(self._batches, self._float)):
                check_cancel(progress)  # a cancelled update changes nothing: state is set below
                values = self._run_batch(segments, cut, i, feeds)
                kept.append(values)
                run.add(f, {n: values[self._sim._read_as[n]] for n in affected}, count, labels)
                done += count
                progress.update(done, self.samples, "running the quantized model")
            if segments is not None:
                if self._kept is None:  # the first run: which cuts' tensors the budget can keep
                    self._allowed, room = set(), KEPT_BUDGET
                    for c in reversed(segments.cuts):  # the latest first: most edits land late, and cheaply
                        size = sum(v[t].nbytes for v in kept for t in segments.frontiers[c])
                        if size <= room:
                            self._allowed.add(c)
                            room -= size
                wanted = {t for c in self._allowed for t in segments.frontiers[c]}
                self._kept = [{t: v[t] for t in wanted} for v in kept]
                self._kept_feeds = self._sim.feeds
        tensors = {**self._tensors, **run.tensors()}
        comparison = _comparison(run, {n: tensors[n] for n in self.names}, dict(constant_errors),
                                 constants, self.samples, started)
        previous = self.comparison
        if previous is not None:
            comparison.outputs = {**previous.outputs, **comparison.outputs}
            comparison.values = {**previous.values, **comparison.values}
            if run.labelled == 0:
                comparison.accuracy_float = previous.accuracy_float
                comparison.accuracy_quantized = previous.accuracy_quantized
        self._encodings, self._tensors, self._constants = new, tensors, constant_errors
        self.comparison = comparison
        self.last_update = {"changed": sorted(changed), "rerun": affected, "rebuilt": rebuilt,
                            "from_cut": cut, "nodes": len(self._segments.nodes) if self._segments else None,
                            "constants": constants}
        return comparison

    def _segments_for(self, rebuilt: bool):
        """The simulation graph's cut points (new after a rebuild), or None for a graph not cut."""

        if self._segments is None or rebuilt:
            sim = self._sim
            batch = max((c for c, _, _ in self._batches), default=1)
            self._segments = Segments(sim.model, self.index, [sim._read_as[n] for n in self.wanted],
                                      lambda m: make_session(m, self.providers, None, "a part of the simulation"),
                                      batch=batch, refresh=True)
            self._kept, self._allowed = None, set()
        return self._segments if self._segments.cuts else None

    def _run_batch(self, segments, cut, i, feeds) -> dict:
        """One batch of the quantized model: whole, or from `cut` on the last run's kept tensors; by
        the simulation graph's names, the kept tensors included."""
        sim = self._sim
        if segments is None:
            names = [sim._read_as[n] for n in self.wanted]
            return dict(zip(names, sim.run(feeds, self.wanted)))
        if cut is None:
            return segments.run_all({**feeds, **sim.feeds})
        return {**self._kept[i], **segments.run_tail(cut, self._kept[i], {**feeds, **sim.feeds})}


KEPT_BUDGET = 512 << 20  # bytes of the last run's tensors a Comparer keeps to re-run only a tail
FLOAT_BUDGET = 1 << 30  # bytes of float activations a Comparer holds in memory; the rest go to disk


class _Spill:
    """Arrays held in memory up to a budget, then written to a temporary folder and read back
    memory-mapped (the page cache keeps the hot ones): a big model's float activations on 16
    samples can be gigabytes."""

    def __init__(self, budget: int):
        self.budget, self.held, self.folder, self.spilled = budget, 0, None, 0

    def keep(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, a in arrays.items():
            if self.held + a.nbytes <= self.budget or a.nbytes == 0:
                self.held += a.nbytes
                out[name] = a
                continue
            if self.folder is None:
                self.folder = tempfile.mkdtemp(prefix="qinspect-float-")
            path = os.path.join(self.folder, f"{self.spilled}.npy")
            np.save(path, a)
            out[name] = np.load(path, mmap_mode="r")
            self.spilled += 1
        return out

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _downstream_map(index):
    """A function: tensor names -> the tensors whose quantized value can change when their encodings do
    (themselves, and every output of a main-graph node that reads them, directly or in a subgraph)."""
    owner: dict[str, onnx.NodeProto] = {}  # any node name -> the main-graph node that runs it

    def claim(node, top):
        owner[node.name] = top
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                for sub in g.node:
                    claim(sub, top)

    for node in index.model.graph.node:
        claim(node, node)

    def reach(names) -> set[str]:
        out, todo = set(names), list(names)
        while todo:
            info = index.tensors.get(todo.pop())
            for consumer in (info.consumers if info else ()):
                top = owner.get(consumer)
                for o in (top.output if top is not None else ()):
                    if o and o not in out:
                        out.add(o)
                        todo.append(o)
        return out

    return reach
