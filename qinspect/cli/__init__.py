"""The `qinspect` command: the desktop app, or a subcommand for batch work.

Subcommands import no Qt, so they start fast and run on machines without a display. Exit status is
0 on success and 2 on bad input, with a one-line reason on stderr.
"""
from __future__ import annotations

import argparse
import sys

from .calibrate import _calibrate_parser, run_calibrate
from .common import _Usage
from .measure import _compare_parser, _diff_parser, _export_parser, run_compare, run_diff, run_export
from .shards import _merge_parser, run_merge

SUBCOMMANDS = ("calibrate", "export", "compare", "merge", "diff")


def _run_gui(argv) -> int:
    p = argparse.ArgumentParser(prog="qinspect", description="Inspect and edit the quantization of an ONNX model.")
    p.add_argument("model", nargs="?", help="the ONNX model to open (default: the bundled example)")
    p.add_argument("--encodings", help="an encodings/overrides JSON to load")
    p.add_argument("--session", help="a saved .qinspect session to reopen")
    args = p.parse_args(argv)
    try:
        from ..gui.app import run
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
    from ..core.errors import Cancelled, QInspectError

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
    except BrokenPipeError:  # the reader went away (`qinspect diff ... | head`): nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
