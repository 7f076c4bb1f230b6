"""qinspect calibration benchmark (design section 7, issue 7): speed and peak memory of qinspect's
calibration against plain onnxruntime inference and onnxruntime's own calibrators, in one run.

    python bench/run.py                 # the full run: N = 64, 256, 1024 on three models (~15 min)
    python bench/run.py --quick         # a smoke check (~1-2 min): N = 16, 64 and smaller models
    python bench/run.py --json out.json --models resnet transformer --samples 64 1024 --repeat 2

Every measurement runs in its own process (`child.py`) and reports its own peak RSS; this process
imports neither onnxruntime nor qinspect, so its memory never shows in a child's peak. See README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = HERE / "child.py"

METHODS = ["plain", "exposed", "exposed_minmax", "exposed_minmax_ahead", "qinspect", "ort_minmax", "ort_entropy",
           "ort_percentile", "ort_distribution"]
LABELS = {
    "plain": "(1) ORT, outputs only",
    "exposed": "(2) ORT, all exposed",
    "exposed_minmax": "    (2) + exact min/max",
    "exposed_minmax_ahead": "    same, data read ahead",
    "qinspect": "(3) qinspect calibrate",
    "tf": "    + tf encodings",
    "tf_enhanced": "    + tf_enhanced encodings",
    "ort_minmax": "(4) ORT MinMax",
    "ort_entropy": "(4) ORT Entropy",
    "ort_percentile": "(4) ORT Percentile",
    "ort_distribution": "(4) ORT Distribution",
}
HISTOGRAM_CALIBRATORS = ["ort_entropy", "ort_percentile", "ort_distribution"]

# Model sizes. The full set keeps the default run near 15 minutes on 2 cores (onnxruntime's histogram
# calibrators on the transformer, whose size the issue fixes, take half of it); --quick shrinks all.
MODEL_OPTIONS = {
    "full": {
        "resnet": {"widths": [16, 32, 64, 128], "blocks": [1, 1, 1, 1], "size": 224},
        "mobilenet": {"width": 0.35, "repeats": 1, "size": 160},
        "transformer": {"layers": 4, "width": 256, "heads": 4, "seq": 128},
    },
    "quick": {
        "resnet": {"widths": [8, 16, 32, 64], "blocks": [1, 1, 1, 1], "size": 224},
        "mobilenet": {"width": 0.35, "repeats": 1, "size": 128},
        "transformer": {"layers": 2, "width": 256, "heads": 4, "seq": 128},
    },
}


def child(spec: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, str(CHILD), json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        what = "killed (out of memory?)" if proc.returncode < 0 else f"exit {proc.returncode}"
        return {"error": f"{what}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ort_chunk(info: dict, samples: int, batch: int, budget_mib: float) -> int | None:
    """Samples per `collect_data` call of an ORT histogram calibrator: all of them when their
    exposed outputs fit the budget (onnxruntime keeps them all), else the most that do."""
    per_sample = info["bytes_per_sample"] * 2.2 / 2**20  # the outputs, plus the stacked copy it makes
    if samples * per_sample <= budget_mib:
        return None
    return max(batch, int(budget_mib / per_sample) // batch * batch)


BUSY = 0.15  # cores other processes used on average during a measurement, above which it is redone


def ok(r) -> bool:
    return r is not None and "error" not in r


def busy(r) -> bool:
    """Other processes used the CPU during the measurement. Runs saved before `other_cpu` was
    recorded fall back to PSI, which also counts a method's own threads waiting for each other."""
    if not ok(r):
        return False
    others = r.get("other_cpu")
    return (others if others is not None else r.get("cpu_stall") or 0.0) > BUSY


def fmt(r: dict | None, key: str = "seconds", mark: bool = False) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "FAILED"
    return f"{r[key]:.2f}" + ("*" if mark and busy(r) else "")


