"""The precision plan: defaults plus the user's per-tensor edits, the target, and the encodings they imply.

The plan is the only state a user edits. Encodings are always derived from statistics and plan
(`derive_encodings`), so an edit never needs a new calibration. The target's rules sit between
the two: `resolve` gives the settings the target really runs (a rule's change carries a
`RuleEffect` that says why), and `refusals` says which settings the target cannot run at all.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .quant.encoding import (
    FLOAT_BITWIDTHS,
    INT_BITWIDTHS,
    POW2_ROUNDINGS,
    Encoding,
    compute_encoding,
    derived_bias,
    float_encoding,
)
from .quant.ranges import SCHEMES, choose_range
from .quant.stats import TensorStats, channel_stats
from .targets.profiles import DEFAULT_TARGET, get_target
from .targets.rules import RuleEffect, apply_rules, dependents, refusal, summary

DTYPES = ("int", "float")
# AIMET's floor for a bias scale when no input or weight scale exists (spec 3.6).
MIN_BIAS_SCALE = 2.33e-12


@dataclass
class Defaults:
    """What every tensor gets unless an edit says otherwise (AIMET's default HTP config)."""

    act_bw: int = 8
    param_bw: int = 8
    bias_bw: int = 32
    act_scheme: str = "tf"
    param_scheme: str = "tf"
    act_symmetric: bool = False
    param_symmetric: bool = True
    per_channel: bool = True
    percentile: float = 99.99
    min_range: str = "qnn"
    symmetric_variant: str = "aimet"
    strict_symmetric: bool = False    # symmetric tensors use -127..127 at 8 bits (AIMET's strict mode)
    unsigned_symmetric: bool = False  # symmetric tensors that are never negative use the unsigned grid
    pow2: str | None = None           # power-of-two scales for every integer tensor: round, ceil or floor


@dataclass
class TensorEdit:
    """A user's choices for one tensor; None means "use the default"."""

    bw: int | None = None
    dtype: str | None = None
    scheme: str | None = None
    symmetric: bool | None = None
    strict: bool | None = None
    unsigned: bool | None = None
    per_channel: bool | None = None
    percentile: float | None = None
    range: tuple[float, float] | None = None  # a fixed min/max, typed or dragged
    pow2: str | None = None  # a power-of-two scale (round, ceil, floor); "off" overrides a default
    encoding: Encoding | None = None  # an exact encoding, e.g. read from a file; wins over all else

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True)
class Settings:
    """The resolved choices for one tensor."""

    bw: int
    dtype: str
    scheme: str
    symmetric: bool
    strict: bool
    unsigned: bool
    per_channel: bool
    percentile: float
    range: tuple[float, float] | None
    encoding: Encoding | None
    pow2: str | None = None


def check_edit(name: str, edit: TensorEdit) -> list[str]:
    """Problems with an edit, each naming the tensor and the fix."""
    problems = []
    if edit.dtype is not None and edit.dtype not in DTYPES:
        problems.append(f"{name}: dtype {edit.dtype!r} is not one of {DTYPES}")
    if edit.bw is not None:
        dtype = edit.dtype or "int"
        allowed = FLOAT_BITWIDTHS if dtype == "float" else INT_BITWIDTHS
        if edit.bw not in allowed:
            problems.append(f"{name}: bitwidth {edit.bw} is not supported for {dtype}; use one of {allowed}")
    if edit.scheme is not None and edit.scheme not in SCHEMES:
        problems.append(f"{name}: scheme {edit.scheme!r} is not one of {SCHEMES}")
    if edit.percentile is not None and not 50 <= edit.percentile <= 100:
        problems.append(f"{name}: percentile {edit.percentile} must be between 50 and 100")
    if edit.pow2 is not None and edit.pow2 not in POW2_ROUNDINGS + ("off",):
        problems.append(f"{name}: power-of-two rounding {edit.pow2!r} is not one of {POW2_ROUNDINGS + ('off',)}")
    if edit.range is not None:
        lo, hi = edit.range
        if not (np.isfinite(lo) and np.isfinite(hi)):
            problems.append(f"{name}: range ({lo}, {hi}) must be finite")
        elif lo > hi:
            problems.append(f"{name}: min {lo} is above max {hi}; swap them")
    return problems


