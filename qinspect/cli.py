"""The `qinspect` command: the desktop app, or a subcommand for batch work.

Subcommands import no Qt, so they start fast and run on machines without a display. Exit status is
0 on success and 2 on bad input, with a one-line reason on stderr.
"""
from __future__ import annotations

import argparse
import sys
import time

SUBCOMMANDS = ("calibrate", "export", "compare", "merge", "diff")
SCHEMES = ("tf", "tf_enhanced", "percentile", "mse")


class TerminalProgress:
    """A progress bar on stderr; a line every few seconds when stderr is not a terminal."""

    def __init__(self, stream=None, label: str = "calibrating"):
        self.stream = stream or sys.stderr
        self.label = label
        self.started = time.monotonic()
        self.last = 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        final = total and done >= total
        if not final and now - self.last < (0.1 if self.tty else 5.0):
            return
        self.last = now
        elapsed = now - self.started
        eta = elapsed / done * (total - done) if done else 0.0
        frac = done / total if total else 0.0
        bar = "#" * int(frac * 30)
        line = f"{self.label} [{bar:<30}] {done}/{total} {frac:4.0%} eta {eta:4.0f}s {message}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def cancelled(self) -> bool:
        return False


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _size(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _target_option(p) -> None:
    from .core.targets.profiles import DEFAULT_TARGET, TARGETS

    described = "; ".join(f"{t.name}: {t.summary}" for t in TARGETS.values())
    p.add_argument("--target", choices=list(TARGETS), default=DEFAULT_TARGET,
                   help=f"what the model will run on (default {DEFAULT_TARGET}). {described}")


def _open_model(args):
    """The model as the chosen target runs it (BatchNormalization folded), with its notes printed."""
    from .core.ptq.prepare import prepare_model

    index = prepare_model(args.model, args.target)
    for note in index.notes:
        print(f"qinspect: note: {note}", file=sys.stderr)
    return index


def _data_and_provider_options(p) -> None:
    """Options for reading image folders and choosing onnxruntime providers (calibrate, compare)."""
    p.add_argument("--image-size", type=_size, help="HxW (or one number) to resize images to")
    p.add_argument("--mean", type=_floats, help="per-channel mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_floats, help="per-channel std, e.g. 0.229,0.224,0.225")
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW")
    p.add_argument("--channels", choices=("rgb", "bgr", "gray"), default="rgb")
    p.add_argument("--provider", action="append", help="onnxruntime execution provider (repeatable)")


def _open_data(args, index):
    from .core.calib.data import open_data

    return open_data(args.data, index.inputs, samples=args.samples, image_size=args.image_size, mean=args.mean,
                     std=args.std, layout=args.layout, channels=args.channels)


def _calibrate_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="calibrate a model and write an overrides/encodings JSON")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--data", required=True, help="a .npy, .npz, input list .txt, image folder, or random:N")
    p.add_argument("-o", "--output", help="the encodings JSON to write (needed unless --save-stats is given)")
    p.add_argument("--save-stats", metavar="PART.qstats",
                   help="also write the statistics, for qinspect merge to add up the shards of a calibration")
    p.add_argument("--scheme", choices=SCHEMES, default="tf")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--act-bw", type=int, default=8, choices=(4, 8, 16))
    p.add_argument("--param-bw", type=int, default=8, choices=(4, 8, 16))
    p.add_argument("--per-channel", dest="per_channel", action="store_true", default=True)
    p.add_argument("--no-per-channel", dest="per_channel", action="store_false")
    p.add_argument("--symmetric-activations", action="store_true")
    p.add_argument("--strict-symmetric", action="store_true",
                   help="symmetric tensors use the narrow grid (-127..127 at 8 bits), as AIMET's strict mode")
    p.add_argument("--unsigned-symmetric", action="store_true",
                   help="symmetric tensors that are never negative use the whole unsigned grid from 0")
    p.add_argument("--overrides", help="a user overrides JSON applied on top of the defaults")
    p.add_argument("--format", choices=("0.6.1", "1.0.0", "2.0.0"), default="0.6.1")
    p.add_argument("--samples", type=int, help="use at most N samples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--exact-histograms", action="store_true",
                   help="bin every value into the histograms (slower); by default each batch bins a "
                        "subsample of 16,384 values per tensor, while min/max stay exact")
    p.add_argument("--session", help="also save a session file that the app reopens")
    p.add_argument("--bias-encodings", action="store_true",
                   help="write bias encodings even where the target derives them itself (qnn-htp leaves them out)")
    p.add_argument("--model-out", metavar="OUT.onnx",
                   help="also write the float model the encodings name (BatchNormalization folded as the target "
                        "does, PTQ steps applied)")
    p.add_argument("--ptq", metavar="STEPS",
                   help="PTQ steps, any of cle,seq-mse,adaround,bias-correction (comma separated); they run in "
                        "that order, which is printed")
    p.add_argument("--adaround-iterations", type=int, metavar="N",
                   help="AdaRound's optimisation iterations per layer (default 1000)")
    p.add_argument("--ptq-samples", type=int, metavar="N",
                   help="samples the data-driven PTQ steps learn from (default 128, or all the data has)")
    _target_option(p)
    _data_and_provider_options(p)
    p.add_argument("--target-sqnr", type=float, metavar="DB",
                   help="mixed precision: write the cheapest plan found whose output SQNR on the data reaches DB")
    p.add_argument("--max-accuracy-drop", type=float, metavar="PCT",
                   help="mixed precision: ... whose top-1 on the data (labels needed) is within PCT points of float")
    p.add_argument("--candidates", default="int8,int16", metavar="LIST",
                   help="precisions the search may give a group (default int8,int16; also int4, float16, float32)")
    p.add_argument("--target-samples", type=int, default=32, metavar="N",
                   help="samples the search measures on (default 32)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a QDQ ONNX model from an encodings file")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--encodings", required=True, metavar="ENC.json",
                   help="an encodings/overrides JSON (0.6.1, 1.0.0 or 2.0.0)")
    p.add_argument("--qdq", metavar="OUT.onnx", help="the QDQ ONNX model to write")
    p.add_argument("--ort-overrides", metavar="OUT.json", help="also write onnxruntime TensorQuantOverrides (JSON)")
    _target_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print warnings only")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="run float and quantized side by side and report the error per tensor")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--encodings", required=True, metavar="ENC.json",
                   help="an encodings/overrides JSON (0.6.1, 1.0.0 or 2.0.0)")
    p.add_argument("--data", required=True, help="a .npy, .npz, input list .txt, image folder, or random:N")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("-o", "--output", metavar="REPORT.html", help="write an HTML report")
    p.add_argument("--samples", type=int, metavar="N", help="use at most N samples")
    p.add_argument("--batch-size", type=int, default=8, metavar="B")
    p.add_argument("--top", type=int, default=10, metavar="N", help="tensors listed in the text summary (default 10)")
    p.add_argument("--sensitivity", action="store_true",
                   help="rank quantizer groups (an op's activation, weight and bias) by the output error they cause")
    p.add_argument("--sensitivity-samples", type=int, default=16, metavar="N",
                   help="samples the sensitivity analysis runs on (default 16)")
    p.add_argument("--runtime", action="store_true",
                   help="also run the exported QDQ model in onnxruntime with its default session options and "
                        "report its output SQNR next to the simulated one")
    _target_option(p)
    _data_and_provider_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _read_encodings(path, index, target) -> dict:
    """The file's encodings as `target` runs them (its rules applied); what it cannot run is refused."""
    from .core.io.overrides import read_overrides
    from .core.plan import encodings_for_target

    encodings, warnings = read_overrides(path, index)
    for w in warnings:
        print(f"qinspect: warning: {path}: {w}", file=sys.stderr)
    if not encodings:
        raise _Usage(f"{path}: holds no encodings for this model; write one with qinspect calibrate")
    try:
        return encodings_for_target(index, encodings, target)
    except ValueError as exc:
        raise _Usage(f"{path}: {exc}") from None