def best(runs: list[dict]) -> dict:
    """Of repeated runs: the fastest one's numbers, with the highest peak RSS of them all."""
    good = [r for r in runs if ok(r)]
    if not good:
        return runs[-1]
    out = dict(min(good, key=lambda r: r["seconds"]))
    out["peak_mib"] = max(r["peak_mib"] for r in good)
    out["repeats"] = len(good)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 16, 64 and smaller models: a 1-2 minute smoke check")
    p.add_argument("--samples", type=int, nargs="+", help="N values (default 64 256 1024; --quick: 16 64)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--models", nargs="+", choices=["resnet", "mobilenet", "transformer"],
                   default=["resnet", "mobilenet", "transformer"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--model-options", type=json.loads, default={},
                   help='JSON overriding model sizes, e.g. \'{"resnet": {"widths": [64, 128, 256, 512]}}\'')
    p.add_argument("--qinspect-sample", default="default",
                   help="qinspect's histograms: 'default', 'exact', or values binned per tensor per batch")
    p.add_argument("--accuracy-samples", type=int, default=128,
                   help="N for the sampled-vs-exact histogram comparison (default 128; --quick: 32; 0 skips it)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every measurement this many times, keep the fastest (for a busy machine)")
    p.add_argument("--busy-retries", type=int, default=2,
                   help="run a measurement again (up to this many times) when other processes held the CPU for "
                        "over 15%% of it (Linux PSI); the fastest run counts (default 2)")
    p.add_argument("--ort-memory-mib", type=float, default=4096,
                   help="memory an ORT histogram calibrator may fill per collect_data call (default 4096)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    p.add_argument("--json", help="write all results here")
    p.add_argument("--workdir", help="keep the generated models here (default: a temporary folder)")
    p.add_argument("--report", metavar="JSON",
                   help="run nothing: print the report and checks of a run saved with --json again")
    args = p.parse_args(argv)
    if args.report:
        return report_again(Path(args.report))
    samples = args.samples or ([16, 64] if args.quick else [64, 256, 1024])
    sizes = MODEL_OPTIONS["quick" if args.quick else "full"]
    accuracy_n = min(args.accuracy_samples, 32) if args.quick else args.accuracy_samples
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="qinspect-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        infos, runs, accuracy = {}, {}, {}
        for kind in args.models:
            options = {**sizes[kind], **args.model_options.get(kind, {})}
            path = str(workdir / f"{kind}.onnx")
            info = child({"method": "build", "kind": kind, "model": path, "options": options}, args.timeout)
            if "error" in info:
                print(f"{kind}: cannot build the model: {info['error']}", file=sys.stderr)
                return 1
            infos[kind] = info
            log(f"{kind}: {describe(info)}")
        for rep in range(args.repeat):
            for kind in args.models:
                path = str(workdir / f"{kind}.onnx")
                for n in samples:  # N-major, so (2) and (3) at the same N run close together in time
                    for method in args.methods:
                        spec = {"method": method, "model": path, "samples": n, "batch": args.batch_size,
                                "workdir": str(workdir)}
                        if method == "qinspect":
                            spec["histogram_sample"] = args.qinspect_sample
                        if method in HISTOGRAM_CALIBRATORS:
                            spec["chunk"] = ort_chunk(infos[kind], n, args.batch_size, args.ort_memory_mib)
                        for attempt in range(1 + max(args.busy_retries, 0)):
                            r = child(spec, args.timeout)
                            r["rep"] = rep
                            runs.setdefault(kind, {}).setdefault(method, {}).setdefault(n, []).append(r)
                            log(f"{'run ' + str(rep + 1) + ' ' if args.repeat > 1 else ''}{kind:<11} N={n:<5} "
                                f"{LABELS[method].strip():<26} {fmt(r):>7} s  peak "
                                f"{fmt(r, 'peak_mib') if ok(r) else '-':>8} MiB" + (f"  ({r['error']})" if not ok(r) else "")
                                + (f"  (busy machine: other processes used {r.get('other_cpu') or 0:.2f} cores, measuring again)"
                                   if busy(r) and attempt < args.busy_retries else ""))
                            if not busy(r):
                                break
        if accuracy_n and "qinspect" in args.methods:
            for kind in args.models:
                accuracy[kind] = child({"method": "accuracy", "model": str(workdir / f"{kind}.onnx"),
                                        "samples": accuracy_n, "batch": args.batch_size, "modes": ["default"]},
                                       args.timeout)
                log(f"{kind}: sampled vs exact histograms done")
        total = time.perf_counter() - started

    results = {k: {m: {n: best(rs) for n, rs in by_n.items()} for m, by_n in ms.items()} for k, ms in runs.items()}
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "versions": versions(),
        "batch_size": args.batch_size, "samples": samples, "quick": args.quick, "repeat": args.repeat,
        "busy_retries": args.busy_retries,
        "ort_memory_mib": args.ort_memory_mib, "qinspect_sample": args.qinspect_sample,
        "models": infos, "results": to_json(results), "accuracy": accuracy, "seconds": total,
    }
    report["checks"] = print_report(report, results, accuracy, samples, runs)
    if args.json:
        report["runs"] = to_json(runs)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0 if all(c["pass"] for c in report["checks"]) else 1


def report_again(path: Path) -> int:
    """Print the report of a saved run (`--json`) with this version's tables and checks."""
    report = json.loads(path.read_text())
    samples = report["samples"]
    runs = {k: {m: {int(n): rs for n, rs in by_n.items()} for m, by_n in ms.items()}
            for k, ms in report.get("runs", {}).items()}
    retries = report.get("busy_retries", 2)
    for ms in runs.values():
        for by_n in ms.values():
            for rs in by_n.values():
                rep = attempt = 0
                for r in rs:  # runs saved before repeats were recorded: busy retries follow their run
                    r.setdefault("rep", rep)
                    if busy(r) and attempt < retries:
                        attempt += 1
                    else:
                        rep, attempt = rep + 1, 0
    if runs:
        results = {k: {m: {n: best(rs) for n, rs in by_n.items()} for m, by_n in ms.items()} for k, ms in runs.items()}
    else:
        results = {k: {m: {int(n): r for n, r in by_n.items()} for m, by_n in ms.items()}
                   for k, ms in report["results"].items()}
    report.setdefault("versions", {})
    checks = print_report(report, results, report.get("accuracy", {}), samples, runs)
    return 0 if all(c["pass"] for c in checks) else 1


def versions() -> dict:
    code = ("import json, numpy, onnx, onnxruntime; print(json.dumps({'numpy': numpy.__version__, "
            "'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def to_json(results: dict) -> dict:
    return {k: {m: {str(n): r for n, r in by_n.items()} for m, by_n in ms.items()} for k, ms in results.items()}


def describe(info: dict) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in info["options"].items())
    return (f"{info['parameters'] / 1e6:.2f} M parameters, {info['nodes']} nodes, {info['exposed']} exposed "
            f"tensors, {info['values_per_sample'] / 1e6:.2f} M activation values per sample "
            f"({info['bytes_per_sample'] / 2**20:.1f} MiB); {opts}")


def print_report(report: dict, results: dict, accuracy: dict, samples: list[int], runs: dict | None = None) -> list[dict]:
    v = report["versions"]
    print(f"\n== qinspect calibration benchmark: {report['machine']['cpus']} CPUs, onnxruntime "
          f"{v.get('onnxruntime')}, numpy {v.get('numpy')}, batch {report['batch_size']}, "
          f"qinspect histograms: {report['qinspect_sample']}, best of {report['repeat']}, "
          f"run took {report['seconds'] / 60:.1f} min ==")
    for kind, info in report["models"].items():
        print(f"  {kind}: {describe(info)}")
    stalls = [r["cpu_stall"] for ms in results.values() for by_n in ms.values() for r in by_n.values()
              if ok(r) and r.get("cpu_stall") is not None]
    if stalls:
        share = statistics.median(stalls)
        print(f"  CPU contention (Linux PSI, share of each measurement's time some task waited for a CPU): "
              f"median {share:.0%}, max {max(stalls):.0%}"
              + ("  <- a busy machine: timings are noisy, try --repeat 2" if share > 0.25 else ""))
    others = [r["other_cpu"] for ms in results.values() for by_n in ms.values() for r in by_n.values()
              if ok(r) and r.get("other_cpu") is not None]
    if others:
        print(f"  Other processes (cores they used on average during a measurement): median {statistics.median(others):.2f}, "
              f"max {max(others):.2f}")
    cols = "".join(f"{'N=' + str(n):>10}" for n in samples)

    print("\nWall time (s): setup (session, graph augmentation) + all batches; data generation included for all"
          f"\n(* : other processes used over {BUSY:.2f} of a core during that measurement, even in its fastest run)")
    print(f"{'model':<12}{'method':<28}{cols}")
    for kind, by_method in results.items():
        for i, method in enumerate(m for m in METHODS if m in by_method):
            print(f"{kind if i == 0 else '':<12}{LABELS[method]:<28}"
                  + "".join(f"{fmt(by_method[method].get(n), mark=True):>10}" for n in samples))
            if method == "qinspect":
                for key in ("tf", "tf_enhanced"):
                    cells = [fmt(r, key + "_s") if ok(r := by_method[method].get(n)) else "-" for n in samples]
                    print(f"{'':<12}{LABELS[key]:<28}" + "".join(f"{c:>10}" for c in cells))

    print("\nWall time against (2), plain ORT with the same tensors exposed (lower is better)")
    print(f"{'model':<12}{'method':<28}{cols}")
    for kind, by_method in results.items():
        base = by_method.get("exposed", {})
        for i, method in enumerate(m for m in METHODS if m in by_method and m != "exposed"):
            cells = []
            for n in samples:
                r, b = by_method[method].get(n), base.get(n)
                cells.append(f"{r['seconds'] / b['seconds']:.2f}x" if ok(r) and ok(b) else "-")
            print(f"{kind if i == 0 else '':<12}{LABELS[method]:<28}" + "".join(f"{c:>10}" for c in cells))

    print(f"\nPeak RSS (MiB) against N; growth from N={samples[0]} to N={samples[-1]}")
    print(f"{'model':<12}{'method':<28}{cols}{'growth':>10}")
    for kind, by_method in results.items():
        for i, method in enumerate(m for m in METHODS if m in by_method):
            rows = by_method[method]
            cells = [fmt(rows.get(n), "peak_mib") if ok(rows.get(n)) else fmt(rows.get(n)) for n in samples]
            first, last = rows.get(samples[0]), rows.get(samples[-1])
            growth = f"{last['peak_mib'] / first['peak_mib'] - 1:+.1%}" if ok(first) and ok(last) else "-"
            chunked = [f"N={n}: {rows[n]['collect_calls']}" for n in samples
                       if ok(rows.get(n)) and rows[n].get("collect_calls", 1) > 1]
            note = f"  (collect_data calls to fit memory: {', '.join(chunked)})" if chunked else ""
            print(f"{kind if i == 0 else '':<12}{LABELS[method]:<28}" + "".join(f"{c:>10}" for c in cells)
                  + f"{growth:>10}{note}")

    if accuracy:
        print_accuracy(accuracy)
    return print_checks(results, samples, runs, quick=bool(report.get("quick")))


def print_accuracy(accuracy: dict) -> None:
    any_row = next((a for a in accuracy.values() if ok(a)), None)
    n = any_row.get("samples", "?") if any_row else "?"
    print(f"\nqinspect's default (subsampled) histograms against exact ones, N={n}: per tensor, how far the "
          "chosen range's ends move\n(in steps of the tensor's exact 8-bit tf grid) and the SQNR the moved "
          "range loses on the exact histogram. 'other data' is\nan exact calibration on different samples "
          "of the same size: the variation from the data alone.")
    print(f"{'model':<12}{'histograms':<12}{'scheme':<13}{'median':>8}{'p95':>8}{'max':>8}{'dB lost med':>13}"
          f"{'max':>8}{'calibrate s':>13}")
    for kind, acc in accuracy.items():
        if not ok(acc):
            print(f"{kind:<12}FAILED: {acc.get('error')}")
            continue
        first = True
        for mode in ("default", "other data"):
            row = acc.get(mode)
            if not row or "tf_enhanced" not in row:
                continue
            label = "subsample" if mode == "default" else "other data"
            for j, scheme in enumerate(("tf_enhanced", "percentile")):
                e = row[scheme]
                secs = ""
                if j == 0:
                    secs = f"{row['seconds']:.1f}" + (f" / {acc['exact']['seconds']:.1f}" if mode == "default" else "")
                print(f"{kind if first else '':<12}{label if j == 0 else '':<12}{scheme:<13}{e['median_steps']:>8.2f}"
                      f"{e['p95_steps']:>8.2f}{e['max_steps']:>8.1f}{e['median_db_lost']:>13.3f}{e['max_db_lost']:>8.2f}"
                      f"{secs:>13}")
                first = False
    print("(calibrate s: subsampled / exact histograms; tf ranges are exact in both modes by construction)")


FLOOR_TARGET = 1.15  # issue 15: qinspect at most this many times the exact min/max floor, in the same run


def _per_repeat(rs: list[dict]) -> list[dict]:
    """The run that counts in each repeat (the fastest of its busy retries), in repeat order."""
    by_rep: dict[int, list[dict]] = {}
    for r in rs:
        if ok(r):
            by_rep.setdefault(r.get("rep", 0), []).append(r)
    return [min(by_rep[k], key=lambda r: r["seconds"]) for k in sorted(by_rep)]


def _paired(runs: dict, kind: str, method: str, other: str, n: int) -> list[float]:
    """method / other of each repeat (the two ran minutes apart at most, in the same repeat)."""
    a = {r.get("rep", 0): r for r in _per_repeat(runs.get(kind, {}).get(method, {}).get(n, []))}
    b = {r.get("rep", 0): r for r in _per_repeat(runs.get(kind, {}).get(other, {}).get(n, []))}
    return [a[k]["seconds"] / b[k]["seconds"] for k in sorted(a) if k in b]


def target_checks(results: dict, runs: dict, samples: list[int]) -> list[dict]:
    """Issue 15's two calibration targets, per model over every N of the run: qinspect at most
    1.15x the exact min/max floor ((2) + one blockwise read of every exposed tensor), and faster
    than onnxruntime's MinMax calibrator. A ratio is of the fastest runs of the two methods; 'per
    repeat' is the range of the ratios paired within each repeat (the spread of the measurement).
    Context, not checked: both against (2), and qinspect against the floor when the floor reads its
    data ahead as qinspect does (what qinspect's statistics cost on their own)."""
    def ratios(a: str, b: str, by_method: dict) -> list[float | None]:
        out = []
        for n in samples:
            r, o = by_method.get(a, {}).get(n), by_method.get(b, {}).get(n)
            out.append(r["seconds"] / o["seconds"] if ok(r) and ok(o) else None)
        return out

    checks = []
    targets = [("exposed_minmax", f"qinspect <= {FLOOR_TARGET:.2f}x the exact min/max floor", FLOOR_TARGET, True),
               ("ort_minmax", "qinspect faster than ORT MinMax", 1.0, False)]
    for kind, by_method in results.items():
        if "qinspect" not in by_method:
            continue
        for other, name, limit, inclusive in targets:
            if other not in by_method:
                continue
            values = ratios("qinspect", other, by_method)
            spread = [x for n in samples for x in _paired(runs, kind, "qinspect", other, n)]
            measured = [v for v in values if v is not None]
            passed = bool(measured) and len(measured) == len(values) and all(
                v <= limit if inclusive else v < limit for v in measured)
            context = {"qinspect vs (2)": ratios("qinspect", "exposed", by_method),
                       f"{other} vs (2)": ratios(other, "exposed", by_method)}
            if other == "exposed_minmax" and "exposed_minmax_ahead" in by_method:
                context["qinspect vs the floor reading ahead"] = ratios("qinspect", "exposed_minmax_ahead", by_method)
            checks.append({"model": kind, "check": name, "target": other, "samples": samples, "value": values,
                           "per_repeat": spread, "pass": passed, "context": context})
    return checks


def _cells(values: list) -> str:
    return " / ".join("-" if v is None else f"{v:.2f}x" for v in values)


def print_targets(targets: list[dict], samples: list[int], quick: bool = False) -> None:
    print(f"\nCalibration targets (issue 15): qinspect's wall time against the named method's, N = "
          f"{' / '.join(map(str, samples))}, fastest run of each;\nper repeat: the range of the ratios of the runs "
          f"paired within each repeat (the measurement's spread); indented: context, not checked")
    if quick:
        print("(a --quick run: small models and a few batches of 0.1-0.4 s, where fixed costs and noise dominate;"
              "\n the targets are for the full run)")
    for c in targets:
        spread = (f"   per repeat {min(c['per_repeat']):.2f}-{max(c['per_repeat']):.2f}x"
                  if len(c["per_repeat"]) > 1 else "")
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['model']:<12} {c['check']:<42} {_cells(c['value'])}{spread}")
        for label, values in c["context"].items():
            label = label.replace("exposed_minmax", "the floor").replace("ort_minmax", "ORT MinMax")
            print(f"{'':<20}{label:<42} {_cells(values)}")