class PrecisionPlan:
    """Defaults plus per-tensor edits, for one target (a name in `targets.TARGETS`). Edits are plain
    values, so undo is "put the old edit back"."""

    def __init__(self, defaults: Defaults | None = None, target: str = DEFAULT_TARGET):
        self.defaults = defaults or Defaults()
        self.edits: dict[str, TensorEdit] = {}
        self.target = get_target(target).name

    def edit(self, name: str) -> TensorEdit:
        """A copy of the tensor's current edit (empty if it has none)."""
        return replace(self.edits.get(name, TensorEdit()))

    def set(self, name: str, **changes) -> TensorEdit:
        """Change some fields of a tensor's edit; returns the previous edit for undo.

        A field set to None goes back to the default.
        """
        previous = self.edit(name)
        edit = replace(previous, **changes)
        problems = check_edit(name, edit)
        if problems:
            raise ValueError("; ".join(problems))
        self.restore(name, edit)
        return previous

    def restore(self, name: str, edit: TensorEdit) -> None:
        if edit.is_empty():
            self.edits.pop(name, None)
        else:
            self.edits[name] = replace(edit)

    def edited(self) -> list[str]:
        return list(self.edits)

    def settings(self, kind: str, name: str) -> Settings:
        """Resolve defaults and edit for a tensor of kind "activation", "weight" or "bias"."""
        d = self.defaults
        e = self.edits.get(name, TensorEdit())
        if kind == "activation":
            bw, scheme, symmetric, per_channel = d.act_bw, d.act_scheme, d.act_symmetric, False
        elif kind == "weight":
            bw, scheme, symmetric, per_channel = d.param_bw, d.param_scheme, d.param_symmetric, d.per_channel
        else:
            bw, scheme, symmetric, per_channel = d.bias_bw, "tf", True, d.per_channel
        dtype = e.dtype or "int"
        if e.bw is not None:
            bw = e.bw
        elif dtype == "float":
            bw = 16
        per_channel = per_channel if e.per_channel is None else e.per_channel
        symmetric = symmetric if e.symmetric is None else e.symmetric
        if per_channel and kind == "weight":
            symmetric = True  # QNN: per-channel encodings are always symmetric
        pow2 = d.pow2 if e.pow2 is None else e.pow2
        pow2 = None if pow2 == "off" or kind == "bias" or dtype != "int" else pow2
        if pow2 is not None:
            symmetric = True  # zero point 0
        return Settings(
            bw=bw,
            dtype=dtype,
            scheme=e.scheme or scheme,
            symmetric=symmetric,
            # the defaults refine symmetric grids only; an edit's strict makes the tensor symmetric itself
            strict=bool(e.strict) if e.strict is not None else symmetric and d.strict_symmetric,
            unsigned=bool(e.unsigned) if e.unsigned is not None else symmetric and d.unsigned_symmetric,
            per_channel=per_channel,
            percentile=d.percentile if e.percentile is None else e.percentile,
            range=e.range,
            encoding=e.encoding,
            pow2=pow2,
        )

    def to_dict(self) -> dict:
        edits = {}
        for name, e in self.edits.items():
            d = {k: v for k, v in asdict(e).items() if v is not None and k != "encoding"}
            if e.encoding is not None:
                d["encoding"] = encoding_to_dict(e.encoding)
            edits[name] = d
        return {"defaults": asdict(self.defaults), "edits": edits, "target": self.target}

    @classmethod
    def from_dict(cls, d: dict) -> PrecisionPlan:
        plan = cls(Defaults(**d.get("defaults", {})), d.get("target", DEFAULT_TARGET))
        for name, e in d.get("edits", {}).items():
            e = dict(e)
            if "encoding" in e:
                e["encoding"] = encoding_from_dict(e["encoding"])
            if "range" in e:
                e["range"] = tuple(e["range"])
            plan.edits[name] = TensorEdit(**e)
        return plan


def encoding_to_dict(e: Encoding) -> dict:
    return {
        "bw": e.bw,
        "dtype": e.dtype,
        "scale": list(e.scale),
        "offset": list(e.offset),
        "symmetric": e.symmetric,
        "axis": e.axis,
        "strict": e.strict,
    }


def encoding_from_dict(d: dict) -> Encoding:
    return Encoding(
        bw=int(d["bw"]),
        dtype=d["dtype"],
        scale=tuple(float(s) for s in d["scale"]),
        offset=tuple(int(o) for o in d["offset"]),
        symmetric=bool(d["symmetric"]),
        axis=d["axis"],
        strict=bool(d.get("strict", False)),
    )


def _adjusted(s: Settings) -> bool:
    """QNN applies TF Adjusted to 8-bit weights only; at other bitwidths the scheme is TF."""
    return s.scheme == "tf_adjusted" and s.bw == 8


