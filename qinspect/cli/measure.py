"""`qinspect export`, `compare` and `diff`: what a set of encodings gives, and two sets side by side."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import TerminalProgress, _Usage, _target_option, _open_model, _data_and_provider_options, _open_data, _read_encodings, _check_providers


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a QDQ ONNX model from an encodings file")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--encodings", required=True, metavar="ENC.json",
                   help="an encodings/overrides JSON (0.6.1, 1.0.0 or 2.0.0)")
    p.add_argument("--qdq", metavar="OUT.onnx", help="the QDQ ONNX model to write")
    p.add_argument("--ort-overrides", metavar="OUT.json", help="also write onnxruntime TensorQuantOverrides (JSON)")
    _target_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print warnings only")


def run_export(args) -> int:
    if not args.qdq and not args.ort_overrides:
        raise _Usage("nothing to export: give --qdq OUT.onnx and/or --ort-overrides OUT.json")
    index = _open_model(args)
    encodings = _read_encodings(args.encodings, index, args.target)
    protect = [args.model, args.encodings]
    if args.qdq:
        from ..core.io.qdq import export_qdq

        report = export_qdq(index, encodings, args.qdq, protect=protect, target=args.target)
        for line in report.lines():
            if not args.quiet or line.startswith("warning"):
                print(line if line.startswith("wrote") else f"qinspect: {line}", file=sys.stderr)
    if args.ort_overrides:
        from ..core.io.ort_overrides import call_lines, ort_overrides_dict, write_ort_overrides

        out = write_ort_overrides(args.ort_overrides, index, encodings, protect=protect + [args.qdq])
        doc = ort_overrides_dict(index, encodings)
        for note in doc["notes"]:
            print(f"qinspect: note: {note}", file=sys.stderr)
        if not args.quiet:
            print(f"wrote {out}: onnxruntime TensorQuantOverrides; onnxruntime takes them as", file=sys.stderr)
            print("\n".join("  " + line for line in call_lines(doc, out)), file=sys.stderr)
    return 0


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


def _summary(comparison, top: int) -> str:
    from ..core.io.report import _db

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

    from ..core.analysis.compare import compare
    from ..core.progress import NullProgress

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
            from ..core.analysis.sensitivity import sensitivity

            started = time.perf_counter()
            ranking = sensitivity(index, encodings, data, samples=args.sensitivity_samples,
                                  batch_size=args.batch_size, providers=args.provider or None,
                                  progress=NullProgress() if args.quiet else TerminalProgress(label="sensitivity"))
            info = _sensitivity_info(ranking, min(args.sensitivity_samples, len(data)),
                                     time.perf_counter() - started)
    if args.output:
        from ..core.io.report import write_report

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


def _diff_parser(sub) -> None:
    p = sub.add_parser("diff", help="two encodings files side by side: per tensor and per output, with what differs")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--a", required=True, metavar="ENC_A.json",
                   help="an encodings file, or a session (.qinspect: its encodings, and its model when PTQ steps "
                        "rewrote it)")
    p.add_argument("--b", required=True, metavar="ENC_B.json", help="the same for B")
    p.add_argument("--b-model", metavar="MODEL_B.onnx", help="B's own model, where its weights differ (after QAT)")
    p.add_argument("--data", required=True, help="a .npy, .npz, input list .txt, image folder, or random:N")
    p.add_argument("--samples", type=int, metavar="N", help="use at most N samples")
    p.add_argument("--batch-size", type=int, default=8, metavar="B")
    p.add_argument("--json", action="store_true", help="print the table as JSON on stdout")
    p.add_argument("--top", type=int, default=15, metavar="N", help="changed tensors listed in the text (default 15)")
    _target_option(p)
    _data_and_provider_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _side(path, index, target):
    """One side's encodings and, for a session whose PTQ steps rewrote the model, that model's index."""
    if not str(path).endswith(".qinspect"):
        return _read_encodings(path, index, target), None
    from ..core.errors import QInspectError
    from ..core.project import session_configuration

    try:
        return session_configuration(path, index, target)
    except QInspectError as exc:
        raise _Usage(str(exc)) from None


def run_diff(args) -> int:
    import json

    from ..core.analysis.diff import diff
    from ..core.progress import NullProgress
    from ..core.ptq.prepare import prepare_model

    index = _open_model(args)
    index_b = prepare_model(args.b_model, args.target) if args.b_model else None
    data = _open_data(args, index)
    _check_providers(args.provider)
    a, index_a = _side(args.a, index, args.target)
    if index_a is not None:
        index = index_a
    b, own_b = _side(args.b, index_b or index, args.target)
    if own_b is not None:
        if args.b_model:
            raise _Usage(f"{args.b}: this session's PTQ steps rewrote its model; leave out --b-model")
        index_b = own_b
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
