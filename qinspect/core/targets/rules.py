"""A target's rules applied to a plan: what each rule changes, and what a target cannot run.

`apply_rules` takes a tensor's settings as the plan resolves them (the user's edits on the
defaults) and returns the settings the target really runs, with a `RuleEffect` saying which rule
changed what and why, in one line. The plan derives encodings from the result, so the simulation,
the exports and the window all see the same numbers. `refusal` says why a target cannot run a
setting and what to do instead; edits and imported files are checked with it before they apply.

Settings objects are the plan's (`plan.Settings`); rules only read their fields and `replace` them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..quant.encoding import Encoding, compute_encoding
from .profiles import FLOAT, INT, TARGETS, Target


@dataclass(frozen=True)
class RuleEffect:
    rule: str     # "float-group" | "weight-grid" | "fixed-output" | "per-tensor" | "pow2"
    message: str  # what the rule did and why, one line


def precision(s) -> tuple[str, int]:
    """(dtype, bitwidth) of resolved settings, an exact encoding winning over the fields."""
    if s.encoding is not None:
        return (FLOAT if s.encoding.is_float else INT), s.encoding.bw
    return s.dtype, s.bw


def _op_of(index, name: str) -> str:
    t = index.targets[name]
    return t.op_type


def apply_rules(target: Target, index, name: str, s, settings_of: Callable[[str], object]):
    """The settings `target` runs for `name` (resolved `s`), and the effect of the rule that changed
    them (None if none did). `settings_of(other)` gives another tensor's resolved settings."""
    kind = index.targets[name].kind
    effect = None
    if target.float_groups:
        s, effect = _float_group(target, index, name, s, settings_of)
    if effect is None and kind == "activation" and (target.fixed_outputs or target.fixed_ranges):
        s, effect = _fixed_output(target, index, name, s)
    if effect is None and kind == "weight":
        if target.per_tensor_ops and s.per_channel and _op_of(index, name) in target.per_tensor_ops:
            s = replace(s, per_channel=False)
            effect = RuleEffect("per-tensor", f"{target.name}: {_op_of(index, name)} weights are per tensor only")
        if target.weight_grid is not None:
            s, grid = _weight_grid(target, index, name, s, settings_of)
            effect = grid or effect
    if target.pow2 is not None:
        s, shifted = _pow2(target, kind, s)
        effect = shifted or effect
    return s, effect


def _is_pow2(enc: Encoding) -> bool:
    exponents = np.log2(enc.scales)
    return bool((exponents == np.round(exponents)).all())


def _pow2(target, kind, s):
    """Power-of-two scales, zero point 0, one scale per tensor; a target's own rounding unless the plan
    chose one. Biases move to the target's bitwidth when the plan left them at the default 32 bits
    (an edit asking for 32 is refused before it gets here)."""
    if precision(s)[0] != INT:
        return s, None
    why = f"{target.name}: {target.pow2_why}"
    if s.encoding is not None:
        enc = s.encoding
        if _is_pow2(enc) and enc.symmetric and not enc.per_channel and all(o in (0, -(2 ** (enc.bw - 1)))
                                                                           for o in enc.offset):
            return s, None
        lo, hi = float(np.min(enc.min)), float(np.max(enc.max))
        regridded = compute_encoding(lo, hi, enc.bw, pow2=s.pow2 or target.pow2)
        return replace(s, encoding=regridded), RuleEffect("pow2", why + f"; the file's [{lo:.4g}, {hi:.4g}] regridded")
    bw = s.bw
    if kind == "bias" and (INT, bw) not in target.supports["bias"]:
        bw = max(b for d, b in target.supports["bias"] if d == INT)
    wanted = replace(s, bw=bw, pow2=s.pow2 or target.pow2, symmetric=True, strict=False, unsigned=False,
                     per_channel=False)
    if wanted == s:
        return s, None
    return wanted, RuleEffect("pow2", why + f" ({wanted.pow2} rounding)")


