"""Calibration: run onnxruntime over the data and reduce every activation to streaming statistics.

One session exposes the activations as extra outputs; each batch's outputs are reduced at once to
`TensorStats` and dropped, so memory does not grow with the number of samples. When exposing every
tensor at once would need too much memory for one batch, the tensors are split into groups and the
data is run once per group.

With subsampled histograms, a tensor that is a scalar op of another (x + c, x * c, ...) gets its
statistics from that tensor's without being read (`derive`), bit-identical to reading it.

Tensors inside If/Loop/Scan subgraphs are carried out to main-graph outputs by `lift` (a Loop or
Scan stacks them over its iterations). What cannot be calibrated is listed per tensor in
`CalibrationResult.skipped` with the reason: a branch that never ran on the data, a loop tensor
whose shape changes between iterations (onnxruntime cannot stack it), a subgraph of another op.
`CalibrationResult.warnings` adds one line per tensor whose range is blown up (attention masks,
outliers: see `diagnostics`) and per model output whose real shape contradicts its declared one.
"""
from __future__ import annotations

import contextlib
import os
import queue
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .derive import scalar_affine
from ..errors import DataError, ModelError
from ..progress import NullProgress, Progress, check_cancel
from ..quant.stats import DEFAULT_BINS, TensorStats, update_all

# Activation bytes of one batch that may be exposed at once; larger models run in several passes.
DEFAULT_GROUP_BYTES = 1 << 30
# Values of each tensor per batch that go into its histogram (a fixed-stride subsample; count, min,
# max and NaN/Inf counts stay exact). Binning every value costs 2-4x the inference itself on large
# activations; None bins every value (exact histograms). See bench/README.md for what it does to ranges.
DEFAULT_HISTOGRAM_SAMPLE = 16384
_TWO_GB = 2**31 - 1


@dataclass
class CalibrationResult:
    stats: dict[str, TensorStats]  # activations from the data, weights and biases from their values
    samples: int
    passes: int = 1
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)  # tensor -> why it has no statistics
    histogram_sample: int | None = None  # values per tensor per batch binned; None: every value
    warnings: list[str] = field(default_factory=list)  # one line each: blown-up ranges, output shapes
    diagnostics: list = field(default_factory=list)    # diagnostics.RangeWarning of tensors to look at


def available_providers() -> list[str]:
    return ort.get_available_providers()


def _estimate_bytes(info, batch: int) -> int:
    """Bytes of one batch of a tensor; unknown dims count as the batch (first) or 64."""
    if info is None or info.shape is None:
        return 4 << 20
    n = 1
    for i, d in enumerate(info.shape):
        n *= d if isinstance(d, int) and d > 0 else (batch if i == 0 else 64)
    itemsize = np.dtype(info.dtype).itemsize if info.dtype is not None else 4
    return n * itemsize


def plan_groups(index, names: list[str], batch: int, budget: int = DEFAULT_GROUP_BYTES) -> list[list[str]]:
    """Split tensors into groups whose outputs of one batch fit in `budget` bytes."""
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        size = _estimate_bytes(index.tensors.get(name), batch)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return [g for g in groups if g]


def _session(index, names: list[str], providers, workdir: str):
    """A session exposing `names`; returns (session, output name by tensor, reason by refused tensor).

    Main-graph tensors are added as outputs; subgraph tensors are carried out by `lift`.
    """
    from ..graph.lift import lift

    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    graph = model.graph
    elem = {n: helper.np_dtype_to_tensor_dtype(np.dtype(index.tensors[n].dtype)) for n in names}
    rank = {n: len(index.tensors[n].shape) for n in names if index.tensors[n].shape is not None}
    read, refused = lift(model, names, elem, rank)
    existing = {o.name for o in graph.output}
    for name, out in read.items():
        if out == name and name not in existing:
            graph.output.append(helper.make_tensor_value_info(name, elem[name], None))
            existing.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as exceptions, reported in one line
    # Statistics run between batches on every core; onnxruntime's idle threads must not spin on them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return make_session(model, providers, workdir, index, options=options), read, refused


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _stats_pool() -> tuple[ThreadPoolExecutor | None, int]:
    """Threads that share the statistics of a batch with the calibrating thread (one per extra
    core, at most 3), created once and kept for the process; none on two cores or fewer.

    On two cores a second statistics thread bought nothing: reading a batch's outputs is bound by
    memory bandwidth, which one core fills, and the two threads' many short numpy calls then wait
    for each other's GIL (the MobileNet-style benchmark's statistics took 3.4 ms per batch on two
    threads, 3.0 on one). The second core is better spent reading the next batch of data ahead
    (`_prefetched`), on the weights' statistics and on onnxruntime's own second thread."""
    global _POOL
    parts = min(os.cpu_count() or 1, 4)
    if parts <= 2:
        return None, 1
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="qinspect-stats")
    return _POOL, parts


