"""One measurement, run in its own process by `run.py`: `python bench/child.py '<json spec>'`.

Prints one JSON line (the last line of stdout) with the wall time of the measured work and the
process's peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`). Everything a method needs that
is the same for all methods (imports, the qinspect model index, the data source) is done before the
clock starts; each method's own setup (session creation, graph augmentation) is inside the timing.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository, so `qinspect` imports without installing
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_pressure_s() -> float | None:
    """Seconds some task on this machine waited for a CPU (Linux PSI), to spot contention."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


def _machine_cpu_s() -> float | None:
    """CPU seconds every process on this machine has used (/proc/stat: user, nice, system, irq,
    softirq, steal). Less this process's own, it says whether others took CPU during a measurement;
    PSI alone cannot tell, and a method with more threads than cores makes PSI rise on its own."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _exposed(index) -> list[str]:
    """Exactly the tensors qinspect exposes: its activations minus the graph inputs."""
    feeds = {i.name for i in index.inputs}
    return [n for n in index.activations() if n not in feeds]


def _plain_session(index, outputs: list[str], spinning: bool = True):
    """A session like qinspect's own: the model with `outputs` added, default optimisations.
    `spinning=False` keeps onnxruntime's idle threads off the cores that numpy uses between runs."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    existing = {o.name for o in model.graph.output}
    for name in outputs:
        if name not in existing:
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(index.tensors[name].dtype))
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _MinMax:
    """Only the exact min and max of each batch, the way qinspect reads them (numpy, in cache-sized
    blocks, on both cores): what exact ranges cost with no histogram at all."""

    def __init__(self):
        self.min, self.max = np.inf, -np.inf

    def update(self, x):
        from qinspect.core.quant.stats import _scan

        lo, hi, _ = _scan(np.asarray(x).reshape(-1))
        self.min, self.max = min(self.min, lo), max(self.max, hi)


def run_inference(index, data, batch: int, exposed: bool, minmax: bool = False, ahead: bool = False) -> dict:
    """(1) or (2); with `minmax`, (2) plus the exact min and max of every output: the least any
    calibrator that keeps exact ranges must add to (2). With `ahead`, the data are read ahead in a
    background thread the way qinspect's calibration reads them (not part of the floor's definition:
    it shows what qinspect's statistics cost over the floor when both read the data the same way)."""
    from concurrent.futures import ThreadPoolExecutor

    from qinspect.core.quant.stats import update_all

    # The floor reads on every core (up to 4), as qinspect's calibration did until it kept its
    # statistics on one thread on two-core machines: the floor stays the least exact ranges cost.
    parts = min(os.cpu_count() or 1, 4)
    pool = ThreadPoolExecutor(parts - 1) if minmax and parts > 1 else None
    outputs = _exposed(index) if exposed else list(index.outputs)
    session = _plain_session(index, outputs, spinning=not minmax)  # as qinspect's, with numpy threads
    ranges = [_MinMax() for _ in outputs]
    values = 0
    batches = data.counted_batches(batch)
    if ahead:
        from qinspect.core.calib.calibrate import _prefetched

        batches = _prefetched(batches)
    for _, feeds in batches:
        out = session.run(outputs, feeds)
        values += sum(o.size for o in out)
        if minmax:
            update_all(zip(ranges, out), pool, parts)
        del out
    if pool is not None:
        pool.shutdown()
    return {"tensors": len(outputs), "values": values}


def _calibrate_kwargs(histogram_sample):
    """Pass the histogram mode only to a calibrate() that has it (the bench also runs older cores)."""
    from qinspect.core.calib.calibrate import calibrate

    if histogram_sample == "default":
        return {}
    if "histogram_sample" not in inspect.signature(calibrate).parameters:
        raise SystemExit("this qinspect has no histogram_sample option; run without --qinspect-sample")
    return {"histogram_sample": None if histogram_sample in (None, "exact", 0) else int(histogram_sample)}


def run_qinspect(index, data, batch: int, histogram_sample, timings: dict) -> dict:
    from qinspect.core.calib.calibrate import calibrate
    from qinspect.core.plan import Defaults, PrecisionPlan, derive_encodings

    result = calibrate(index, data, batch_size=batch, **_calibrate_kwargs(histogram_sample))
    timings["calibrate_s"] = time.perf_counter() - timings["_start"]
    for scheme in ("tf", "tf_enhanced"):
        started = time.perf_counter()
        encodings = derive_encodings(index, result.stats, PrecisionPlan(Defaults(act_scheme=scheme)))
        timings[f"{scheme}_s"] = time.perf_counter() - started
    return {"tensors": len(result.stats), "encodings": len(encodings),
            "sampled": any(getattr(s, "sampled", False) for s in result.stats.values())}