def _check_providers(providers) -> None:
    if providers:
        from .core.calib.calibrate import available_providers

        missing = [p for p in providers if p not in available_providers()]
        if missing:
            raise _Usage(f"execution provider(s) {', '.join(missing)} not in this onnxruntime; have {available_providers()}")


def run_export(args) -> int:
    if not args.qdq and not args.ort_overrides:
        raise _Usage("nothing to export: give --qdq OUT.onnx and/or --ort-overrides OUT.json")
    index = _open_model(args)
    encodings = _read_encodings(args.encodings, index, args.target)
    protect = [args.model, args.encodings]
    if args.qdq:
        from .core.io.qdq import export_qdq

        report = export_qdq(index, encodings, args.qdq, protect=protect, target=args.target)
        for line in report.lines():
            if not args.quiet or line.startswith("warning"):
                print(line if line.startswith("wrote") else f"qinspect: {line}", file=sys.stderr)
    if args.ort_overrides:
        from .core.io.ort_overrides import call_lines, ort_overrides_dict, write_ort_overrides

        out = write_ort_overrides(args.ort_overrides, index, encodings, protect=protect + [args.qdq])
        doc = ort_overrides_dict(index, encodings)
        for note in doc["notes"]:
            print(f"qinspect: note: {note}", file=sys.stderr)
        if not args.quiet:
            print(f"wrote {out}: onnxruntime TensorQuantOverrides; onnxruntime takes them as", file=sys.stderr)
            print("\n".join("  " + line for line in call_lines(doc, out)), file=sys.stderr)
    return 0