def ort_reason(exc: BaseException) -> str:
    """onnxruntime's message without its error code and C++ source location, on one line."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^/\S+:\d+ [^(]*\([^)]*\)(?: const)? ", "", text)  # "file.h:46 void f(args) "
    return text if len(text) <= 300 else text[:297] + "..."


def runtime_problem(label: str, exc: BaseException) -> ModelError:
    """A one-line ModelError for a model onnxruntime refuses, with what to do about it."""
    reason = ort_reason(exc)
    full = " ".join(str(exc).split())
    too_new = re.search(r"official support for domain ai\.onnx is till opset (\d+)", full)
    if too_new:
        m = re.search(r"Opset (\d+)", full)
        have = f"opset {m.group(1)}" if m else "an opset"
        return ModelError(f"{label} uses {have}, newer than this onnxruntime runs (up to opset {too_new.group(1)}): "
                          f"export it at opset {too_new.group(1)} or lower, or upgrade onnxruntime")
    return ModelError(f"{label}: onnxruntime cannot run it ({reason}); check that its ops and opset are "
                      f"supported by onnxruntime {ort.__version__}, or re-export it")


def make_session(model: onnx.ModelProto, providers, workdir: str | None, index=None, *,
                 options: ort.SessionOptions | None = None, name: str = "calibration") -> ort.InferenceSession:
    """An onnxruntime session of `model` (a proto). Tensor data left in the input model's external
    files is read by onnxruntime from there (never copied); a proto over 2 GB goes through a file."""
    label = (index.path if index is not None else None) or "the model"
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures come back as exceptions, reported in one line
    external = getattr(index, "external_dir", None)
    if external:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", external)
    try:
        if model.ByteSize() < _TWO_GB:
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        # Protobuf cannot hold 2 GB: hand onnxruntime a file with external data instead.
        path = os.path.join(workdir, f"{name}.onnx")
        onnx.save_model(model, path, save_as_external_data=True, location=f"{name}.data")
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise runtime_problem(label, exc) from exc


def _failing(index, names: list[str], feeds, providers, workdir) -> dict[str, str]:
    """The tensors of `names` whose exposure makes the batch `feeds` fail, with onnxruntime's reason
    (halving the set, so a few bad tensors among many cost a few sessions)."""
    try:
        session, read, _ = _session(index, names, providers, workdir)
        session.run([read[n] for n in names if n in read] or None, feeds)
        return {}
    except Exception as exc:
        if len(names) == 1:
            return {names[0]: ort_reason(exc).split("Status Message: ")[-1]}
    half = len(names) // 2
    return {**_failing(index, names[:half], feeds, providers, workdir),
            **_failing(index, names[half:], feeds, providers, workdir)}


def _derivable(index, names: list[str], main_graph: set[str]) -> dict:
    """Main-graph tensors of `names` whose statistics follow from another's (see `derive`)."""
    return {y: d for y, d in scalar_affine(index, names).items() if y in main_graph and d.source in main_graph}


def _prefetched(items, ahead: int = 1):
    """Iterate `items` while a background thread makes the next ones: at most `ahead` of them beyond
    the one the caller holds (the caller is done with an item when it asks for the next).

    Calibration makes each batch here, in the background: its data are read (decoding images,
    parsing raw files, generating random samples: mostly one core's work) and onnxruntime runs it
    while the caller computes the statistics of the batch before (on one core, see `_stats_pool`).
    Done in line, each of these left a core idle. Items come in order, and an error comes where its
    item would have. Closing the iterator (the caller stops early: a cancel, an error) stops the
    thread after the item it is making, and waits for it.
    """
    if (os.cpu_count() or 1) < 2:
        yield from items
        return
    ready: queue.SimpleQueue = queue.SimpleQueue()
    slots = threading.Semaphore(ahead + 1)  # items alive at once: the caller's and those made ahead
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                while not slots.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                try:
                    item = next(items)
                except StopIteration:
                    ready.put((False, None))
                    return
                ready.put((True, item))
                del item
        except BaseException as exc:  # handed to the caller, where the item would have been
            ready.put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # the source's own clean-up, in the thread that iterated it

    items = iter(items)
    thread = threading.Thread(target=produce, name="qinspect-data", daemon=True)
    thread.start()
    try:
        while True:
            more, item = ready.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
            del item
            slots.release()  # the caller asked for the next one: it is done with this one
    finally:
        stop.set()
        thread.join()


