"""What the subcommands share: the progress bar, the usage error, the options for the target, the data
and the providers, and opening the model, the data and an encodings file."""
from __future__ import annotations

import sys
import time


# core.quant.ranges.SCHEMES, repeated so that --help needs no numpy (a test keeps them equal)
SCHEMES = ("tf", "tf_adjusted", "tf_enhanced", "percentile", "mse")


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


class _Usage(Exception):
    pass


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _size(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _target_option(p) -> None:
    from ..core.targets.profiles import DEFAULT_TARGET, TARGETS

    described = "; ".join(f"{t.name}: {t.summary}" for t in TARGETS.values())
    p.add_argument("--target", choices=list(TARGETS), default=DEFAULT_TARGET,
                   help=f"what the model will run on (default {DEFAULT_TARGET}). {described}")


def _open_model(args):
    """The model as the chosen target runs it (BatchNormalization folded), with its notes printed."""
    from ..core.ptq.prepare import prepare_model

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
    from ..core.calib.data import open_data

    return open_data(args.data, index.inputs, samples=args.samples, image_size=args.image_size, mean=args.mean,
                     std=args.std, layout=args.layout, channels=args.channels)


def _read_encodings(path, index, target) -> dict:
    """The file's encodings as `target` runs them (its rules applied); what it cannot run is refused."""
    from ..core.io.overrides import read_overrides
    from ..core.plan import encodings_for_target

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
        from ..core.calib.calibrate import available_providers

        missing = [p for p in providers if p not in available_providers()]
        if missing:
            raise _Usage(f"execution provider(s) {', '.join(missing)} not in this onnxruntime; have {available_providers()}")