def _summary(comparison, top: int) -> str:
    from .core.io.report import _db

    def db(v):
        return _db(v).replace("&ndash;", "-").replace("&infin;", "inf")

    lines = []
    c = comparison
    if c.accuracy_float is not None:
        lines.append(f"accuracy: float {100 * c.accuracy_float:.2f}%  quantized {100 * c.accuracy_quantized:.2f}%  "
                     f"({100 * (c.accuracy_quantized - c.accuracy_float):+.2f} points, {c.samples} samples)")
    for o in c.outputs.values():
        lines.append(f"output {o.name}: SQNR {db(o.sqnr_db)} dB, relative error {o.rel_error:.3g}")
    worst = c.worst(top)
    if worst:
        width = max(len(t.name) for t in worst)
        lines.append(f"worst {len(worst)} of {len(c.tensors)} tensors (SQNR dB at the tensor / of its own quantizer):")
        for t in worst:
            lines.append(f"  {t.name:<{width}}  {t.kind:<10} {t.encoding:<10} {db(t.sqnr_db):>7} "
                         f"{db(t.local_sqnr_db):>7}  rel {t.rel_error:.3g}")
    return "\n".join(lines)


def run_compare(args) -> int:
    import json

    from .core.analysis.compare import compare
    from .core.progress import NullProgress

    if args.sensitivity_samples < 1:
        raise _Usage("--sensitivity-samples must be at least 1")
    if args.samples is not None and args.samples < 1:
        raise _Usage("--samples must be at least 1")
    if args.batch_size < 1:
        raise _Usage("--batch-size must be at least 1")
    _check_providers(args.provider)
    index = _open_model(args)
    encodings = _read_encodings(args.encodings, index, args.target)
    data = _open_data(args, index)
    progress = NullProgress() if args.quiet else TerminalProgress(label="comparing")
    ranking, info = None, None
    with data:
        result = compare(index, encodings, data, progress=progress, batch_size=args.batch_size,
                         providers=args.provider or None, runtime=args.runtime, target=args.target)
        if args.sensitivity:
            from .core.analysis.sensitivity import sensitivity

            started = time.perf_counter()
            ranking = sensitivity(index, encodings, data, samples=args.sensitivity_samples,
                                  batch_size=args.batch_size, providers=args.provider or None,
                                  progress=NullProgress() if args.quiet else TerminalProgress(label="sensitivity"))
            info = _sensitivity_info(ranking, min(args.sensitivity_samples, len(data)),
                                     time.perf_counter() - started)
    if args.output:
        from .core.io.report import write_report

        out = write_report(args.output, result, protect=[args.model, args.encodings, args.data],
                           model=args.model, data=args.data, encodings_file=args.encodings,
                           sensitivity=ranking, sensitivity_info=info, target=args.target)
        if not args.quiet:
            print(f"wrote {out}", file=sys.stderr)
    for note in result.notes:
        print(f"qinspect: note: {note}", file=sys.stderr)
    if result.runtime is not None:
        for line in result.runtime.lines():
            print(f"qinspect: {line}" if line.startswith("warning") else line, file=sys.stderr)
    if args.json:
        doc = {"model": args.model, "encodings": args.encodings, "data": args.data, "target": args.target,
               **result.to_dict()}
        if ranking is not None:
            doc["sensitivity"] = [e.to_dict() for e in ranking]
            doc["sensitivity_info"] = info
        print(json.dumps(doc, indent=2))
    else:
        print(_summary(result, args.top))
        if ranking is not None:
            print(_sensitivity_summary(ranking, info))
    return 0


