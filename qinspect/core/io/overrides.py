"""AIMET/QNN quantization-overrides JSON, versions 0.6.1 (default), 1.0.0, 2.0.0 and 2.1.0 (spec section 3).

Writers take derived encodings; the reader returns encodings by tensor name, checked against the
model, for the plan to apply as a partial override (what the QNN converter does with such a file).

What goes in a file depends on the target (`file_encodings`): under qnn-htp bias encodings are left
out unless a bias was edited or they are asked for, because AIMET's default configuration keeps
bias quantizers disabled and the converter derives int32 biases itself (AIMET's strict loader
refuses a file that has them). Every file names its producer and target in a "producer" object,
which AIMET writes too and the readers ignore. A weight a target keeps on a 7-bit grid is written
as the 8-bit encoding with the same scale (the same grid points; QNN and AIMET take no 7-bit).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ... import __version__
from ..errors import OverridesError
from ..quant.encoding import FLOAT_BITWIDTHS, Encoding, derived_bias, encoding_from_min_max, float_encoding
from ..targets.profiles import get_target
from .files import atomic_write, read_json

VERSIONS = ("0.6.1", "1.0.0", "2.0.0", "2.1.0")
# 2.1.0 is 2.0.0 plus double-quantized scales (a "meta encoding" as y_scale), which qinspect never
# writes: its files are 2.0.0 files with another version number, and read alike.
ONNX_ALIGNED = ("2.0.0", "2.1.0")
DEFAULT_VERSION = "0.6.1"
READ_BITWIDTHS = (4, 8, 16, 32)


def _section(kind: str) -> str:
    return "activation_encodings" if kind == "activation" else "param_encodings"


def _entry_0_6_1(e: Encoding) -> list[dict]:
    if e.is_float:
        return [{"bitwidth": e.bw, "dtype": "float"}]
    return [
        {
            "bitwidth": e.bw,
            "dtype": "int",
            "is_symmetric": str(e.symmetric),
            "min": float(lo),
            "max": float(hi),
            "offset": int(o),
            "scale": float(s),
        }
        for lo, hi, o, s in zip(e.min, e.max, e.offset, e.scale)
    ]


def _entry_1_0_0(name: str, e: Encoding) -> dict:
    enc_type = "PER_CHANNEL" if e.per_channel else "PER_TENSOR"
    if e.is_float:
        return {"name": name, "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": e.bw}
    return {
        "name": name,
        "dtype": "INT",
        "enc_type": enc_type,
        "bw": e.bw,
        "is_sym": e.symmetric,
        "scale": [float(s) for s in e.scale],
        "offset": [int(o) for o in e.offset],
    }


def _entry_2_0_0(name: str, e: Encoding) -> dict:
    # ONNX zero points: unsigned storage for asymmetric, signed with zp 0 for symmetric (spec 4.2).
    signed = e.symmetric and not any(o == 0 for o in e.offset)
    zp = [-o - 2 ** (e.bw - 1) if signed else -o for o in e.offset]
    if signed and e.strict:
        zp = [0] * len(zp)  # ONNX has no narrow range: int8 with zero point 0 holds -127..127 (and -128)
    entry = {"name": name, "output_dtype": f"{'int' if signed else 'uint'}{e.bw}"}
    entry["y_scale"] = [float(s) for s in e.scale] if e.per_channel else float(e.scale[0])
    if any(zp):
        entry["y_zero_point"] = [int(z) for z in zp] if e.per_channel else int(zp[0])
    if e.per_channel:
        entry["axis"] = e.axis
    return entry


def file_encodings(index, encodings: dict[str, Encoding], *, target=None, edited=(), only_edited: bool = False,
                   bias_encodings: bool | None = None, version: str = DEFAULT_VERSION) -> dict[str, Encoding]:
    """The encodings an overrides file for `target` holds: all of them, or only the `edited` tensors,
    without the int32 bias encodings the target derives itself from input x weight scale (unless a
    bias was edited or `bias_encodings` asks for them; None takes the target's default). A bias a
    rule made float is written: the converter must be told. 2.0.0 always keeps them: there a missing
    entry means "not quantized"."""
    edited = set(edited)
    keep_biases = get_target(target).bias_encodings if bias_encodings is None else bias_encodings
    keep_biases = keep_biases or version in ONNX_ALIGNED
    out = {}
    for name, enc in encodings.items():
        if only_edited and name not in edited:
            continue
        t = index.targets.get(name)
        if t is not None and t.kind == "bias" and not keep_biases and name not in edited and t.bias_inputs:
            act, weight = t.bias_inputs
            if enc == derived_bias(encodings.get(index.encoding_source(act)), encodings.get(weight)):
                continue
        out[name] = enc
    return out


def quantizer_args(defaults) -> dict:
    """AIMET's informational `quantizer_args` for a plan's `Defaults` (0.6.1 and 1.0.0 files)."""
    return {
        "activation_bitwidth": defaults.act_bw,
        "param_bitwidth": defaults.param_bw,
        "dtype": "int",
        "is_symmetric": bool(defaults.param_symmetric),
        "per_channel_quantization": bool(defaults.per_channel),
        "quant_scheme": f"post_training_{defaults.act_scheme}",
    }


def _for_file(e: Encoding) -> Encoding:
    """A 7-bit weight grid as the 8-bit encoding with the same scale (same points, a bitwidth QNN takes)."""
    if e.is_float or e.bw != 7:
        return e
    return e.with_changes(bw=8, offset=(-128,) * len(e.offset), strict=False)  # the 8-bit grid holds it


def _producer(target: str | None) -> dict:
    producer = {"package": "qinspect", "version": __version__}
    if target is not None:
        producer["target"] = get_target(target).name
    return producer


def overrides_dict(
    encodings: dict[str, Encoding],
    kinds: dict[str, str],
    version: str = DEFAULT_VERSION,
    quantizer_args: dict | None = None,
    target: str | None = None,
) -> dict:
    """The JSON document for `encodings`; `kinds` maps each name to activation/weight/bias."""
    if version not in VERSIONS:
        raise OverridesError(f"unknown overrides version {version!r}; use one of {VERSIONS}")
    encodings = {n: _for_file(e) for n, e in encodings.items()}
    if version in ONNX_ALIGNED:
        # fp16/fp32 tensors get no entry: a missing entry means "not quantized" (spec 3.4).
        entries = [_entry_2_0_0(n, e) for n, e in encodings.items() if not e.is_float]
        return {"version": version, "producer": _producer(target), "encodings": entries}
    doc: dict = {"version": version, "producer": _producer(target)}
    if version == "0.6.1":
        doc["activation_encodings"], doc["param_encodings"] = {}, {}
        for name, e in encodings.items():
            doc[_section(kinds[name])][name] = _entry_0_6_1(e)
    else:
        doc["activation_encodings"], doc["param_encodings"] = [], []
        for name, e in encodings.items():
            doc[_section(kinds[name])].append(_entry_1_0_0(name, e))
    if quantizer_args:
        args = dict(quantizer_args)
        if version == "0.6.1":  # 0.6.1 writes flags as "True"/"False" strings
            args = {k: str(v) if isinstance(v, bool) else v for k, v in args.items()}
        doc["quantizer_args"] = args
    if version == "1.0.0":
        doc["excluded_layers"] = []
    return doc


def format_warnings(encodings: dict[str, Encoding], version: str) -> list[str]:
    """What `version` cannot carry of `encodings`, one line each (the file is still written)."""
    def names(xs):
        return ", ".join(xs[:6]) + (f" and {len(xs) - 6} more" if len(xs) > 6 else "")

    strict = [n for n, e in encodings.items() if not e.is_float and e.strict]
    out = []
    if strict and version == "0.6.1":
        out.append(f"0.6.1: QNN recomputes scale and offset from min/max over 2^bw - 1 steps, so strict symmetric "
                   f"tensors become ordinary symmetric ones there (qinspect and AIMET read the strict offset back); "
                   f"write 1.0.0 to keep them: {names(strict)}")
    if strict and version in ONNX_ALIGNED:
        out.append(f"{version} has no narrow range: strict symmetric tensors read back as ordinary symmetric ones "
                   f"with the same scale: {names(strict)}")
    floats = [n for n, e in encodings.items() if e.is_float]
    if floats and version in ONNX_ALIGNED:
        out.append(f"{version} cannot state float: {len(floats)} float tensor(s) get no entry, which means 'not "
                   f"quantized', and QAIRT picks their float precision (float16 edits are not kept): {names(floats)}")
    return out


def write_overrides(path, encodings, kinds, version=DEFAULT_VERSION, quantizer_args=None, protect=(),
                    target: str | None = None, partial: bool = False) -> Path:
    """Write an overrides file atomically. `partial`: only some tensors (the edited ones), which 2.0.0
    cannot express: there a missing entry means "not quantized", not "the default"."""
    if partial and version in ONNX_ALIGNED:
        raise OverridesError(f"a partial {version} file would make every tensor it leaves out float (in 2.0.0 a missing "
                             "entry means 'not quantized') and cannot state float edits; export all tensors in "
                             f"{version}, or the edited ones in 1.0.0")
    doc = overrides_dict(encodings, kinds, version, quantizer_args, target)
    return atomic_write(path, json.dumps(doc, indent=2) + "\n", protect=protect)


# --- reading ---------------------------------------------------------------------------------


def detect_version(doc) -> str:
    """AIMET's rule: an explicit version wins; dict sections -> 0.6.1, list sections -> 1.0.0."""
    if not isinstance(doc, dict):
        raise OverridesError("the top level must be a JSON object")
    version = doc.get("version")
    if version is not None:
        version = str(version)
        if version in ("0.4.0", "0.5.0"):
            return "0.6.1"  # same layout, fewer keys
        if version not in VERSIONS:
            raise OverridesError(f"unknown version {version!r}; qinspect reads {VERSIONS}")
        return version
    if "encodings" in doc:
        return "2.0.0"
    sections = [doc.get("activation_encodings"), doc.get("param_encodings")]
    if any(isinstance(s, list) for s in sections):
        return "1.0.0"
    if any(isinstance(s, dict) for s in sections):
        return "0.6.1"
    raise OverridesError("no activation_encodings, param_encodings or encodings section found")


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _channel_axis(values, axis_hint) -> int | None:
    """The per-channel axis for a list of per-channel values (None for a single value).

    0.6.1 and 1.0.0 store no axis: it is the tensor's output-channel axis, taken from the model.
    """
    if len(values) <= 1:
        return None
    return 0 if axis_hint is None else axis_hint


def _number(value) -> float | None:
    """A JSON number (or a numeric string, as some writers produce) as a float; None if not one."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_0_6_1(name, entries, axis_hint, problems, warnings) -> Encoding | None:
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        problems.append(f"{name}: expected a list of encoding objects")
        return None
    first = entries[0]
    bw = first.get("bitwidth")
    if str(first.get("dtype", "int")).lower() == "float":
        return _float(name, bw, problems)
    if not _int_bw_ok(name, bw, problems):
        return None
    symmetric = _as_bool(first.get("is_symmetric", False))
    axis = _channel_axis(entries, axis_hint)
    if all("min" in e and "max" in e for e in entries):
        lo = [_number(e["min"]) for e in entries]
        hi = [_number(e["max"]) for e in entries]
        if any(v is None for v in lo + hi):
            problems.append(f"{name}: min and max must be numbers")
            return None
        lo, hi = np.array(lo), np.array(hi)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            problems.append(f"{name}: min and max must be finite (got NaN or Infinity)")
            return None
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            problems.append(f"{name}: min {lo[bad[0]]} is above max {hi[bad[0]]}")
            return None
        if np.any(lo > 0) or np.any(hi < 0):
            warnings.append(f"{name}: range [{lo.min()}, {hi.max()}] does not include 0; widened to include it "
                            f"(as QNN does)")
            lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        offsets = [_number(e.get("offset")) for e in entries]
        if symmetric and _strict_offsets(offsets, int(bw)):
            # A strict symmetric grid (AIMET writes offset -(2^(bw-1) - 1)): min/max span one step
            # fewer than QNN's recomputation assumes, so take the grid the file states.
            scale = (hi - lo) / (2 ** int(bw) - 2)
            return _scale_offset(name, bw, scale.tolist(), offsets, symmetric, axis, problems)
        # QNN recomputes scale and offset from min/max for this format, so do we.
        return encoding_from_min_max(lo, hi, int(bw), symmetric=symmetric, axis=axis)
    if all("scale" in e and "offset" in e for e in entries):
        return _scale_offset(name, bw, [e["scale"] for e in entries], [e["offset"] for e in entries], symmetric, axis, problems)
    problems.append(f"{name}: an int encoding needs min and max (or scale and offset)")
    return None


def _read_1_0_0(entry, axis_hint, problems) -> tuple[str, Encoding | None]:
    name = entry.get("name")
    if not isinstance(name, str):
        problems.append(f"an entry has no name: {json.dumps(entry)[:80]}")
        return "", None
    bw = entry.get("bw")
    if str(entry.get("dtype", "INT")).upper() == "FLOAT":
        return name, _float(name, bw, problems)
    enc_type = entry.get("enc_type", "PER_TENSOR")
    if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
        what = {"PER_BLOCK": "block-wise encodings (PER_BLOCK)", "LPBQ": "LPBQ encodings"}.get(enc_type, f"enc_type {enc_type}")
        problems.append(f"{name}: {what} are not supported: qinspect runs per-tensor and per-channel grids; give "
                        "this tensor a PER_CHANNEL encoding, or leave it out of the file")
        return name, None
    if not _int_bw_ok(name, bw, problems):
        return name, None
    scales, offsets = entry.get("scale"), entry.get("offset")
    if not isinstance(scales, list) or not isinstance(offsets, list):
        problems.append(f"{name}: scale and offset must be lists")
        return name, None
    axis = _channel_axis(scales, axis_hint) if enc_type == "PER_CHANNEL" else None
    return name, _scale_offset(name, bw, scales, offsets, _as_bool(entry.get("is_sym", False)), axis, problems)


def _read_2_0_0(entry, problems) -> tuple[str, Encoding | None]:
    name = entry.get("name")
    if not isinstance(name, str):
        problems.append(f"an entry has no name: {json.dumps(entry)[:80]}")
        return "", None
    why = _blocked(entry)
    if why:
        problems.append(f"{name}: {why} are not supported: qinspect runs per-tensor and per-channel grids; "
                        "give this tensor a per-channel encoding, or leave it out of the file")
        return name, None
    dtype = str(entry.get("output_dtype", ""))
    signed = dtype.startswith("int")
    try:
        bw = int(dtype[3 if signed else 4 :])
    except ValueError:
        problems.append(f"{name}: output_dtype {dtype!r} is not an integer type qinspect reads")
        return name, None
    if not _int_bw_ok(name, bw, problems):
        return name, None
    try:
        scales = np.atleast_1d(np.asarray(entry.get("y_scale"), dtype=np.float64))
        zp_raw = np.atleast_1d(np.asarray(entry.get("y_zero_point", 0), dtype=np.float64))
    except (TypeError, ValueError):
        problems.append(f"{name}: y_scale and y_zero_point must be numbers or lists of numbers")
        return name, None
    if scales.ndim != 1 or zp_raw.ndim != 1 or zp_raw.size not in (1, scales.size):
        problems.append(f"{name}: {zp_raw.size} zero points for {scales.size} scales; give one per scale")
        return name, None
    if not np.all(np.isfinite(zp_raw)) or np.any(zp_raw != np.round(zp_raw)):
        problems.append(f"{name}: zero points must be integers")
        return name, None
    zp = np.broadcast_to(zp_raw.astype(np.int64), scales.shape)
    offsets = -zp - 2 ** (bw - 1) if signed else -zp
    symmetric = bool(signed and np.all(zp == 0))
    axis = entry.get("axis") if scales.size > 1 else None
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
        problems.append(f"{name}: axis must be a whole number, got {axis!r}")
        return name, None
    return name, _scale_offset(name, bw, scales.tolist(), offsets.tolist(), symmetric, axis, problems)


def _blocked(entry: dict) -> str | None:
    """What kind of block-wise or double-quantized encoding a 2.0.0/2.1.0 entry is, or None."""
    if isinstance(entry.get("y_scale"), dict):
        return "double-quantized scales (a 2.1.0 meta encoding)"
    if "per_block_int_scale" in entry:
        return "LPBQ encodings (per_block_int_scale)"
    if "block_size" in entry:
        return f"block-wise encodings (block_size {entry['block_size']})"
    return None


def _float(name, bw, problems) -> Encoding | None:
    if isinstance(bw, bool) or bw not in FLOAT_BITWIDTHS:
        problems.append(f"{name}: float bitwidth {bw!r} is not supported; use 16 or 32")
        return None
    return float_encoding(int(bw))


def _int_bw_ok(name, bw, problems) -> bool:
    if isinstance(bw, bool) or not isinstance(bw, (int, float)) or int(bw) != bw or int(bw) not in READ_BITWIDTHS:
        problems.append(f"{name}: bitwidth {bw!r} is not supported; use one of {READ_BITWIDTHS}")
        return False
    return True


def _scale_offset(name, bw, scales, offsets, symmetric, axis, problems) -> Encoding | None:
    scales = [_number(s) for s in scales]
    offsets = [_number(o) for o in offsets]
    if any(v is None for v in scales + offsets):
        problems.append(f"{name}: scale and offset must be numbers")
        return None
    if len(scales) != len(offsets) or not scales:
        problems.append(f"{name}: {len(scales)} scales but {len(offsets)} offsets")
        return None
    if any(not np.isfinite(s) or s <= 0 for s in scales):
        problems.append(f"{name}: every scale must be a positive number")
        return None
    if any(not np.isfinite(o) or o != int(o) for o in offsets):
        problems.append(f"{name}: offsets must be integers")
        return None
    low = -(2 ** int(bw) - 1)
    outside = [int(o) for o in offsets if not low <= o <= 0]
    if outside:
        problems.append(f"{name}: offset {outside[0]} is outside [{low}, 0] for {int(bw)} bits, so 0 would not "
                        f"be on the grid; fix the offset (offset = -zero point)")
        return None
    return Encoding(
        bw=int(bw),
        scale=tuple(scales),
        offset=tuple(int(o) for o in offsets),
        symmetric=symmetric,
        axis=axis,
        strict=symmetric and _strict_offsets(offsets, int(bw)),
    )


def _strict_offsets(offsets, bw: int) -> bool:
    """AIMET's reading of a symmetric entry: strict when every offset is -(2^(bw-1) - 1)."""
    return bool(offsets) and all(o is not None and o == -(2 ** (bw - 1) - 1) for o in offsets)


def parse_overrides(doc, index=None, source: str = "overrides") -> tuple[dict[str, Encoding], list[str]]:
    """Encodings by tensor name from a parsed JSON document, and warnings.

    With a ModelIndex, names are checked against the model: names not in the model, bad bitwidths,
    min above max and channel counts that do not match are errors listing every offending entry.
    """
    version = _version_or_raise(doc, source)
    problems: list[str] = []
    warnings: list[str] = []
    found: list[tuple[str, Encoding | None]] = []

    def axis_of(name):
        target = index.targets.get(name) if index is not None else None
        return getattr(target, "axis", None)

    if version == "0.6.1":
        for key in ("activation_encodings", "param_encodings"):
            section = doc.get(key) or {}
            if not isinstance(section, dict):
                problems.append(f"{key} must be an object of tensor name -> encodings")
                continue
            for name, entries in section.items():
                found.append((name, _read_0_6_1(name, entries, axis_of(name), problems, warnings)))
    elif version == "1.0.0":
        for key in ("activation_encodings", "param_encodings"):
            section = doc.get(key) or []
            if not isinstance(section, list):
                problems.append(f"{key} must be a list of named encodings")
                continue
            for entry in section:
                if not isinstance(entry, dict):
                    problems.append(f"{key}: every entry must be an object")
                    continue
                found.append(_read_1_0_0(entry, axis_of(entry.get("name")), problems))
    else:
        section = doc.get("encodings") or []
        if not isinstance(section, list):
            problems.append("encodings must be a list of named encodings")
            section = []
        for entry in section:
            if not isinstance(entry, dict):
                problems.append("encodings: every entry must be an object")
                continue
            found.append(_read_2_0_0(entry, problems))

    encodings = {name: enc for name, enc in found if enc is not None}
    if index is not None:
        _check_against_model(encodings, index, problems, warnings)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise OverridesError(f"{source}: {len(problems)} problem(s): {shown}")
    return encodings, warnings


def _version_or_raise(doc, source) -> str:
    try:
        return detect_version(doc)
    except OverridesError as exc:
        raise OverridesError(f"{source}: {exc}") from None


def _check_against_model(encodings, index, problems, warnings) -> None:
    ignored = []
    missing = [n for n in encodings if n not in index.tensors]
    if missing:
        problems.append(
            f"{len(missing)} tensor(s) not in the model: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "")
            + " (check the names against the model, or remove those entries)"
        )
    for name, enc in encodings.items():
        if name in missing:
            continue
        target = index.targets.get(name)
        if target is None:
            warnings.append(f"{name}: not a quantizer position in this model (integer, aliased or fused tensor); ignored")
            ignored.append(name)
            continue
        if not enc.per_channel:
            continue
        if target.kind == "activation":
            problems.append(f"{name}: {len(enc.scale)} per-channel encodings for an activation, which takes one "
                            f"(per tensor); keep a single encoding")
            continue
        shape = target.shape
        if shape is not None and enc.axis is not None:
            axis = enc.axis + len(shape) if enc.axis < 0 else enc.axis
            if not 0 <= axis < len(shape):
                problems.append(f"{name}: channel axis {enc.axis} does not exist in its shape {tuple(shape)}")
                continue
            channels = shape[axis]
            if isinstance(channels, int) and channels != len(enc.scale):
                problems.append(f"{name}: {len(enc.scale)} channel encodings but the tensor has {channels} channels on axis {axis}")
    for name in ignored:
        del encodings[name]


def read_overrides(path, index=None) -> tuple[dict[str, Encoding], list[str]]:
    """Read an overrides file; see `parse_overrides`."""
    doc = read_json(path, OverridesError, "fix the file or re-export it")
    return parse_overrides(doc, index, source=str(path))


def apply_overrides(plan, encodings: dict[str, Encoding]) -> None:
    """Put read encodings into the plan as exact per-tensor edits (a partial override)."""
    for name, enc in encodings.items():
        plan.set(name, encoding=enc)