ORT_METHODS = {"ort_minmax": "MinMax", "ort_entropy": "Entropy", "ort_percentile": "Percentile",
               "ort_distribution": "Distribution"}


def run_ort(index, data, batch: int, method: str, model_path: str, workdir: str, chunk: int | None) -> dict:
    """onnxruntime's own calibrator on the same model, samples and tensors, with its default options.

    `create_calibrator` picks tensors by op type; we make it pick exactly qinspect's tensors. Its
    histogram calibrators keep every output of a `collect_data` call in memory, so when all samples
    would not fit the memory budget, `collect_data` is called once per chunk of samples (its
    histograms merge across calls, as the onnxruntime docs suggest for large data sets).
    """
    from onnxruntime.quantization import calibrate as ortcal

    names = set(_exposed(index))
    original = ortcal.CalibraterBase.select_tensors_to_calibrate

    def select(self, model):
        _, value_infos = original(self, model)
        missing = names - set(value_infos)
        if missing:
            raise RuntimeError(f"onnxruntime's shape inference has no type for {sorted(missing)[:3]}")
        return set(names), value_infos

    ortcal.CalibraterBase.select_tensors_to_calibrate = select

    class Reader(ortcal.CalibrationDataReader):
        def __init__(self, batches, limit):
            self.batches, self.left = batches, limit

        def get_next(self):
            if self.left <= 0:
                return None
            item = next(self.batches, None)
            if item is None:
                self.left = 0
                return None
            count, feeds = item
            self.left -= count
            return feeds

    batches = data.counted_batches(batch)
    limit = chunk or len(data)
    calls = 0
    augmented = os.path.join(workdir, f"augmented_{os.getpid()}.onnx")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime's calibrators print progress
            calibrator = ortcal.create_calibrator(
                model_path, None, augmented,
                calibrate_method=getattr(ortcal.CalibrationMethod, ORT_METHODS[method]),
            )
            done = 0
            while done < len(data):
                calibrator.collect_data(Reader(batches, limit))
                calls += 1
                done += limit
            ranges = calibrator.compute_data()
    finally:
        if os.path.exists(augmented):
            os.remove(augmented)
    return {"tensors": len(ranges.data), "collect_calls": calls}


def _sqnr_db(stats, lo: float, hi: float) -> float:
    """SQNR of the 8-bit encoding of [lo, hi] on an exact histogram (values at bin centres)."""
    from qinspect.core.quant.encoding import compute_encoding

    edges = stats.edges
    centres = 0.5 * (edges[:-1] + edges[1:])
    keep = stats.counts > 0
    c, w = centres[keep], stats.counts[keep]
    err = compute_encoding(lo, hi, 8).quantize_dequantize(c) - c
    noise = float(np.sum(w * err * err))
    signal = float(np.sum(w * c * c))
    return 10 * math.log10(max(signal, 1e-30) / max(noise, 1e-30))


def run_accuracy(index, data, batch: int, modes: list, percentile: float) -> dict:
    """What sampled histograms do to the chosen ranges, against exact histograms of the same data.

    For each tensor and scheme: the distance between the two ranges' ends, in steps of the tensor's
    exact 8-bit tf grid, and the SQNR the sampled range loses on the exact histogram. The reference
    row "other data" is an exact calibration on different samples (seed 1): the variation that
    comes from the data alone, to compare the sampling error with.
    """
    from qinspect.core.calib.calibrate import calibrate
    from qinspect.core.calib.data import open_data
    from qinspect.core.quant.ranges import percentile_range, tf_enhanced_range, tf_range

    schemes = {"tf": tf_range, "tf_enhanced": lambda s: tf_enhanced_range(s, 8),
               "percentile": lambda s: percentile_range(s, percentile)}
    results = {}
    exact_stats = exact = None
    other = open_data(f"random:{len(data)}", index.inputs, seed=1)
    for mode, source in [("exact", data)] + [(m, data) for m in modes] + [("other data", other)]:
        started = time.perf_counter()
        r = calibrate(index, source, batch_size=batch, **_calibrate_kwargs("exact" if mode == "other data" else mode))
        seconds = time.perf_counter() - started
        ranges = {name: {k: f(s) for k, f in schemes.items()}
                  for name in _exposed(index) if (s := r.stats.get(name)) is not None and s.count}
        if exact is None:
            exact_stats, exact = r.stats, ranges
            results["exact"] = {"seconds": seconds}
            continue
        row = {"seconds": seconds, "sampled_tensors": sum(bool(getattr(s, "sampled", False)) for s in r.stats.values())}
        for scheme in schemes:
            steps, loss = [], []
            for name, want in exact.items():
                lo, hi = want["tf"]
                step = max((max(hi, 0.0) - min(lo, 0.0)) / 255, 1e-12)
                got, ref = ranges[name][scheme], want[scheme]
                steps.append(max(abs(got[0] - ref[0]), abs(got[1] - ref[1])) / step)
                loss.append(_sqnr_db(exact_stats[name], *ref) - _sqnr_db(exact_stats[name], *got))
            steps, loss = np.asarray(steps), np.asarray(loss)
            row[scheme] = {"median_steps": float(np.median(steps)), "p95_steps": float(np.percentile(steps, 95)),
                           "max_steps": float(steps.max()), "within_1_step": float(np.mean(steps <= 1.0)),
                           "median_db_lost": float(np.median(loss)), "max_db_lost": float(loss.max()),
                           "tensors": int(steps.size)}
        results[str(mode)] = row
    return results