def _runs(batches, session, outputs: list[str], source):
    """(count, feeds, outputs) of every batch: `batches` run by onnxruntime. A failing batch raises
    its DataError with the batch's feeds attached (`.feeds`), for the caller to find the culprit."""
    for count, feeds in batches:
        try:
            values = _run(session, feeds, outputs, source)
        except DataError as exc:
            exc.feeds = feeds
            raise
        yield count, feeds, values
        del values


class _Background:
    """`fn(*args, stop)` in a thread of its own, started at once; `result()` waits for it and returns
    what it returned (or raises what it raised); `cancel()` sets `stop` and waits for it to see it."""

    def __init__(self, fn, *args, name: str = "qinspect-background"):
        self._stop = threading.Event()
        self._out = self._exc = None

        def run() -> None:
            try:
                self._out = fn(*args, self._stop)
            except BaseException as exc:  # re-raised by result(), in the caller's thread
                self._exc = exc

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._exc is not None:
            raise self._exc
        return self._out

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


def _constant_stats(values: list, index, bins: int, stop: threading.Event):
    """Exact statistics of weights and biases ((name, value) pairs) and their range warnings."""
    from .diagnostics import range_warnings

    constants = {}
    for name, value in values:
        if stop.is_set():
            return None
        constants[name] = TensorStats(bins)
        constants[name].update(value)
    return constants, range_warnings(constants, index)


def _follow(partial: dict, values: dict, derived: dict, followers: dict, name: str, got) -> None:
    """Update the tensors derived from `name` (see `derive`) from what its update saw, `got`, falling
    back to reading one when the source held NaN/Inf (`got` is None) or it overflows. A plain loop:
    a closure calling itself would be a reference cycle keeping the batch's outputs, and with them
    onnxruntime's buffers, alive until the garbage collector runs (every batch then paid for fresh
    memory: onnxruntime's run was 1.6x slower on the MobileNet-style benchmark)."""
    todo = [(name, got)]
    while todo:
        source, got = todo.pop()
        for follower in followers.get(source, ()):
            rule, out = derived[follower], None
            if got is not None and np.size(values[follower]) == got.count:
                out = partial[follower].update_derived(got, rule.fn, rule.decreasing)
            if out is None:
                out = partial[follower].update(values[follower])
            todo.append((follower, out))


def _update(partial: dict, values: dict, derived: dict, pool, parts: int) -> None:
    """Update every tensor's statistics with its batch: the tensors read (on the pool's threads too,
    when there is a pool), then the ones derived from them, from what their sources' updates saw."""
    followers: dict[str, list[str]] = {}
    for name, rule in derived.items():  # graph order: a source comes before what is derived from it
        if name in values:
            followers.setdefault(rule.source, []).append(name)
    reads = [n for n in values if n not in derived or derived[n].source not in values]
    seen = update_all([(partial[n], values[n]) for n in reads], pool, parts)
    for name, got in zip(reads, seen):
        _follow(partial, values, derived, followers, name, got)


def _declared_shape(vi) -> tuple | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim)


def _warned(warnings: list[str], name: str) -> bool:
    return any(w.startswith(f"output '{name}'") for w in warnings)


def _check_shape(name: str, declared: tuple, actual: tuple, warnings: list[str]) -> None:
    """Note a model output whose real shape contradicts its declared one (onnxruntime runs it anyway)."""
    wrong = len(declared) != len(actual) or any(d is not None and d > 0 and d != a for d, a in zip(declared, actual))
    if wrong:
        shown = "(" + ", ".join("?" if d is None else str(d) for d in declared) + ")"
        warnings.append(f"output '{name}' is declared {shown} but is {tuple(actual)} when run; the declared shape is "
                        f"wrong (harmless here; fix it in the exporter)")


def _run(session, feeds, names, source) -> list:
    try:
        return session.run(names, feeds)
    except Exception as exc:
        shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in feeds.items())
        raise DataError(f"{source}: onnxruntime failed on a batch ({shapes}): {ort_reason(exc)}; check that the "
                        f"data suit the model's inputs") from exc