def _sensitivity_info(ranking, samples: int, seconds: float) -> dict:
    import math

    first = ranking[0] if ranking else None
    plan = first.plan_sqnr if first is not None else None
    return {"samples": samples, "seconds": round(seconds, 3),
            "plan_sqnr": plan if plan is not None and math.isfinite(plan) else None,
            "plan_accuracy": first.plan_accuracy if first is not None else None,
            "score": "only_float_sqnr - only_quantized_sqnr (dB); higher is more sensitive"}


def _sensitivity_summary(ranking, info) -> str:
    def db(v):
        return "-" if v is None else ("inf" if v == float("inf") else ("-inf" if v == float("-inf") else f"{v:.1f}"))

    plan = info["plan_sqnr"]
    lines = [f"sensitivity on {info['samples']} samples in {info['seconds']:.2f}s (output SQNR of the plan "
             f"{db(plan)} dB), most sensitive first; SQNR dB with only this group quantized / only it float:"]
    width = max([len(e.group.name) for e in ranking] + [5])
    lines.append(f"  {'#':>2}  {'group':<{width}}  {'op':<12} {'score':>6} {'alone':>6} {'float':>6}  tensors")
    for i, e in enumerate(ranking, 1):
        score = "-" if not e.quantized else db(e.score)
        lines.append(f"  {i:>2}  {e.group.name:<{width}}  {e.group.op_type:<12} {score:>6} "
                     f"{db(e.only_quantized_sqnr):>6} {db(e.only_float_sqnr):>6}  {', '.join(e.group.tensors)}")
    return "\n".join(lines)