def print_checks(results: dict, samples: list[int], runs: dict | None = None, quick: bool = False) -> list[dict]:
    checks = []
    for kind, by_method in results.items():
        q = by_method.get("qinspect", {})
        for n in samples:
            r = q.get(n)
            if r is not None and not ok(r):
                checks.append({"model": kind, "samples": n, "check": "qinspect ran", "value": None, "pass": False,
                               "note": r["error"]})
                continue
            for method in HISTOGRAM_CALIBRATORS:
                o = by_method.get(method, {}).get(n)
                name = f"qinspect faster than {LABELS[method][4:]}"
                if ok(r) and ok(o):
                    checks.append({"model": kind, "samples": n, "check": name,
                                   "value": o["seconds"] / r["seconds"], "pass": r["seconds"] < o["seconds"]})
                elif ok(r) and o is not None:
                    checks.append({"model": kind, "samples": n, "check": name, "value": None, "pass": True,
                                   "note": f"{method} failed: {o['error']}"})
        first, last = q.get(samples[0]), q.get(samples[-1])
        if ok(first) and ok(last) and len(samples) > 1:
            growth = last["peak_mib"] / first["peak_mib"] - 1
            checks.append({"model": kind, "samples": samples[-1],
                           "check": f"peak RSS growth N={samples[0]}->{samples[-1]} < 10%",
                           "value": growth, "pass": growth < 0.10})
    targets = target_checks(results, runs or {}, samples)
    if targets:
        print_targets(targets, samples, quick)
    print("\nChecks (design section 7)")
    for c in checks:
        value = c["value"]
        if value is None:
            shown = c.get("note", "")
        elif "growth" in c["check"]:
            shown = f"{value:+.1%}"
        else:
            shown = f"it takes {value:.2f}x qinspect's time"
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['model']:<12} N={c['samples']:<5} {c['check']:<38} {shown}")
    return targets + checks


if __name__ == "__main__":
    sys.exit(main())
