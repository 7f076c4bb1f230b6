"""Float vs quantized comparison: per tensor and per model output, SQNR in dB and relative error.

The quantized side is `simulate.Simulator`, which computes what the exported QDQ model computes.
For every activation quantizer position (main graph), every weight and bias, and every float model
output the comparison reports:

- ``sqnr_db``: 10 log10(sum x^2 / sum (q - x)^2) of the quantized model's value q against the float
  model's value x on the same samples: the error that reached this tensor, its own quantizer
  included (inf when exact);
- ``rel_error``: ||q - x|| / ||x||, and ``max_abs_error``;
- ``local_sqnr_db``: this tensor's own quantizer alone, applied to the float values (no upstream
  error); for weights and biases it equals ``sqnr_db``.

`compare` streams the data batch by batch; `live.Comparer` keeps a few samples for the window's
live error.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..quant.encoding import Encoding
from ..errors import DataError
from ..quant.qparams import complete_encodings, fake_quantize, onnx_qparams
from ..progress import NullProgress, Progress, check_cancel
from ..targets.cpu import cpu_label
from .runtime import QDQ_FUSIONS, RuntimeCheck, RuntimeRun, explain, fusion_cause
from .simulate import Simulator, expose, make_session

KEEP_VALUES = 4096  # values per tensor kept for histograms in reports


@dataclass
class TensorError:
    name: str
    kind: str                 # "activation" | "weight" | "bias" | "output"
    encoding: str             # "uint8", "int8/ch", "int32", "float16", "float32", "none"
    sqnr_db: float
    rel_error: float
    max_abs_error: float
    local_sqnr_db: float | None = None
    count: int = 0            # values compared
    nonfinite: int = 0        # values left out because float or quantized was NaN/Inf

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "kind", "encoding", "sqnr_db", "rel_error", "max_abs_error",
                                              "local_sqnr_db", "count", "nonfinite")}
        for k in ("sqnr_db", "local_sqnr_db", "rel_error", "max_abs_error"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None  # JSON has no inf: null means exact (no error) or undefined
        d["exact"] = self.rel_error == 0.0 and self.count > 0
        return d


@dataclass
class Comparison:
    tensors: dict[str, TensorError]
    outputs: dict[str, TensorError]
    samples: int
    accuracy_float: float | None = None
    accuracy_quantized: float | None = None
    encodings: dict[str, Encoding] = field(default_factory=dict)
    values: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # float, quantized samples
    seconds: float = 0.0
    runtime: object | None = None  # runtime.RuntimeCheck when the exported model was run too
    notes: list[str] = field(default_factory=list)  # what the user should know about what was compared

    def worst(self, n: int | None = None, kinds=("activation", "weight", "bias")) -> list[TensorError]:
        """Tensors by SQNR, worst first (exact tensors last)."""
        rows = [t for t in self.tensors.values() if t.kind in kinds]
        rows.sort(key=lambda t: (t.sqnr_db if math.isfinite(t.sqnr_db) or t.sqnr_db < 0 else math.inf, t.name))
        return rows if n is None else rows[:n]

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "accuracy": None if self.accuracy_float is None else {
                "float": self.accuracy_float, "quantized": self.accuracy_quantized},
            "outputs": [self._output_dict(o) for o in self.outputs.values()],
            "tensors": [t.to_dict() for t in self.worst()],
            **({"runtime": self.runtime.to_dict()} if self.runtime is not None else {}),
        }

    def _output_dict(self, o: TensorError) -> dict:
        d = o.to_dict()
        if self.runtime is not None:
            v = self.runtime.outputs.get(o.name)
            d["runtime_sqnr_db"] = v if v is not None and math.isfinite(v) else None
        return d


def encoding_label(enc: Encoding | None) -> str:
    if enc is None:
        return "none"
    if enc.is_float:
        return f"float{enc.bw}"
    qp = onnx_qparams(enc)
    if qp is None:
        return f"int{enc.bw} (kept float)"
    return qp.label()


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class _Acc:
    """Streaming sums for one tensor."""

    def __init__(self):
        self.signal = self.noise = self.local_noise = 0.0
        self.max_abs = 0.0
        self.count = self.nonfinite = 0
        self.kept_f: list[np.ndarray] = []
        self.kept_q: list[np.ndarray] = []
        self.kept = 0

    def add(self, f: np.ndarray, q: np.ndarray, local: np.ndarray | None = None) -> None:
        f = np.asarray(f, np.float64).ravel()
        q = np.asarray(q, np.float64).ravel()
        ok = np.isfinite(f) & np.isfinite(q)
        if not ok.all():
            self.nonfinite += int(f.size - ok.sum())
            f, q = f[ok], q[ok]
            local = None if local is None else np.asarray(local, np.float64).ravel()[ok]
        if f.size == 0:
            return
        err = q - f
        self.signal += float(f @ f)
        self.noise += float(err @ err)
        self.max_abs = max(self.max_abs, float(np.abs(err).max()))
        self.count += f.size
        if local is not None:
            le = np.asarray(local, np.float64).ravel() - f
            self.local_noise += float(le @ le)
        if self.kept < KEEP_VALUES:
            step = max(1, f.size // KEEP_VALUES)
            take = slice(0, (KEEP_VALUES - self.kept) * step, step)
            self.kept_f.append(f[take].astype(np.float32))
            self.kept_q.append(q[take].astype(np.float32))
            self.kept += self.kept_f[-1].size

    def result(self, name: str, kind: str, label: str, local: bool) -> TensorError:
        rel = math.sqrt(self.noise / self.signal) if self.signal else (0.0 if self.noise == 0 else math.inf)
        return TensorError(
            name, kind, label, sqnr_db(self.signal, self.noise), rel, self.max_abs,
            sqnr_db(self.signal, self.local_noise) if local else None, self.count, self.nonfinite)

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.float32))
        return cat(self.kept_f), cat(self.kept_q)


def _float_outputs(index) -> list[str]:
    return [n for n in index.outputs if index.is_float(n)]


def data_outputs(index, data) -> tuple[list[str], list[str]]:
    """The outputs to compare, and notes: the float main-graph tensors the data names (a QNN input
    list's `%tensor` and `#layer` lines), or the model's float outputs when it names none."""
    named = list(getattr(data, "output_tensors", []) or [])
    layers = list(getattr(data, "output_layers", []) or [])
    for layer in layers:
        node = index.nodes.get(layer)
        named += [o for o in (node.output if node is not None else []) if o and o not in named]
    if not named:
        return _float_outputs(index), []
    main = {o for n in index.model.graph.node for o in n.output} | {i.name for i in index.inputs}
    chosen = [n for n in named if n in main and index.is_float(n)]
    unknown = [n for n in named if n not in chosen] + [layer for layer in layers if layer not in index.nodes]
    notes = []
    if chosen:
        notes.append(f"the data names the outputs to compare: {', '.join(chosen[:8])}"
                     + (f" and {len(chosen) - 8} more" if len(chosen) > 8 else ""))
    if unknown:
        notes.append(f"the data names outputs that are not float tensors or layers of the main graph, left out: "
                     f"{', '.join(unknown[:8])}")
    return (chosen or _float_outputs(index)), notes


def _activation_names(index) -> list[str]:
    """Activation quantizer positions the main graph exposes (inputs included)."""
    main = {o for n in index.model.graph.node for o in n.output} | {i.name for i in index.inputs}
    return [n for n in index.activations() if n in main]


def _float_session(index, names, providers):
    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    feeds = {i.name for i in index.inputs}
    expose(model, index, [n for n in names if n not in feeds])
    return make_session(model, providers, None, index.path or "the model")


def _run_float(session, feeds, names) -> dict[str, np.ndarray]:
    wanted = [n for n in names if n not in feeds]
    try:
        values = session.run(wanted, feeds)
    except Exception as exc:
        raise DataError(f"onnxruntime failed on a batch of the data: {str(exc).splitlines()[0]}") from exc
    out = {n: feeds[n] for n in names if n in feeds}
    out.update(zip(wanted, values))
    return out


def _predictions(values: np.ndarray, count: int) -> np.ndarray | None:
    if values.ndim == 0 or values.shape[0] != count or values.size // max(count, 1) < 2:
        return None
    return values.reshape(count, -1).argmax(1)


def _labels(data, n: int) -> np.ndarray | None:
    labels = getattr(data, "labels", None)
    if labels is None or len(labels) < n:
        return None
    labels = np.asarray(labels[:n])
    return labels.reshape(n, -1).argmax(1) if labels.ndim > 1 else labels.astype(np.int64)


def _constant_errors(index, encodings, names) -> dict[str, TensorError]:
    out = {}
    for name in names:
        t = index.targets[name]
        value = index.initializer(name)
        acc = _Acc()
        acc.add(value, fake_quantize(index.quantized_value(name), encodings.get(name)))
        out[name] = acc.result(name, t.kind, encoding_label(encodings.get(name)), local=False)
        out[name].local_sqnr_db = out[name].sqnr_db
    return out


class _Batches:
    """Up to `samples` samples of `data` in batches: (count, feeds, labels or None)."""

    def __init__(self, data, samples, batch_size):
        self.data, self.batch_size = data, batch_size
        self.total = len(data) if samples is None else min(len(data), int(samples))
        if self.total < 1:
            raise DataError("the comparison needs at least one sample")
        self.labels = _labels(data, self.total)

    def __iter__(self):
        done = 0
        for count, feeds in self.data.counted_batches(self.batch_size):
            if done >= self.total:
                break
            if done + count > self.total:
                keep = self.total - done
                feeds = {k: v[:keep] for k, v in feeds.items()}
                count = keep
            labels = None if self.labels is None else self.labels[done:done + count]
            yield count, feeds, labels
            done += count


def _accuracy(correct: list[int], total: int) -> float | None:
    return None if total == 0 else correct[0] / total


class _Run:
    """Accumulators of one comparison."""

    def __init__(self, index, encodings, names, outputs):
        """`outputs`: the outputs to compare; accuracy is taken on the model's first float output
        when it is among them."""
        self.index, self.encodings = index, encodings
        first = _float_outputs(index)[:1]
        self.first = first[0] if first and first[0] in outputs else None
        self.acts = {n: _Acc() for n in names}
        self.outs = {n: _Acc() for n in outputs}
        self.correct = [0, 0]
        self.labelled = 0

    def add(self, float_vals, quant_vals, count, labels) -> None:
        for n, acc in self.acts.items():
            f = float_vals[n]
            acc.add(f, quant_vals[n], fake_quantize(f, self.encodings.get(n)))
        for n, acc in self.outs.items():
            acc.add(float_vals[n], quant_vals[n])
        first = self.first
        if labels is not None and first is not None:
            pf = _predictions(float_vals[first], count)
            pq = _predictions(quant_vals[first], count)
            if pf is not None and pq is not None:
                self.correct[0] += int((pf == labels).sum())
                self.correct[1] += int((pq == labels).sum())
                self.labelled += count

    def tensors(self) -> dict[str, TensorError]:
        return {n: a.result(n, "activation", encoding_label(self.encodings.get(n)), local=True)
                for n, a in self.acts.items()}

    def outputs(self) -> dict[str, TensorError]:
        return {n: a.result(n, "output", encoding_label(self.encodings.get(n)), local=False)
                for n, a in self.outs.items()}


def _comparison(run: _Run, tensors, constants, new_constants, samples, started) -> Comparison:
    """`new_constants`: the weights and biases whose kept values need (re)computing."""
    values = {n: a.values() for n, a in run.acts.items()}
    for n in new_constants:
        v = run.index.initializer(n)
        q = fake_quantize(run.index.quantized_value(n), run.encodings.get(n))
        step = max(1, v.size // KEEP_VALUES)
        values[n] = (v.astype(np.float32).ravel()[::step], q.ravel()[::step])
    acc_f = acc_q = None
    if run.labelled:
        acc_f, acc_q = run.correct[0] / run.labelled, run.correct[1] / run.labelled
    return Comparison({**tensors, **constants}, run.outputs(), samples, acc_f, acc_q, run.encodings, values,
                      time.perf_counter() - started)


def compare(index, encodings: dict[str, Encoding], data, *, progress: Progress | None = None,
            samples: int | None = None, batch_size: int = 8, providers=None, runtime: bool = False,
            target=None) -> Comparison:
    """Run float and quantized side by side over the first `samples` samples of `data` (all by default).

    With `runtime`, the QDQ model exported for `target` also runs in onnxruntime with its default
    session options on the same batches (`runtime.RuntimeRun`); `Comparison.runtime` then holds
    its output SQNRs next to the simulated ones and the known causes of a gap.
    Cancellation is checked between batches (raises `Cancelled`).
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    encodings = complete_encodings(index, encodings)
    providers = providers or ["CPUExecutionProvider"]
    names = _activation_names(index)
    outputs, notes = data_outputs(index, data)
    runtime_outputs = [n for n in outputs if n in index.outputs]  # the exported model's own outputs
    wanted = list(dict.fromkeys(names + outputs))
    batches = _Batches(data, samples, batch_size)
    progress.update(0, batches.total, "starting")
    float_session = _float_session(index, wanted, providers)
    sim = Simulator(index, encodings, names=wanted, providers=providers)
    run = _Run(index, sim.encodings, names, outputs)
    exported = RuntimeRun(index, encodings, target=target, providers=providers) if runtime else None
    measured = {n: _Acc() for n in runtime_outputs}
    done = 0
    try:
        for count, feeds, labels in batches:
            check_cancel(progress)
            f = _run_float(float_session, feeds, wanted)
            q = dict(zip(wanted, sim.run(feeds, wanted)))
            run.add(f, q, count, labels)
            if exported is not None:
                for n, value in zip(runtime_outputs, exported.run(feeds, runtime_outputs)):
                    measured[n].add(f[n], value)
            done += count
            progress.update(done, batches.total, "comparing")
    finally:
        sim.close()
        if exported is not None:
            exported.close()
    constant_names = index.weights() + index.biases()
    constants = _constant_errors(index, sim.encodings, constant_names)
    comparison = _comparison(run, run.tensors(), constants, constant_names, done, started)
    comparison.notes = notes
    if exported is not None:
        check = RuntimeCheck(exported.target, exported.providers, cpu_label(),
                             {n: sqnr_db(a.signal, a.noise) for n, a in measured.items()},
                             {n: comparison.outputs[n].sqnr_db for n in runtime_outputs}, notes=exported.notes)
        if not check.agrees():
            check.causes = explain(index, sim.encodings, providers)
        if not check.agrees() and not check.causes:  # one more pass tells whether the fusions did it
            unfused = _runtime_pass(index, encodings, batches, float_session, runtime_outputs, target, providers,
                                    progress, disabled_optimizers=QDQ_FUSIONS)
            check.causes = [c for c in (fusion_cause(unfused, check.simulated),) if c]
        comparison.runtime = check
    return comparison


def _runtime_pass(index, encodings, batches, float_session, outputs, target, providers, progress,
                  disabled_optimizers=()) -> dict[str, float]:
    """Output SQNRs of the exported model in onnxruntime against the float model, over `batches`."""
    exported = RuntimeRun(index, encodings, target=target, providers=providers,
                          disabled_optimizers=disabled_optimizers)
    measured = {n: _Acc() for n in outputs}
    try:
        for count, feeds, labels in batches:
            check_cancel(progress)
            f = _run_float(float_session, feeds, outputs)
            for n, value in zip(outputs, exported.run(feeds, outputs)):
                measured[n].add(f[n], value)
    finally:
        exported.close()
    return {n: sqnr_db(a.signal, a.noise) for n, a in measured.items()}