def run_calibrate(args) -> int:
    from .core.calib.calibrate import DEFAULT_HISTOGRAM_SAMPLE, calibrate
    from .core.io.overrides import (apply_overrides, file_encodings, format_warnings, quantizer_args, read_overrides,
                                    write_overrides)
    from .core.plan import Defaults, PrecisionPlan, derive_encodings, refusals, rule_effects
    from .core.progress import NullProgress

    if not args.output and not args.save_stats:
        raise _Usage("give -o ENC.json (the encodings), --save-stats PART.qstats (a shard's statistics), or both")
    if args.samples is not None and args.samples < 1:
        raise _Usage("--samples must be at least 1")
    if args.batch_size < 1:
        raise _Usage("--batch-size must be at least 1")
    index = _open_model(args)
    data = _open_data(args, index)
    defaults = Defaults(
        act_bw=args.act_bw,
        param_bw=args.param_bw,
        act_scheme=args.scheme,
        param_scheme=args.scheme,
        act_symmetric=args.symmetric_activations,
        per_channel=args.per_channel,
        percentile=args.percentile,
        strict_symmetric=args.strict_symmetric,
        unsigned_symmetric=args.unsigned_symmetric,
    )
    plan = PrecisionPlan(defaults, args.target)
    if args.overrides:
        encodings, warnings = read_overrides(args.overrides, index)
        for w in warnings:
            print(f"qinspect: warning: {args.overrides}: {w}", file=sys.stderr)
        apply_overrides(plan, encodings)
    problems = refusals(index, plan)
    if problems:
        where = f"{args.overrides}: " if args.overrides else ""
        raise _Usage(where + "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
    _check_providers(args.provider)
    providers = args.provider or None
    progress = NullProgress() if args.quiet else TerminalProgress()
    sample = None if args.exact_histograms else DEFAULT_HISTOGRAM_SAMPLE
    steps = _ptq_steps(args)
    if steps and args.save_stats:
        raise _Usage("--save-stats keeps the statistics of the model as it is: calibrate the shards without --ptq, "
                     "merge them, then apply PTQ steps (in the window, or calibrate --ptq on the merged data)")
    records = []
    if "cle" in steps:  # data-free, and it changes the activations: before calibrating, so once is enough
        index, _ = _ptq_step(args, "cle", index, plan, {}, data, records, providers)
    result = calibrate(index, data, batch_size=args.batch_size, progress=progress, providers=providers,
                       histogram_sample=sample)
    for name, why in result.skipped.items():
        print(f"qinspect: warning: {name}: no statistics ({why})", file=sys.stderr)
    for line in result.warnings:
        print(f"qinspect: warning: {line}", file=sys.stderr)
    for name, s in result.stats.items():
        if s.nonfinite_count:
            print(
                f"qinspect: warning: {name}: {s.nan_count} NaN and {s.posinf_count + s.neginf_count} Inf "
                "values were left out of its range",
                file=sys.stderr,
            )
    protect = [args.model] + ([args.overrides] if args.overrides else [])
    if args.save_stats:
        from .core.io.stats_file import StatsFile, fingerprint, save_stats

        constants = [n for n in list(index.weights()) + list(index.biases()) if n in result.stats]
        saved = save_stats(args.save_stats, StatsFile(args.model, fingerprint(index), args.target, result.samples,
                                                      result.stats, constants, args.data, sample is not None),
                           protect=protect)
        if not args.quiet:
            print(f"wrote {saved}: statistics of {result.samples} samples (qinspect merge adds shards up)",
                  file=sys.stderr)
        if not args.output:
            return 0
    for step in steps:
        if step != "cle":
            index, _ = _ptq_step(args, step, index, plan, result.stats, data, records, providers)
    if args.target_sqnr is not None or args.max_accuracy_drop is not None:
        plan = _to_target(args, index, plan, result.stats, data, providers, progress)
        if plan is None:
            return 1
    encodings = derive_encodings(index, result.stats, plan)
    for line in _rule_summary(rule_effects(index, plan)):
        print(f"qinspect: note: {line}", file=sys.stderr)
    written = file_encodings(index, encodings, target=args.target, edited=plan.edited(),
                             bias_encodings=True if args.bias_encodings else None, version=args.format)
    for line in format_warnings(written, args.format):
        print(f"qinspect: warning: {line}", file=sys.stderr)
    kinds = {name: index.targets[name].kind for name in written}
    out = write_overrides(args.output, written, kinds, args.format, quantizer_args(plan.defaults), protect=protect,
                          target=args.target)
    if args.model_out:
        from .core.io.qdq import save_model

        model_out = save_model(index, args.model_out, protect=protect + [args.output])
        if not args.quiet:
            print(f"wrote {model_out}: the float model the encodings name", file=sys.stderr)
    if args.session:
        from .core.io.session import Session, save_session

        options = {k: v for k, v in (("image_size", args.image_size), ("mean", args.mean), ("std", args.std),
                                     ("layout", args.layout), ("channels", args.channels)) if v is not None}
        session = Session(args.model, args.data, result.stats, plan, options, result.samples)
        if records:
            session.steps = [r.to_dict() for r in records]
            session.model, session.ptq_values, session.bn_params = index.model, index.ptq_values, index.bn_params
        save_session(args.session, session, protect=protect)
    if not args.quiet:
        left = len(encodings) - len(written)
        print(f"wrote {out}: {len(written)} encodings for target {args.target} from {result.samples} samples in "
              f"{result.seconds:.1f}s" + (f" ({left} bias encodings left out: the target derives them; "
                                           f"--bias-encodings writes them)" if left else ""), file=sys.stderr)
    return 0


def _merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="add up the statistics of calibration shards (calibrate --save-stats)")
    p.add_argument("parts", nargs="+", metavar="PART.qstats")
    p.add_argument("-o", "--output", required=True, metavar="OUT.qinspect", help="the session to write (the app opens it)")
    p.add_argument("--encodings", metavar="ENC.json", help="also write the encodings the merged statistics give "
                   "(default settings of calibrate, the shards' target)")
    p.add_argument("--format", choices=("0.6.1", "1.0.0", "2.0.0"), default="0.6.1")
    p.add_argument("-q", "--quiet", action="store_true")


