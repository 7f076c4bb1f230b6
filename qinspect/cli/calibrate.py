"""`qinspect calibrate`: statistics, encodings, PTQ steps and mixed precision to a target."""
from __future__ import annotations

import sys

from .common import SCHEMES, TerminalProgress, _Usage, _target_option, _open_model, _data_and_provider_options, _open_data, _check_providers


def _calibrate_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="calibrate a model and write an overrides/encodings JSON")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--data", required=True, help="a .npy, .npz, input list .txt, image folder, or random:N")
    p.add_argument("-o", "--output", help="the encodings JSON to write (needed unless --session or --save-stats is given)")
    p.add_argument("--save-stats", metavar="PART.qstats",
                   help="also write the statistics, for qinspect merge to add up the shards of a calibration")
    p.add_argument("--scheme", choices=SCHEMES, default="tf",
                   help="how ranges are chosen, for activations and weights (tf: exact min/max)")
    p.add_argument("--param-scheme", choices=SCHEMES,
                   help="the weights' scheme when it differs from --scheme; tf_adjusted is QNN's TF Adjusted weight "
                        "mode (8-bit asymmetric weights keep both ends of their range on the grid)")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--act-bw", type=int, default=8, choices=(4, 8, 16))
    p.add_argument("--param-bw", type=int, default=8, choices=(4, 8, 16))
    p.add_argument("--per-channel", dest="per_channel", action="store_true", default=True)
    p.add_argument("--no-per-channel", dest="per_channel", action="store_false")
    p.add_argument("--symmetric-activations", action="store_true")
    p.add_argument("--asymmetric-weights", action="store_true",
                   help="per-tensor weights get an asymmetric grid (TF) instead of a symmetric one; per-channel "
                        "weights stay symmetric, as QNN requires")
    p.add_argument("--strict-symmetric", action="store_true",
                   help="symmetric tensors use the narrow grid (-127..127 at 8 bits), as AIMET's strict mode")
    p.add_argument("--unsigned-symmetric", action="store_true",
                   help="symmetric tensors that are never negative use the whole unsigned grid from 0")
    p.add_argument("--pow2", choices=("round", "ceil", "floor"),
                   help="power-of-two scales with zero point 0 (NNabla's pow2): the nearest power of two to the "
                        "symmetric scale, the next one up (covers the range) or down (clips its ends)")
    p.add_argument("--overrides", help="a user overrides JSON applied on top of the defaults")
    p.add_argument("--format", choices=("0.6.1", "1.0.0", "2.0.0", "2.1.0"), default="0.6.1")
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


def run_calibrate(args) -> int:
    from ..core.calib.calibrate import DEFAULT_HISTOGRAM_SAMPLE, calibrate
    from ..core.io.overrides import (apply_overrides, file_encodings, format_warnings, quantizer_args, read_overrides,
                                    write_overrides)
    from ..core.plan import Defaults, PrecisionPlan, derive_encodings, refusals, rule_effects
    from ..core.targets.rules import summary
    from ..core.progress import NullProgress

    if not (args.output or args.save_stats or args.session):
        raise _Usage("give -o ENC.json (the encodings), --session OUT.qinspect (a session the window opens), "
                     "--save-stats PART.qstats (a shard's statistics), or several")
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
        param_scheme=args.param_scheme or args.scheme,
        act_symmetric=args.symmetric_activations,
        param_symmetric=not args.asymmetric_weights,
        per_channel=args.per_channel,
        percentile=args.percentile,
        strict_symmetric=args.strict_symmetric,
        unsigned_symmetric=args.unsigned_symmetric,
        pow2=args.pow2,
    )
    plan = PrecisionPlan(defaults, args.target)
    if defaults.param_scheme == "tf_adjusted" and (defaults.param_symmetric or defaults.per_channel):
        print("qinspect: note: tf_adjusted changes asymmetric 8-bit weights only; add --asymmetric-weights "
              "--no-per-channel for it to apply to every weight", file=sys.stderr)
    if args.overrides:
        encodings, warnings = read_overrides(args.overrides, index)
        for w in warnings:
            print(f"qinspect: warning: {args.overrides}: {w}", file=sys.stderr)
        apply_overrides(plan, encodings)
    problems = refusals(index, plan)
    if problems:
        where = f"{args.overrides}: " if args.overrides else ""
        raise _Usage(where + summary(problems))
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
        from ..core.io.stats_file import StatsFile, fingerprint, save_stats

        constants = [n for n in list(index.weights()) + list(index.biases()) if n in result.stats]
        saved = save_stats(args.save_stats, StatsFile(args.model, fingerprint(index), args.target, result.samples,
                                                      result.stats, constants, args.data, sample is not None),
                           protect=protect)
        if not args.quiet:
            print(f"wrote {saved}: statistics of {result.samples} samples (qinspect merge adds shards up)",
                  file=sys.stderr)
        if not args.output and not args.session:
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
    out = args.output and write_overrides(args.output, written, kinds, args.format, quantizer_args(plan.defaults),
                                          protect=protect, target=args.target)
    if args.model_out:
        from ..core.io.qdq import save_model

        model_out = save_model(index, args.model_out, protect=protect + [p for p in (args.output,) if p])
        if not args.quiet:
            print(f"wrote {model_out}: the float model the encodings name", file=sys.stderr)
    if args.session:
        from ..core.io.session import Session, save_session

        options = {k: v for k, v in (("image_size", args.image_size), ("mean", args.mean), ("std", args.std),
                                     ("layout", args.layout), ("channels", args.channels)) if v is not None}
        session = Session(args.model, args.data, result.stats, plan, options, result.samples)
        if records:
            session.steps = [r.to_dict() for r in records]
            session.model, session.ptq_values, session.bn_params = index.model, index.ptq_values, index.bn_params
        saved_session = save_session(args.session, session, protect=protect)
        if not args.quiet:
            print(f"wrote {saved_session}: the session (qinspect --session {saved_session} opens it)", file=sys.stderr)
    if out and not args.quiet:
        left = len(encodings) - len(written)
        print(f"wrote {out}: {len(written)} encodings for target {args.target} from {result.samples} samples in "
              f"{result.seconds:.1f}s" + (f" ({left} bias encodings left out: the target derives them; "
                                           f"--bias-encodings writes them)" if left else ""), file=sys.stderr)
    return 0


def _candidates(text: str) -> list[str]:
    from ..core.analysis.sensitivity import PRECISIONS

    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in PRECISIONS]
    if unknown or len(names) < 2:
        raise _Usage(f"--candidates {text}: give two or more of {', '.join(PRECISIONS)}"
                     + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    return names


def _to_target(args, index, plan, stats, data, providers, progress):
    """The cheapest plan the search finds that meets --target-sqnr / --max-accuracy-drop, or None
    (and what limits it) when the candidates cannot."""
    from ..core.analysis.search import plan_with
    from ..core.analysis.to_target import search_to_target
    from ..core.plan import refusals

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
    from ..core.steps import ORDER, parse_steps

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

    from ..core.errors import QInspectError
    from ..core.progress import NullProgress
    from ..core.steps import run_step

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