def _from_settings(s: Settings, lo, hi, defaults: Defaults, axis=None, adjusted: bool = False) -> Encoding:
    return compute_encoding(
        lo,
        hi,
        s.bw,
        symmetric=s.symmetric,
        strict=s.strict,
        unsigned=s.unsigned,
        variant=defaults.symmetric_variant,
        min_range=defaults.min_range,
        axis=axis,
        pow2=s.pow2,
        adjusted=adjusted,
    )


def _activation_encoding(s: Settings, stats: TensorStats | None, defaults: Defaults) -> Encoding | None:
    if s.range is not None:
        return _from_settings(s, *s.range, defaults)
    if stats is None:
        return None  # not calibrated yet
    lo, hi = choose_range(stats, s.scheme, bw=s.bw, symmetric=s.symmetric, percentile=s.percentile)
    return _from_settings(s, lo, hi, defaults)


def _weight_encoding(s: Settings, values: np.ndarray, axis: int | None, defaults: Defaults) -> Encoding:
    if s.range is not None:
        return _from_settings(s, *s.range, defaults, adjusted=_adjusted(s))
    if values.size and values.dtype.kind == "f" and not np.isfinite(values).any():
        return float_encoding(32)  # only NaN/Inf (a -inf mask constant): nothing a grid could hold
    if s.per_channel and axis is not None and values.ndim > axis:
        if s.scheme in ("tf", "tf_adjusted"):
            others = tuple(i for i in range(values.ndim) if i != axis)
            finite = np.isfinite(values)
            if finite.all():
                lo, hi = values.min(axis=others), values.max(axis=others)
            else:  # NaN/Inf never reach a range; a channel with no finite value gets the minimum range
                lo = np.where(finite, values, np.inf).min(axis=others)
                hi = np.where(finite, values, -np.inf).max(axis=others)
                empty = ~np.isfinite(lo)
                lo, hi = np.where(empty, 0.0, lo), np.where(empty, 0.0, hi)
        else:
            ranges = [
                choose_range(c, s.scheme, bw=s.bw, symmetric=True, percentile=s.percentile)
                for c in channel_stats(values, axis)
            ]
            lo, hi = np.array(ranges).T
        return _from_settings(s, lo, hi, defaults, axis=axis, adjusted=_adjusted(s))
    stats = TensorStats.of(values)
    lo, hi = choose_range(stats, s.scheme, bw=s.bw, symmetric=s.symmetric, percentile=s.percentile)
    return _from_settings(s, lo, hi, defaults, adjusted=_adjusted(s))


def _bias_encoding(s, values, in_enc, w_enc, defaults) -> Encoding:
    if s.dtype == "float":
        return float_encoding(s.bw)
    if w_enc is not None and w_enc.is_float:
        return float_encoding(w_enc.bw)  # a float weight leaves no weight scale to derive from
    if s.bw != 32 or s.range is not None:
        return _weight_encoding(replace(s, per_channel=False), values, None, defaults)
    derived = derived_bias(in_enc, w_enc)
    if derived is not None:
        return derived
    # No input or weight scale to multiply: AIMET's fallback from the bias values themselves.
    finite = np.abs(values[np.isfinite(values)])
    scale = max(float(finite.max(initial=0.0)) / 2**31, MIN_BIAS_SCALE)
    return Encoding(bw=32, scale=(scale,), offset=(-(2**31),), symmetric=True)


def _kept(index, plan: PrecisionPlan, name: str) -> Encoding | None:
    """What an already quantized model keeps for an untouched tensor: its own encoding, else float."""
    if name in plan.edits:
        return None
    existing = getattr(index.targets[name], "existing", None)
    if existing is not None:
        return existing
    return float_encoding(32) if getattr(index, "quantized_model", False) else None


def _fixed_by_user(index, plan: PrecisionPlan, name: str) -> bool:
    """True when the user (a range, an exact encoding) or the model itself fixes the encoding."""
    edit = plan.edits.get(name)
    if edit is not None and (edit.range is not None or edit.encoding is not None):
        return True
    return _kept(index, plan, name) is not None