def run_merge(args) -> int:
    from .core.io.session import Session, save_session
    from .core.io.stats_file import fingerprint, merge_stats
    from .core.plan import PrecisionPlan

    merged = merge_stats(args.parts)
    plan = PrecisionPlan(target=merged.target)
    protect = list(args.parts) + [merged.model_path]
    out = save_session(args.output, Session(merged.model_path, None, merged.stats, plan, {}, merged.samples),
                       protect=protect)
    if args.encodings:
        from .core.io.overrides import file_encodings, quantizer_args, write_overrides
        from .core.plan import derive_encodings
        from .core.ptq.prepare import prepare_model

        index = prepare_model(merged.model_path, target=merged.target)
        if fingerprint(index) != merged.fingerprint:
            raise _Usage(f"{merged.model_path} has changed since the shards were calibrated; calibrate them again")
        written = file_encodings(index, derive_encodings(index, merged.stats, plan), target=merged.target,
                                 version=args.format)
        write_overrides(args.encodings, written, {n: index.targets[n].kind for n in written}, args.format,
                        quantizer_args(plan.defaults), protect=protect + [args.output], target=merged.target)
    if not args.quiet:
        print(f"wrote {out}: statistics of {merged.samples} samples from {len(args.parts)} shards"
              + (f", and {args.encodings}" if args.encodings else ""), file=sys.stderr)
    return 0


def _diff_parser(sub) -> None:
    p = sub.add_parser("diff", help="two encodings files side by side: per tensor and per output, with what differs")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--a", required=True, metavar="ENC_A.json")
    p.add_argument("--b", required=True, metavar="ENC_B.json")
    p.add_argument("--b-model", metavar="MODEL_B.onnx", help="B's own model, where its weights differ (after QAT)")
    p.add_argument("--data", required=True, help="a .npy, .npz, input list .txt, image folder, or random:N")
    p.add_argument("--samples", type=int, metavar="N", help="use at most N samples")
    p.add_argument("--batch-size", type=int, default=8, metavar="B")
    p.add_argument("--json", action="store_true", help="print the table as JSON on stdout")
    p.add_argument("--top", type=int, default=15, metavar="N", help="changed tensors listed in the text (default 15)")
    _target_option(p)
    _data_and_provider_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_diff(args) -> int:
    import json

    from .core.analysis.diff import diff
    from .core.progress import NullProgress
    from .core.ptq.prepare import prepare_model

    index = _open_model(args)
    index_b = prepare_model(args.b_model, args.target) if args.b_model else None
    data = _open_data(args, index)
    _check_providers(args.provider)
    a = _read_encodings(args.a, index, args.target)
    b = _read_encodings(args.b, index_b or index, args.target)
    progress = NullProgress() if args.quiet or args.json else TerminalProgress()
    result = diff(index, a, b, data, index_b=index_b, samples=args.samples, batch_size=args.batch_size,
                  progress=progress, providers=args.provider or None)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    print(f"A: {args.a}\nB: {args.b}" + (f" (model {args.b_model})" if args.b_model else "") + f"\n{result.samples} samples")
    for name, (sa, sb) in result.outputs.items():
        print(f"output {name}: SQNR A {sa:.1f} dB, B {sb:.1f} dB ({sb - sa:+.1f})")
    if result.accuracy:
        f, ta, tb = result.accuracy
        print(f"top-1: float {f:.1%}, A {ta:.1%}, B {tb:.1%}")
    changed = sorted((t for t in result.tensors if t.changed), key=lambda t: -abs(t.sqnr_change or 0.0))
    print(f"{len(changed)} of {len(result.tensors)} tensors differ" + (":" if changed else ""))
    for t in changed[:args.top]:
        def show(s):
            rng = "" if s.min is None else f" [{s.min:.4g}, {s.max:.4g}]"
            return f"{s.encoding}{rng} {s.sqnr_db:.1f} dB" if s.sqnr_db is not None else s.encoding
        print(f"  {t.name:<28} A {show(t.a):<36} B {show(t.b):<36} ({', '.join(t.changed)})")
    return 0