def calibrate(
    index,
    data,
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
    providers: list[str] | None = None,
    bins: int = DEFAULT_BINS,
    group_bytes: int = DEFAULT_GROUP_BYTES,
    histogram_sample: int | None = DEFAULT_HISTOGRAM_SAMPLE,
) -> CalibrationResult:
    """Statistics of every activation of `index` over the samples of `data`.

    Count, min, max and NaN/Inf counts are exact. Histograms bin at most `histogram_sample` values of
    each tensor per batch (`TensorStats.sampled` tells which did); None bins every value.

    Cancellation is checked between batches and raises `Cancelled`; nothing is returned then, so
    the caller's previous state stays as it was.
    """
    progress = progress or NullProgress()
    providers = providers or ["CPUExecutionProvider"]
    started = time.perf_counter()
    stats: dict[str, TensorStats] = {}
    skipped: dict[str, str] = {}
    warnings: list[str] = []
    source = getattr(data, "name", "calibration data")
    feed_names = {i.name for i in index.inputs}
    main_graph = {o for n in index.model.graph.node for o in n.output}
    exposed = [n for n in index.activations() if n not in feed_names]
    inputs_to_track = [n for n in index.activations() if n in feed_names]
    groups = plan_groups(index, exposed, batch_size, group_bytes) or [[]]
    samples = len(data)
    if samples == 0:
        raise DataError(f"{source}: holds no samples; calibration needs at least one")
    total = samples * len(groups)
    done = 0
    progress.update(0, total, "starting")
    declared = {o.name: _declared_shape(o) for o in index.model.graph.output}
    # Weights and biases do not depend on the data: their exact statistics (and range warnings) are
    # made in the background while the first batches are read and run.
    constants = [(name, index.initializer(name)) for name in list(index.weights()) + list(index.biases())]
    weights_job = _Background(_constant_stats, constants, index, bins, name="qinspect-weights")
    try:
        with tempfile.TemporaryDirectory(prefix="qinspect-") as workdir:
            for g, group in enumerate(groups):
                check_cancel(progress)
                names = list(group)
                while True:
                    session, read, refused = _session(index, names, providers, workdir)
                    for name, why in refused.items():
                        skipped[name] = why
                    names = [n for n in names if n in read]
                    outputs = [read[n] for n in names] or [index.outputs[0]]
                    derived = _derivable(index, names, main_graph) if histogram_sample is not None else {}
                    partial: dict[str, TensorStats] = {}
                    before = done
                    feeds = None
                    try:
                        # onnxruntime runs the next batch while this thread computes statistics, which
                        # keeps two batches of outputs alive: when that would pass the memory budget,
                        # only the data are read ahead and onnxruntime runs here.
                        runs = _runs(_prefetched(data.counted_batches(batch_size)), session, outputs, source)
                        if 2 * sum(_estimate_bytes(index.tensors.get(n), batch_size) for n in names) <= group_bytes:
                            runs = _prefetched(runs)
                        with contextlib.closing(runs) as ahead:
                            for count, feeds, values in ahead:
                                check_cancel(progress)
                                batch = dict(zip(names, values))
                                if g == 0:  # graph inputs come from the feeds, in the first pass only
                                    batch.update((name, feeds[name]) for name in inputs_to_track)
                                for name in batch:
                                    if name not in partial:
                                        partial[name] = TensorStats(bins, histogram_sample)
                                _update(partial, batch, derived, *_stats_pool())
                                for name, value in zip(names, values):
                                    if name in declared and declared[name] is not None and not _warned(warnings, name):
                                        _check_shape(name, declared[name], np.shape(value), warnings)
                                del values, batch
                                done += count
                                progress.update(min(done, total), total, f"pass {g + 1}/{len(groups)}")
                    except DataError as exc:
                        feeds = getattr(exc, "feeds", feeds)  # the batch onnxruntime failed on
                        inner = [n for n in names if n not in main_graph]
                        if not inner or feeds is None:
                            raise
                        # A subgraph tensor onnxruntime cannot carry out (a loop tensor whose shape changes
                        # between iterations): find which, calibrate the rest, and say which have no statistics.
                        del session
                        bad = _failing(index, inner, feeds, providers, workdir) or {n: ort_reason(exc) for n in inner}
                        if _failing(index, [n for n in names if n not in bad], feeds, providers, workdir):
                            raise  # the data fail the model itself
                        for name, why in bad.items():
                            skipped[name] = f"onnxruntime could not carry it out of its subgraph ({why})"
                        names = [n for n in names if n not in bad]
                        done = before
                        continue
                    finally:
                        session = None
                    stats.update(partial)
                    break
    except BaseException:
        weights_job.cancel()  # stops after the tensor it is on
        raise
    for name in exposed:
        s = stats.get(name)
        if name not in main_graph and name not in skipped and (s is None or (s.count == 0 and not s.nonfinite_count)):
            stats.pop(name, None)  # no values: an encoding from nothing would be wrong, so it stays float
            skipped[name] = ("never computed on the calibration data (its If branch was not taken or its loop ran "
                             "no iteration); it stays float")
    from .diagnostics import range_warnings

    constants, constant_warnings = weights_job.result()
    diagnostics = range_warnings(stats, index) + constant_warnings  # the order of `stats`: activations first
    stats.update(constants)
    warnings.extend(d.message for d in diagnostics)
    return CalibrationResult(stats, samples, len(groups), time.perf_counter() - started, skipped,
                             histogram_sample=histogram_sample, warnings=warnings, diagnostics=diagnostics)