def resolve(index, plan: PrecisionPlan, name: str) -> tuple[Settings, RuleEffect | None]:
    """The settings the target runs for `name`, and the effect of the target's rule that changed
    them (None if none did). An already quantized model's own encodings are kept as they are."""
    kind = index.targets[name].kind
    s = plan.settings(kind, name)
    kept = _kept(index, plan, name)
    if kept is not None:
        return replace(s, encoding=kept), None
    if getattr(index, "quantized_model", False):
        return s, None  # rules would re-place quantizers the model already has
    return apply_rules(get_target(plan.target), index, name, s,
                       lambda other: plan.settings(index.targets[other].kind, other))


def rule_effects(index, plan: PrecisionPlan) -> dict[str, RuleEffect]:
    """Every tensor a target rule changes, with what it did and why."""
    out = {}
    for name in index.targets:
        effect = resolve(index, plan, name)[1]
        if effect is not None:
            out[name] = effect
    return out


def refusals(index, plan: PrecisionPlan, names=None) -> list[str]:
    """What the plan's target cannot run among `names` (every tensor when None), one line each."""
    target = get_target(plan.target)
    problems = []
    for name in index.targets if names is None else names:
        if name in index.targets and _kept(index, plan, name) is None:
            why = refusal(target, index, name, plan.settings(index.targets[name].kind, name))
            if why and name not in plan.edits and refusal(target, index, name, resolve(index, plan, name)[0]) is None:
                why = None  # a default the target's rules turn into what it runs (vitis-dpu's 8-bit biases)
            if why:
                problems.append(why)
    return problems


def derive_encodings(
    index,
    stats: dict[str, TensorStats],
    plan: PrecisionPlan,
    names=None,
    known: dict[str, Encoding] | None = None,
) -> dict[str, Encoding]:
    """Encodings of every quantizer position that has what it needs (stats for activations), as the
    plan's target runs them (`resolve`).

    `index` is a ModelIndex; `stats` maps activation names to their calibration statistics.
    With `names` and `known` (the previous result), only those tensors, the ones the target's rules
    tie to them and the biases that depend on them are recomputed; the rest is taken from `known`.
    """
    if names is None or known is None:
        todo = set(index.targets)
        encodings: dict[str, Encoding] = {}
    else:
        todo = dependents(get_target(plan.target), index, names)
        encodings = {n: e for n, e in known.items() if n not in todo}
    biases = []
    for name, target in index.targets.items():
        if target.kind == "bias":
            if name in todo or (target.bias_inputs and todo & _bias_sources(index, target)):
                encodings.pop(name, None)
                biases.append((name, target))
            continue
        if name not in todo:
            continue
        encodings.pop(name, None)
        s, _ = resolve(index, plan, name)
        if target.kind == "activation" and name not in stats and not _fixed_by_user(index, plan, name) \
                and s.dtype != "float":
            continue  # not calibrated (yet, or never reached), and no range the user or the model gave
        if s.encoding is not None:
            encodings[name] = s.encoding
        elif s.dtype == "float":
            encodings[name] = float_encoding(s.bw)
        elif target.kind == "activation":
            enc = _activation_encoding(s, stats.get(name), plan.defaults)
            if enc is not None:
                encodings[name] = enc
        else:
            encodings[name] = _weight_encoding(s, index.initializer(name), target.axis, plan.defaults)
    for name, target in biases:
        s, _ = resolve(index, plan, name)
        if s.encoding is not None:
            encodings[name] = s.encoding
            continue
        in_enc = w_enc = None
        if target.bias_inputs:
            act, weight = target.bias_inputs
            in_enc = encodings.get(index.encoding_source(act))
            w_enc = encodings.get(weight)
        encodings[name] = _bias_encoding(s, index.initializer(name), in_enc, w_enc, plan.defaults)
    return encodings


def _bias_sources(index, target) -> set[str]:
    act, weight = target.bias_inputs
    return {index.encoding_source(act), weight}


def encodings_for_target(index, encodings: dict[str, Encoding], target=None) -> dict[str, Encoding]:
    """Exact encodings (read from a file) as `target` runs them: its rules applied among the tensors
    the file names (a float output makes the op's weight float too, a weight goes on the target's
    grid, ...); tensors the file leaves out stay without an encoding. Raises ValueError listing
    what the target cannot run."""
    plan = PrecisionPlan(target=get_target(target).name)
    for name, enc in encodings.items():
        if name in index.targets:
            plan.restore(name, TensorEdit(encoding=enc))
    problems = refusals(index, plan, list(plan.edits))
    if problems:
        raise ValueError(summary(problems))
    derived = derive_encodings(index, {}, plan, names=list(plan.edits), known={})
    return {n: e for n, e in derived.items() if n in plan.edits}