def _candidates(text: str) -> list[str]:
    from .core.analysis.sensitivity import PRECISIONS

    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in PRECISIONS]
    if unknown or len(names) < 2:
        raise _Usage(f"--candidates {text}: give two or more of {', '.join(PRECISIONS)}"
                     + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    return names


def _to_target(args, index, plan, stats, data, providers, progress):
    """The cheapest plan the search finds that meets --target-sqnr / --max-accuracy-drop, or None
    (and what limits it) when the candidates cannot."""
    from .core.analysis.search import plan_with
    from .core.analysis.to_target import search_to_target
    from .core.plan import refusals

    cands = _candidates(args.candidates)
    if args.target_samples < 1:
        raise _Usage("--target-samples must be at least 1")
    if args.max_accuracy_drop is not None and args.max_accuracy_drop < 0:
        raise _Usage("--max-accuracy-drop must be 0 or more (percentage points of top-1)")
    try:
        r = search_to_target(index, stats, plan, data, target_sqnr=args.target_sqnr,
                             max_accuracy_drop=args.max_accuracy_drop, candidates=cands,
                             samples=args.target_samples, batch_size=args.batch_size, providers=providers,
                             progress=progress)
    except ValueError as exc:  # a candidate the target cannot run, or an accuracy target without labels
        raise _Usage(("--candidates: " if str(exc).startswith("candidate") else f"{args.data}: ") + str(exc)) from exc

    def line(label, sqnr, acc, cost):
        top1 = "" if acc is None else f", top-1 {100 * acc:.1f}%"
        return f"  {label:<10} output SQNR {sqnr:6.1f} dB{top1}, cost {cost:.2f}"

    out = [f"qinspect: mixed precision to {r.goal} (on {r.samples} samples; candidates {', '.join(cands)}; "
           "cost: bit operations over all " + cands[0] + ")"]
    if r.float_accuracy is not None:
        out.append(f"  float      top-1 {100 * r.float_accuracy:.1f}%")
    out.append(line(r.cheapest.label, r.cheapest.sqnr, r.cheapest.accuracy, r.cheapest.cost))
    out.append(line(r.dearest.label, r.dearest.sqnr, r.dearest.accuracy, r.dearest.cost))
    if r.point is not None:
        moved = r.promoted()
        names = ", ".join(f"{g} ({p})" for g, p in list(moved.items())[:6]) + (" ..." if len(moved) > 6 else "")
        out.append(line("chosen" if r.met else "best found", r.point.output_sqnr, r.point.accuracy, r.point.cost)
                   + f": {len(moved)} of {len(r.point.precisions)} groups moved" + (f": {names}" if moved else ""))
    print("\n".join(out), file=sys.stderr)
    if not r.met:
        limits = "; ".join(f"{g} (float32 would give {gain:+.1f} dB)" for g, _, gain in r.limits[:5])
        print(f"qinspect: error: the candidates {', '.join(cands)} cannot reach {r.goal} on this data"
              + (f"; what limits it: {limits}" if limits else "")
              + "; add float16 or float32 to --candidates, or lower the target. Nothing written.", file=sys.stderr)
        return None
    chosen = plan_with(plan, r.point.changes)
    problems = refusals(index, chosen)
    if problems:
        raise _Usage("the chosen plan: " + "; ".join(problems[:3]))
    return chosen


def _ptq_steps(args) -> list[str]:
    from .core.steps import ORDER, parse_steps

    if not args.ptq:
        if args.adaround_iterations is not None or args.ptq_samples is not None:
            raise _Usage("--adaround-iterations and --ptq-samples go with --ptq")
        return []
    try:
        steps = parse_steps(args.ptq)
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    if args.adaround_iterations is not None and args.adaround_iterations < 1:
        raise _Usage("--adaround-iterations must be at least 1")
    if args.ptq_samples is not None and args.ptq_samples < 1:
        raise _Usage("--ptq-samples must be at least 1")
    if not args.quiet:
        print(f"qinspect: PTQ steps, in this order: {' -> '.join(steps)} (always {', '.join(ORDER)})", file=sys.stderr)
    return steps


def _ptq_step(args, step, index, plan, stats, data, records, providers):
    """Run one step on the command line's state; frozen encodings go into `plan`. Returns (index, outcome)."""
    from dataclasses import replace

    from .core.errors import QInspectError
    from .core.progress import NullProgress
    from .core.steps import run_step

    options = {}
    if step in ("seq-mse", "adaround", "bias-correction") and args.ptq_samples is not None:
        options["samples"] = args.ptq_samples
    if step == "adaround" and args.adaround_iterations is not None:
        options["iterations"] = args.adaround_iterations
    progress = NullProgress() if args.quiet else TerminalProgress(label=step)
    try:
        outcome = run_step(step, index, plan, stats, data, options=options, done=[r.step for r in records],
                           providers=providers, progress=progress)
    except QInspectError as exc:
        raise _Usage(str(exc)) from None
    for name, enc in outcome.frozen.items():
        plan.restore(name, replace(plan.edit(name), encoding=enc))
    records.append(outcome.record)
    if not args.quiet:
        print(f"qinspect: {outcome.record.title} in {outcome.record.seconds:.1f}s", file=sys.stderr)
        for line in outcome.record.notes:
            print(f"qinspect:   {line}", file=sys.stderr)
    return outcome.index, outcome


def _rule_summary(effects: dict) -> list[str]:
    """One line per kind of rule that changed tensors, naming a few of them."""
    by_rule: dict[str, list[str]] = {}
    for name, effect in effects.items():
        by_rule.setdefault(effect.rule, []).append(name)
    lines = []
    for rule, names in by_rule.items():
        example = effects[names[0]].message
        more = f" (and {len(names) - 1} more tensor(s): {', '.join(names[1:5])}{' ...' if len(names) > 5 else ''})" \
            if len(names) > 1 else ""
        lines.append(f"{names[0]}: {example}{more}")
    return lines


class _Usage(Exception):
    pass


def _run_gui(argv) -> int:
    p = argparse.ArgumentParser(prog="qinspect", description="Inspect and edit the quantization of an ONNX model.")
    p.add_argument("model", nargs="?", help="the ONNX model to open (default: the bundled example)")
    p.add_argument("--encodings", help="an encodings/overrides JSON to load")
    p.add_argument("--session", help="a saved .qinspect session to reopen")
    args = p.parse_args(argv)
    try:
        from .gui.app import run
    except ImportError as exc:
        print(f"qinspect: the desktop app cannot start ({exc}); the subcommands {SUBCOMMANDS} still work", file=sys.stderr)
        return 2
    return run(args.model, encodings=args.encodings, session=args.session)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: qinspect [MODEL.onnx] [--encodings ENC.json] [--session S.qinspect]\n"
                  f"       qinspect {{{','.join(SUBCOMMANDS)}}} ...   (see qinspect SUBCOMMAND --help)")
            return 0
        return _run_gui(argv)
    parser = argparse.ArgumentParser(prog="qinspect")
    sub = parser.add_subparsers(dest="command", required=True)
    _calibrate_parser(sub)
    _export_parser(sub)
    _compare_parser(sub)
    _merge_parser(sub)
    _diff_parser(sub)
    args = parser.parse_args(argv)
    from .core.errors import Cancelled, QInspectError

    try:
        return {"calibrate": run_calibrate, "export": run_export, "compare": run_compare,
                "merge": run_merge, "diff": run_diff}[args.command](args)
    except _Usage as exc:
        print(f"qinspect: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print("qinspect: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nqinspect: interrupted; nothing was written", file=sys.stderr)
        return 130
    except QInspectError as exc:
        print(f"qinspect: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
