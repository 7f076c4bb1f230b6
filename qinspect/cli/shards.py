"""`qinspect merge`: the statistics of calibration shards (`calibrate --save-stats`) added up."""
from __future__ import annotations

import sys

from .common import _Usage


def _merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="add up the statistics of calibration shards (calibrate --save-stats)")
    p.add_argument("parts", nargs="+", metavar="PART.qstats")
    p.add_argument("-o", "--output", required=True, metavar="OUT.qinspect", help="the session to write (the app opens it)")
    p.add_argument("--encodings", metavar="ENC.json", help="also write the encodings the merged statistics give "
                   "(default settings of calibrate, the shards' target)")
    p.add_argument("--format", choices=("0.6.1", "1.0.0", "2.0.0", "2.1.0"), default="0.6.1")
    p.add_argument("-q", "--quiet", action="store_true")


def run_merge(args) -> int:
    from ..core.io.session import Session, save_session
    from ..core.io.stats_file import fingerprint, merge_stats
    from ..core.plan import PrecisionPlan

    merged = merge_stats(args.parts)
    plan = PrecisionPlan(target=merged.target)
    protect = list(args.parts) + [merged.model_path]
    out = save_session(args.output, Session(merged.model_path, None, merged.stats, plan, {}, merged.samples),
                       protect=protect)
    if args.encodings:
        from ..core.io.overrides import file_encodings, quantizer_args, write_overrides
        from ..core.plan import derive_encodings
        from ..core.ptq.prepare import prepare_model

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