def build(spec: dict) -> dict:
    import models
    from qinspect.core.graph.model import load_model

    info = models.build(spec["kind"], spec["model"], **spec.get("options", {}))
    index = load_model(spec["model"])
    exposed = _exposed(index)
    values = 0
    for name in exposed:
        shape = index.tensors[name].shape or ()
        values += math.prod(d for d in shape[1:] if isinstance(d, int) and d > 0)
    info.update(exposed=len(exposed), values_per_sample=values, bytes_per_sample=4 * values)
    return info


def _import_method(method: str) -> None:
    """Import what a method uses before its clock starts: imports are excluded for every method
    (qinspect's calibrate and plan modules take ~40 ms, onnxruntime.quantization ~65 ms)."""
    if method in ("qinspect", "exposed_minmax", "exposed_minmax_ahead"):
        import qinspect.core.calib.calibrate  # noqa: F401
        import qinspect.core.calib.diagnostics  # noqa: F401
        import qinspect.core.graph.lift  # noqa: F401
        import qinspect.core.plan  # noqa: F401
    elif method in ORT_METHODS:
        import onnxruntime.quantization.calibrate  # noqa: F401


def main() -> None:
    spec = json.loads(sys.argv[1])
    method = spec["method"]
    if method == "build":
        print(json.dumps(build(spec)))
        return
    import onnxruntime  # noqa: F401  (imported before the baseline, like every method's libraries)
    from qinspect.core.calib.data import open_data
    from qinspect.core.graph.model import load_model

    _import_method(method)

    started = time.perf_counter()
    index = load_model(spec["model"])
    load_s = time.perf_counter() - started
    data = open_data(f"random:{spec['samples']}", index.inputs)
    batch = spec["batch"]
    baseline = _rss_mib()
    cpu0 = _cpu_s()
    stall0 = _cpu_pressure_s()
    machine0 = _machine_cpu_s()
    load0 = os.getloadavg()[0]
    timings = {"_start": time.perf_counter()}
    if method == "plain":
        extra = run_inference(index, data, batch, exposed=False)
    elif method == "exposed":
        extra = run_inference(index, data, batch, exposed=True)
    elif method == "exposed_minmax":
        extra = run_inference(index, data, batch, exposed=True, minmax=True)
    elif method == "exposed_minmax_ahead":
        extra = run_inference(index, data, batch, exposed=True, minmax=True, ahead=True)
    elif method == "qinspect":
        extra = run_qinspect(index, data, batch, spec.get("histogram_sample", "default"), timings)
    elif method in ORT_METHODS:
        extra = run_ort(index, data, batch, method, spec["model"], spec["workdir"], spec.get("chunk"))
    elif method == "accuracy":
        extra = run_accuracy(index, data, batch, spec["modes"], spec.get("percentile", 99.99))
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - timings.pop("_start")
    cpu = _cpu_s() - cpu0
    load = max(load0, os.getloadavg()[0])
    stall = None if stall0 is None else (_cpu_pressure_s() - stall0) / max(seconds, 1e-9)
    others = None if machine0 is None else max(_machine_cpu_s() - machine0 - cpu, 0.0) / max(seconds, 1e-9)
    if "calibrate_s" in timings:
        seconds = timings["calibrate_s"]  # encodings are reported on their own
    out = {"method": method, "samples": spec["samples"], "seconds": seconds, "peak_mib": _peak_mib(),
           "baseline_mib": baseline, "cpu_s": cpu, "loadavg": load, "cpu_stall": stall,
           "other_cpu": others, "load_model_s": load_s, **timings, **extra}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