def _float_group(target, index, name, s, settings_of):
    group = index.group_of(name)
    if group is None or group.op_type not in target.float_groups:
        return s, None
    members = [(role, t) for role, t in (("output", group.output), ("weight", group.weight), ("bias", group.bias))
               if t and t in index.targets]
    if name not in [t for _, t in members] or precision(s)[0] == FLOAT:
        return s, None
    for role, t in members:
        dtype, bw = precision(settings_of(t)) if t != name else precision(s)
        if dtype == FLOAT:
            msg = (f"{target.name}: {group.node}'s {role} is float{bw}, so its output, weight and bias run in "
                   f"float{bw} together (QNN's mixed-precision rule for {group.op_type})")
            return replace(s, dtype=FLOAT, bw=bw, encoding=None, range=None), RuleEffect("float-group", msg)
    return s, None


def _fixed_output(target, index, name, s):
    dtype, bw = precision(s)
    if dtype != INT:
        return s, None
    op = _op_of(index, name)
    symmetric = s.encoding.symmetric if s.encoding is not None else s.symmetric
    fixed = target.fixed_output(op, bw, symmetric)
    if fixed is not None:
        enc = Encoding(bw=bw, scale=(fixed.scale,), offset=(fixed.offset,), symmetric=symmetric)
        if s.encoding == enc:
            return s, None
        msg = f"{target.name} fixes {op} outputs at {bw} bits: scale {fixed.scale:.6g}, offset {fixed.offset}"
        return replace(s, encoding=enc, range=None), RuleEffect("fixed-output", msg)
    if op not in target.fixed_ranges or s.encoding is not None:
        return s, None
    lo, hi = target.fixed_ranges[op]
    sym = lo == -hi
    if s.range == (lo, hi) and s.symmetric == sym:
        return s, None
    msg = f"{target.name} fixes the range of {op} outputs at [{lo:g}, {hi:g}]" + (" (symmetric)" if sym else "")
    return replace(s, range=(lo, hi), symmetric=sym or s.symmetric), RuleEffect("fixed-output", msg)


def _weight_grid(target, index, name, s, settings_of):
    grid = target.weight_grid
    group = index.group_of(name)
    if group is None or group.op_type not in grid.ops or group.weight != name or not group.input:
        return s, None
    if grid.exempt_depthwise and is_depthwise(index, group):
        return s, None
    if precision(s) != (INT, grid.weight_bw) or not _signed(s):
        return s, None
    source = index.encoding_source(group.input)
    if source not in index.targets or precision(settings_of(source)) != (INT, grid.input_bw):
        return s, None
    msg = (f"{target.name}: {group.node}'s {grid.weight_bw}-bit weight uses a {grid.grid_bw}-bit grid "
           f"(stored as int{grid.weight_bw}): {grid.why}")
    if s.encoding is None:
        return replace(s, bw=grid.grid_bw), RuleEffect("weight-grid", msg)
    return replace(s, encoding=_regrid(s.encoding, index.initializer(name), grid.grid_bw)), RuleEffect(
        "weight-grid", msg)


def is_depthwise(index, group) -> bool:
    if group.op_type != "Conv":
        return False
    node = index.nodes[group.node]
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    shape = index.targets[group.weight].shape or ()
    return groups > 1 and len(shape) > 1 and shape[1] == 1


def _signed(s) -> bool:
    if s.encoding is not None:
        half = 2 ** (s.encoding.bw - 1)
        return s.encoding.symmetric and all(o in (-half, -(half - 1)) for o in s.encoding.offset)
    return s.symmetric and not s.unsigned


