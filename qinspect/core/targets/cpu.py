"""Which CPU this is, and whether onnxruntime's integer kernels would saturate a QDQ model on it.

On x86 CPUs with AVX2 (or AVX-512) but without VNNI, onnxruntime fuses 8-bit QDQ Conv, Gemm and
MatMul into u8s8 kernels whose VPMADDUBSW step adds two uint8 x int8 products in 16 bits with
saturation: 2 x 255 x |w| overflows 32767 once an int8 weight code passes 64. VNNI (VPDPBUSD) and
AMX accumulate in 32 bits; depthwise Convs, uint8 weights (u8u8) and 16-bit activations take
other paths. So a model is exposed when an 8-bit integer input meets a signed 8-bit weight whose
codes pass +-64 on such a CPU. (onnxruntime's own check uses the same bound, [-64, 64].)
"""
from __future__ import annotations

import platform

import numpy as np

from .rules import is_depthwise
from .profiles import WEIGHTED_OPS

SAFE_CODE = 64
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
SATURATING_OPS = WEIGHTED_OPS - {"ConvTranspose"}  # onnxruntime runs ConvTranspose in float


# numpy's runtime CPUID detection (what onnxruntime's dispatch sees too) -> /proc/cpuinfo names
_NUMPY_FLAGS = {"AVX2": "avx2", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni"}


def _numpy_features() -> dict | None:
    try:
        from numpy._core import _multiarray_umath as m
    except ImportError:  # numpy 1.x
        try:
            from numpy.core import _multiarray_umath as m
        except ImportError:
            return None
    return getattr(m, "__cpu_features__", None)


def _proc_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_flags() -> set[str] | None:
    """The CPU features that decide onnxruntime's integer kernels, as /proc/cpuinfo names them; None
    where they cannot be read. numpy asks the CPU itself (CPUID), which is right even under an
    emulator whose /proc/cpuinfo shows the host; /proc adds what numpy does not report (AVX-VNNI, AMX)."""
    features, proc = _numpy_features(), _proc_flags()
    if features is None:
        return proc
    flags = {name for key, name in _NUMPY_FLAGS.items() if features.get(key)}
    if proc and "avx2" in flags:
        flags |= proc & {"avx_vnni", "amx_int8"}
    return flags


def u8s8_saturates(flags: set[str] | None = None, machine: str | None = None) -> bool | None:
    """True on an x86 CPU whose u8s8 kernels saturate (AVX2 or AVX-512 without VNNI), False where
    they cannot, None when the CPU's features are unknown."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    if flags & VNNI_FLAGS:
        return False
    return "avx2" in flags or "avx512bw" in flags


def cpu_label(flags: set[str] | None = None) -> str:
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return platform.machine() or "this CPU"
    vnni = sorted(flags & VNNI_FLAGS)
    simd = "AVX-512" if "avx512bw" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return f"{platform.machine()} {simd} " + (f"with {'/'.join(vnni)}" if vnni else "without VNNI")


def saturating_weights(index, encodings) -> list[str]:
    """Weights whose integer kernel would saturate where u8s8 saturates: signed 8-bit codes past
    +-64 in a Conv (not depthwise), Gemm or MatMul whose input is an 8-bit integer."""
    out = []
    for group in index.op_groups().values():
        if group.op_type not in SATURATING_OPS or not group.input or is_depthwise(index, group):
            continue
        w, x = encodings.get(group.weight), encodings.get(index.encoding_source(group.input))
        if w is None or x is None or w.is_float or x.is_float or w.bw != 8 or x.bw != 8 or not w.symmetric:
            continue
        if _max_code(index.quantized_value(group.weight), w) > SAFE_CODE:
            out.append(group.weight)
    return out


def _max_code(values: np.ndarray, enc) -> float:
    """The largest |code| of the weight's values: per-channel extremes first, so a large weight
    (memory-mapped, perhaps) is reduced in place rather than copied."""
    values = np.asarray(values)
    if values.size == 0:
        return 0.0
    per_channel = enc.axis is not None and values.ndim > enc.axis and len(enc.scale) > 1
    others = tuple(i for i in range(values.ndim) if i != enc.axis) if per_channel else None
    with np.errstate(invalid="ignore"):
        hi = np.asarray(values.max(axis=others), np.float64)
        lo = np.asarray(values.min(axis=others), np.float64)
    if not (np.isfinite(hi).all() and np.isfinite(lo).all()):  # NaN/Inf: take the finite values only
        finite = np.where(np.isfinite(values), values, 0)
        hi, lo = np.asarray(finite.max(axis=others), np.float64), np.asarray(finite.min(axis=others), np.float64)
    peak = np.maximum(np.abs(hi), np.abs(lo)).reshape(-1)  # one value per channel, or one in all
    scales = enc.scales if per_channel else enc.scales[:1]
    return float(np.rint(peak / scales).max())


def saturation_message(names: list[str], target_name: str, flags: set[str] | None = None) -> str | None:
    """One line for an export or a runtime check: a warning on a CPU that saturates, a note elsewhere."""
    if not names:
        return None
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    where = u8s8_saturates(flags)
    head = (f"{len(names)} 8-bit weight(s) use codes beyond +-{SAFE_CODE} ({shown}): onnxruntime's u8s8 integer "
            f"kernels saturate them on x86 CPUs without VNNI")
    fix = "export with --target ort-cpu (a 7-bit weight grid) for a model that is accurate on every CPU"
    if target_name == "ort-cpu":
        fix = "recompute the encodings with --target ort-cpu (these were made for another target)"
    if where:
        return f"warning: {head}, and this CPU ({cpu_label(flags)}) is one: {fix}"
    return f"note: {head} (this CPU is not one); {fix}"
