"""The simulation engine the analyses share: output error of many encodings on a few cached samples.

`OutputEvaluator` runs the float model once on the chosen samples and keeps its outputs. Each
`evaluate` runs the quantized simulation (`Simulator`: one onnxruntime session, kept whenever only
encodings of the same kind change). Sensitivity and the search try thousands of variants that each
differ from a *reference* (the plan; everything float; the search's current plan) in one group's
quantizers: `set_reference` runs the reference once and keeps the tensors at a few cut points
(`segments.Segments`, within `memory_budget` bytes), and `evaluate(..., reference=key)` then runs
only the part of the graph from the last cut before the first feed that differs.

Output SQNR over several outputs is ``-10 log10(mean over outputs of noise / signal)`` (see
`sensitivity`).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from ..progress import NullProgress, Progress, check_cancel
from ..quant.encoding import Encoding
from .compare import _Batches, _float_outputs, _float_session, _predictions, _run_float
from .segments import Segments
from .simulate import Simulator, make_session

MEMORY_BUDGET = 1 << 30  # bytes of kept reference tensors, all references together
# Each tail built for a reference holds its own copy of the weights it reads (constants, packed by
# onnxruntime): beyond this many bytes of weights times cuts, references are not specialised.
SPECIALISED_WEIGHTS_BUDGET = 2 << 30


def output_sqnr(signal, noise) -> float:
    """``-10 log10(mean(noise / signal))`` over outputs with a signal (see the module doc)."""
    ratios = [n / s for s, n in zip(signal, noise) if s > 0]
    if not ratios:
        return math.inf if all(n == 0 for n in noise) else -math.inf
    r = float(np.mean(ratios))
    if r == 0:
        return math.inf
    return -math.inf if math.isinf(r) else -10.0 * math.log10(r)


@dataclass
class _Reference:
    feeds: dict          # the simulator's parameter feeds then
    kept: list[dict]     # per batch: frontier tensor -> value (only cuts within the budget)
    cuts: set            # the cuts whose frontiers are all kept
    result: tuple        # (output SQNR, accuracy)
    structure: int       # the simulator's rebuild count then
    specialise: bool = False  # its variants run on tails built for it (see `set_reference`)


@dataclass
class _Tail:
    segments: Segments
    cut: int
    ref: _Reference
    feeds: dict          # the simulator's parameter feeds of the variant
    single: bool = False  # on one-thread sessions (several tails at once)
    strip: tuple | None = None  # see `Segments.run`


class OutputEvaluator:
    """Output SQNR (and top-1 accuracy when the data has labels) of encodings on a few cached samples."""

    def __init__(self, index, data, samples: int | None = 16, *, batch_size: int = 8, providers=None,
                 progress: Progress | None = None, memory_budget: int = MEMORY_BUDGET):
        progress = progress or NullProgress()
        self.index = index
        self.providers = providers or ["CPUExecutionProvider"]
        self.memory_budget = memory_budget
        self.outputs = _float_outputs(index)
        if not self.outputs:
            raise ModelError(f"{index.path or 'the model'} has no float output to measure the error on")
        batches = _Batches(data, samples, batch_size)
        session = _float_session(index, self.outputs, self.providers)
        self._batches: list[tuple[int, dict, np.ndarray | None]] = []
        self._float: list[list[np.ndarray]] = []
        self._signal = np.zeros(len(self.outputs))
        correct = labelled = 0
        for count, feeds, labels in batches:
            check_cancel(progress)
            values = _run_float(session, feeds, self.outputs)
            f = [np.asarray(values[o], np.float64) for o in self.outputs]
            self._batches.append((count, feeds, labels))
            self._float.append(f)
            for i, v in enumerate(f):
                v = v[np.isfinite(v)]
                self._signal[i] += float(v @ v)
            pred = _predictions(f[0], count) if labels is not None else None
            if pred is not None:
                correct += int((pred == labels).sum())
                labelled += count
        # per batch and output: (mask of finite float values or None when all are, those values flat)
        self._finite = [[(None, v.reshape(-1)) if np.isfinite(v).all() else
                         (np.isfinite(v).reshape(-1), v.reshape(-1)[np.isfinite(v).reshape(-1)]) for v in f]
                        for f in self._float]
        self.samples = sum(c for c, _, _ in self._batches)
        self.float_accuracy = correct / labelled if labelled else None
        self._sim: Simulator | None = None
        self._segments: Segments | None = None
        self._references: dict[str, _Reference] = {}
        self.runs = 0
        self.partial_runs = 0  # runs of a tail only
        self.work = 0.0        # share of the graph's nodes run, summed over runs (a full run counts 1)

    @property
    def rebuilds(self) -> int:
        return self._sim.rebuilds if self._sim is not None else 0

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
        self._references.clear()
        self._segments = None

    # -- runs --------------------------------------------------------------------------------------
    def _set(self, encodings, passthrough) -> None:
        if self._sim is None:
            self._sim = Simulator(self.index, encodings, names=self.outputs, providers=self.providers)
        self._sim.set_encodings(encodings, passthrough=passthrough)

    def _segments_now(self) -> Segments:
        sim = self._sim
        if self._segments is None or self._segments.structure != sim.rebuilds:
            self._references.clear()
            batch = max((c for c, _, _ in self._batches), default=1)
            self._segments = Segments(sim.model, self.index, [sim._read_as[o] for o in self.outputs],
                                      lambda m, threads=0, plain_qdq=False: make_session(
                                          m, self.providers, None, "a part of the simulation", threads, plain_qdq),
                                      batch=batch, from_start=True)
            self._segments.structure = sim.rebuilds
        return self._segments

    def set_reference(self, key: str, encodings: dict[str, Encoding], passthrough=(),
                      progress: Progress | None = None, specialise: bool = False) -> tuple[float, float | None]:
        """Run `encodings` on the whole graph and keep what later variants of it need; returns its
        (output SQNR, accuracy). `specialise`: its variants run on tails built for it (stripped of
        its pass-through quantizers, its weights constant: `Segments.run`), worth their build
        (~50 ms a cut on a detector) for a reference many variants share, as in sensitivity."""
        self._set(encodings, passthrough)
        segments = self._segments_now()
        exposed = segments.exposed()
        sim = self._sim
        names = [sim._read_as[o] for o in self.outputs]
        kept_all, q_all = [], []
        for count, feeds, labels in self._batches:
            if progress is not None:
                check_cancel(progress)
            by_name = segments.run_all({**feeds, **sim.feeds})
            q_all.append([by_name[n] for n in names])
            kept_all.append({t: by_name[t] for t in exposed})
        self.runs += 1
        self.work += 1.0
        result = self._score(q_all)
        used = sum(r.kept and sum(v.nbytes for b in r.kept for v in b.values()) or 0
                   for k, r in self._references.items() if k != key)
        cuts, room = set(), self.memory_budget - used
        for cut in reversed(segments.cuts):  # the latest cuts first: most changes lie late and they are small
            size = sum(b[t].nbytes for b in kept_all for t in segments.frontiers[cut])
            if size <= room:
                cuts.add(cut)
                room -= size
        wanted = {t for c in cuts for t in segments.frontiers[c]}
        kept = [{t: v for t, v in b.items() if t in wanted} for b in kept_all]
        if specialise:
            weights = sum(sim.feeds[w].nbytes for w in segments.weights if w in sim.feeds)
            specialise = weights * max(len(segments.cuts), 1) <= SPECIALISED_WEIGHTS_BUDGET
        self._references[key] = _Reference(dict(sim.feeds), kept, cuts, result, sim.rebuilds, specialise)
        return result

    def evaluate(self, encodings: dict[str, Encoding], passthrough=(), progress: Progress | None = None,
                 reference: str | None = None) -> tuple[float, float | None]:
        """(output SQNR in dB, top-1 accuracy or None) of `encodings`, with the activation quantizers
        named in `passthrough` run as float32. With `reference` (a key given to `set_reference`),
        only the graph downstream of where the two differ runs."""
        job = self._prepare(encodings, passthrough, progress, reference)
        return job if not isinstance(job, _Tail) else self._run_tail(job, progress)

    def evaluate_all(self, variants, reference: str, progress: Progress | None = None, on_result=None) -> list:
        """`evaluate(encodings, passthrough, reference=reference)` of every (encodings, passthrough)
        in `variants` (any iterable), in order; `on_result(i, result)` is called in this thread as
        each is known.

        Tails run several at once (one per core, up to 4), each on a one-thread session: a
        simulation graph has many small elementwise ops (the fake quantizers), whose work
        onnxruntime splits across its threads at a cost per op. On 2 cores, two one-thread runs of
        a YOLO-style detector's whole simulation side by side took 171 ms against 114-130 ms for
        one two-thread run; with stripped and baked tails (see `segments`) the gain is smaller:
        sensitivity 0.97x of the bench's floor against 1.17-1.21x one tail at a time."""
        workers = min(os.cpu_count() or 1, 4)
        results: list = []
        if workers < 2:
            for i, (enc, passthrough) in enumerate(variants):
                results.append(self.evaluate(enc, passthrough, progress, reference))
                if on_result is not None:
                    on_result(i, results[-1])
            return results

        def finish(done) -> None:
            for future in done:
                i = pending.pop(future)
                results[i] = future.result()
                if on_result is not None:
                    on_result(i, results[i])

        pending: dict = {}
        with ThreadPoolExecutor(workers, thread_name_prefix="qinspect-tail") as pool:
            try:
                for i, (enc, passthrough) in enumerate(variants):
                    results.append(None)
                    job = self._prepare(enc, passthrough, progress, reference)
                    if not isinstance(job, _Tail):
                        results[i] = job
                        if on_result is not None:
                            on_result(i, job)
                        continue
                    job.single = True
                    pending[pool.submit(self._run_tail, job, None)] = i
                    if len(pending) >= 2 * workers:  # a bounded queue: variants are made as tails finish
                        finish(wait(pending, return_when=FIRST_COMPLETED).done)
                    if progress is not None:
                        check_cancel(progress)
                while pending:
                    finish(wait(pending, return_when=FIRST_COMPLETED).done)
                    if progress is not None:
                        check_cancel(progress)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return results

    def _prepare(self, encodings, passthrough, progress, reference):
        """Set `encodings`; the result when it is known here (a reference's, or a whole run's), else
        the tail to run (`_Tail`, which holds what it needs: later settings do not change it)."""
        self._set(encodings, passthrough)
        sim = self._sim
        ref = self._references.get(reference) if reference is not None else None
        if ref is not None and ref.structure == sim.rebuilds and self._segments is not None \
                and self._segments.structure == sim.rebuilds:
            feeds = sim.feeds
            changed = [k for k, v in feeds.items() if not _same(ref.feeds.get(k), v)]
            changed += [k for k in ref.feeds if k not in feeds]
            if not changed:
                return ref.result
            cut = self._segments.cut_for(changed, ref.cuts)
            if cut is not None:
                self.runs += 1
                self.partial_runs += 1
                self.work += 1.0 - cut / max(len(self._segments.nodes), 1)
                strip = (reference, ref, ref.feeds, set(changed)) if ref.specialise else None
                return _Tail(self._segments, cut, ref, feeds, strip=strip)
        q_all = []
        for count, feeds, labels in self._batches:
            if progress is not None:
                check_cancel(progress)
            q_all.append(sim.run(feeds, self.outputs))
        self.runs += 1
        self.work += 1.0
        return self._score(q_all)

    def _run_tail(self, job: "_Tail", progress) -> tuple[float, float | None]:
        q_all = []
        for (count, feeds, labels), kept in zip(self._batches, job.ref.kept):
            if progress is not None:
                check_cancel(progress)
            q_all.append(job.segments.run(job.cut, kept, {**feeds, **job.feeds}, job.single, job.strip))
        return self._score(q_all)

    def _score(self, q_all) -> tuple[float, float | None]:
        noise = np.zeros(len(self.outputs))
        correct = labelled = 0
        for (count, feeds, labels), f, q in zip(self._batches, self._finite, q_all):
            for i, ((ok, fv), qv) in enumerate(zip(f, q)):
                qv = np.asarray(qv, np.float64).reshape(-1)
                if ok is not None:
                    qv = qv[ok]
                err = qv - fv
                e2 = float(err @ err)
                noise[i] = math.inf if not math.isfinite(e2) else noise[i] + e2
            if labels is not None:
                pred = _predictions(np.asarray(q[0]), count)
                if pred is not None:
                    correct += int((pred == labels).sum())
                    labelled += count
        return output_sqnr(self._signal, noise), (correct / labelled if labelled else None)


def _same(a, b) -> bool:
    if a is b:
        return True
    if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b))