def _regrid(enc: Encoding, values: np.ndarray, bw: int) -> Encoding:
    """`enc` (signed, symmetric) on a `bw`-bit grid: the same scale when the weight's codes already fit
    (a file written from a grid of `bw` bits), else the same range at `bw` bits."""
    scales = enc.scales
    if enc.axis is not None and values.ndim > enc.axis:
        shape = [1] * values.ndim
        shape[enc.axis] = scales.size
        scales = scales.reshape(shape)
    half = 2 ** (bw - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        codes = np.rint(np.asarray(values, np.float64) / scales)
    finite = codes[np.isfinite(codes)]
    if finite.size == 0 or (finite.min() >= -half and finite.max() <= half - 1):
        return Encoding(bw=bw, scale=enc.scale, offset=(-half,) * len(enc.scale), symmetric=True, axis=enc.axis)
    return compute_encoding(enc.min, enc.max, bw, symmetric=True, axis=enc.axis)


def dependents(target: Target, index, names) -> set[str]:
    """The tensors whose rule-resolved settings can change when those of `names` do (names included)."""
    out = set(names)
    if not (target.float_groups or target.weight_grid):
        return out
    for name in names:
        if name not in index.targets:
            continue
        group = index.group_of(name)
        if target.float_groups and group is not None and group.op_type in target.float_groups:
            out.update(t for t in (group.output, group.weight, group.bias) if t and t in index.targets)
        if target.weight_grid is not None:
            out.update(g.weight for g in index.groups_reading(name) if g.weight)
    return out


def refusal(target: Target, index, name: str, s) -> str | None:
    """Why `target` cannot run `name` with settings `s` (and the fix), or None if it can."""
    t = index.targets[name]
    dtype, bw = precision(s)
    problem = _unsupported(target, t, dtype, bw)
    if problem:
        return f"{name}: {problem}"
    fixed = target.fixed_output(t.op_type, bw, s.symmetric) or t.op_type in target.fixed_ranges
    if t.kind == "activation" and s.range is not None and dtype == INT and fixed:
        return (f"{name}: {target.name} fixes the encoding of {t.op_type} outputs at {bw} bits; change its bitwidth "
                f"or dtype instead of its range")
    if t.kind == "weight" and s.per_channel and t.op_type in target.per_tensor_ops and s.encoding is not None \
            and s.encoding.per_channel:
        return f"{name}: {target.name} takes per-tensor {t.op_type} weights only; use one encoding for the tensor"
    return None


def unsupported(target: Target, index, encodings) -> list[str]:
    """Encodings `target` cannot run (an export's check of what reached it without an edit-time check:
    a script's plan, an old session), one line each with the fix."""
    problems = []
    for name, enc in encodings.items():
        t = index.targets.get(name)
        if t is None or getattr(t, "existing", None) is not None:
            continue
        dtype, bw = (FLOAT, enc.bw) if enc.is_float else (INT, 8 if enc.bw == 7 else enc.bw)
        problem = _unsupported(target, t, dtype, bw)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def _unsupported(target: Target, t, dtype: str, bw: int) -> str | None:
    """Why `target` does not run quantizer `t` at dtype/bw, the fix included; None if it does."""
    supported = target.supported(t.kind, t.op_type)
    if (dtype, bw) in supported:
        return None
    why = target.no_support_why.get((t.kind, dtype, bw), f"{target.title} does not run them")
    ok = ", ".join(f"{d}{b}" for d, b in sorted(supported))
    others = [o.name for o in TARGETS.values() if o is not target and (dtype, bw) in o.supported(t.kind, t.op_type)]
    alt = f", or choose the {' or '.join(others)} target" if others else ""
    kinds = {"activation": "activations", "weight": "weights", "bias": "biases"}[t.kind]
    return f"{dtype}{bw} {kinds} do not run on {target.name} ({why}); use {ok}{alt}"


def summary(problems: list[str], limit: int = 6) -> str:
    """Refusals ("name: why" lines) in one line, tensors with the same reason named together: a default
    the target cannot run would otherwise repeat its reason for every tensor."""
    reasons: dict[str, list[str]] = {}
    for p in problems:
        name, _, why = p.partition(": ")
        reasons.setdefault(why, []).append(name)
    parts = []
    for why, names in list(reasons.items())[:limit]:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        parts.append(f"{shown}: {why}")
    more = len(reasons) - limit
    return "; ".join(parts) + (f"; and {more} more reason(s)" if more > 0 else "")
