"""Where the output error comes from: quantizer groups and their sensitivity.

A *group* is the set of quantizers that belong to one op: its output activation(s), its weights
and its bias. An activation fused into the op before it (Conv -> Relu, Conv -> BatchNorm -> Relu)
belongs to that op's group, so a Conv+Relu is one group named after the Conv; a graph input is a
group of its own (op_type "Input"). Ops that only move data (their outputs reuse their input's
encoding) have no group.

`sensitivity` measures, for every group, the output SQNR when only that group is quantized (all
else float) and when only that group is kept float (all else as the plan), on a few samples.
The float outputs are computed once; every variant runs in one onnxruntime session: a group kept
float keeps the float values of its weights and bias, and its activation quantizers are fed
identity parameters (`Simulator.set_encodings(passthrough=...)`), so no session is rebuilt
unless the plan has float16 activations.

Output SQNR over several outputs is ``-10 log10(mean over outputs of noise / signal)``: the
average relative noise power, in dB (for one output it is that output's SQNR). A quantized value
that is NaN or Inf where the float one is finite (float16 overflow, say) makes it -inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..quant.encoding import Encoding, float_encoding
from ..quant.qparams import complete_encodings, onnx_qparams
from ..progress import NullProgress, Progress, check_cancel
from .engine import OutputEvaluator, output_sqnr  # noqa: F401 (output_sqnr: the public name stays here)
from .simulate import quantizer_kind

FUSED_ACT = frozenset({"Relu", "Clip", "BatchNormalization"})
PRECISIONS = {"int4": ("int", 4), "int8": ("int", 8), "int16": ("int", 16),
              "float16": ("float", 16), "float32": ("float", 32)}
FLOAT32 = float_encoding(32)


@dataclass
class QuantGroup:
    """The quantizers that belong to one op: its output activation(s), weight(s), bias."""

    name: str               # the op's node name (a graph input's tensor name for an input)
    op_type: str            # "Input" for a graph input
    tensors: list[str]      # target names, graph order
    kinds: dict[str, str] = field(default_factory=dict)  # tensor -> "activation" | "weight" | "bias"

    def of_kind(self, kind: str) -> list[str]:
        return [t for t in self.tensors if self.kinds.get(t, "activation") == kind]

    def to_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "tensors": list(self.tensors)}


def _head(index, node):
    """The op a fused activation runs inside: walk back over Relu/Clip/BatchNorm whose input has no
    quantizer of its own."""
    seen = set()
    while node.op_type in FUSED_ACT and node.name not in seen:
        seen.add(node.name)
        x = node.input[0] if node.input else ""
        info = index.tensors.get(x) if x else None
        if (info is None or info.producer is None or not index.is_float(x) or index.is_constant(x)
                or x in index.targets or x in index.aliases):
            break
        node = index.nodes[info.producer]
    return node


def quantizer_groups(index) -> list[QuantGroup]:
    """Every op's quantizers as one group, in graph order (see the module doc)."""
    groups: dict[str, QuantGroup] = {}
    for name, t in index.targets.items():
        if t.kind == "activation" and t.op_type == "Input":
            key, label, op = "input::" + name, name, "Input"
        else:
            node = index.nodes.get(t.node)
            if node is None:
                continue
            if t.kind == "activation":
                node = _head(index, node)
            key, label, op = node.name, node.name, node.op_type
        g = groups.setdefault(key, QuantGroup(label, op, []))
        g.tensors.append(name)
        g.kinds[name] = t.kind
    return list(groups.values())


def promote_changes(groups: list[QuantGroup], precision: str) -> dict[str, dict]:
    """Plan changes (`changes_by_name` for `SetEdits`) that put `groups` at `precision`:
    "int4", "int8", "int16", "float16" or "float32".

    Activations and weights get that dtype and bitwidth; an exact encoding edit (an imported file)
    is cleared so the new precision takes effect, ranges and other choices are kept. A bias stays
    at the default (int32, from input x weight scale) for integer precisions and becomes float with
    its group otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {tuple(PRECISIONS)}")
    dtype, bw = PRECISIONS[precision]
    out: dict[str, dict] = {}
    for g in groups:
        for t in g.tensors:
            if g.kinds.get(t) == "bias" and dtype == "int":
                out[t] = {"dtype": None, "bw": None, "encoding": None}
            else:
                out[t] = {"dtype": dtype, "bw": bw, "encoding": None}
    return out


def is_quantizing(index, name: str, enc: Encoding | None) -> bool:
    """True if `enc` changes the tensor's values (float32 and no encoding do not)."""
    if enc is None or (enc.is_float and enc.bw == 32):
        return False
    if index.targets[name].kind == "activation":
        return quantizer_kind(enc) != "none"
    return enc.is_float or onnx_qparams(enc) is not None


@dataclass
class SensitivityEntry:
    group: QuantGroup
    only_quantized_sqnr: float   # output SQNR (dB) when only this group is quantized, all else float
    only_float_sqnr: float       # output SQNR when only this group is kept float, all else as the plan
    only_quantized_accuracy: float | None = None   # top-1, when the data has labels
    only_float_accuracy: float | None = None
    plan_sqnr: float = math.nan  # output SQNR of the plan itself (the same in every entry)
    plan_accuracy: float | None = None
    quantized: bool = True       # False if the plan leaves every tensor of the group float32

    @property
    def score(self) -> float:
        """How sensitive, in dB, higher = more sensitive: ``only_float_sqnr - only_quantized_sqnr``.

        Both terms agree for a sensitive group (keeping it float helps; quantizing it alone hurts),
        so their difference ranks groups by both measurements at once. A group the plan does not
        quantize scores -inf."""
        if not self.quantized:
            return -math.inf
        s = self.only_float_sqnr - self.only_quantized_sqnr
        return 0.0 if math.isnan(s) else s

    @property
    def gain_db(self) -> float:
        """Output SQNR gained by keeping only this group float (can be negative by chance)."""
        return self.only_float_sqnr - self.plan_sqnr

    def to_dict(self) -> dict:
        def num(v):
            return None if v is None or not math.isfinite(v) else v
        return {**self.group.to_dict(), "only_quantized_sqnr": num(self.only_quantized_sqnr),
                "only_float_sqnr": num(self.only_float_sqnr), "score": num(self.score),
                "only_quantized_accuracy": self.only_quantized_accuracy,
                "only_float_accuracy": self.only_float_accuracy, "quantized": self.quantized}


def _variant_only_float(index, base, group) -> tuple[dict, list[str]]:
    enc = dict(base)
    for t in group.tensors:
        if group.kinds.get(t) != "activation":
            enc[t] = FLOAT32
    acts = [t for t in group.of_kind("activation") if quantizer_kind(base.get(t)) == "int"]
    for t in group.of_kind("activation"):
        if t not in acts and base.get(t) is not None:
            enc[t] = FLOAT32  # float16 or int32: a structure change, unavoidable
    return enc, acts


def _variant_only_quantized(index, base, group) -> tuple[dict, list[str]]:
    mine = set(group.tensors)
    enc, passthrough = {}, []
    for name, e in base.items():
        if name in mine or name not in index.targets:
            enc[name] = e
        elif index.targets[name].kind != "activation":
            enc[name] = FLOAT32
        elif quantizer_kind(e) == "int":
            enc[name] = e
            passthrough.append(name)
        else:
            enc[name] = FLOAT32
    return enc, passthrough


def sensitivity(index, encodings: dict[str, Encoding], data, *, samples: int | None = 16, batch_size: int = 8,
                progress: Progress | None = None, providers=None,
                evaluator: OutputEvaluator | None = None) -> list[SensitivityEntry]:
    """Every quantizer group with its two output SQNRs, most sensitive first (highest `score`).

    Runs the float model once and the quantized simulation 1 + 2 x (quantized groups) times on the
    first `samples` samples of `data`. Cancellation is checked between runs (raises `Cancelled`).
    Pass an `evaluator` to reuse its cached samples (then `data`, `samples` and `batch_size` are
    not used and the evaluator is left open)."""
    progress = progress or NullProgress()
    groups = quantizer_groups(index)
    base = complete_encodings(index, encodings)
    active = [g for g in groups if any(is_quantizing(index, t, base.get(t)) for t in g.tensors)]
    total = 2 + 2 * len(active)
    progress.update(0, total, "running the float model")
    own = evaluator is None
    ev = evaluator or OutputEvaluator(index, data, samples, batch_size=batch_size, providers=providers,
                                      progress=progress)
    try:
        done = 1
        check_cancel(progress)
        plan_sqnr, plan_acc = ev.set_reference("plan", base, progress=progress, specialise=True)
        done += 1
        progress.update(done, total, "measuring the plan")
        results: dict[str, list] = {g.name: [math.inf, plan_sqnr, ev.float_accuracy, plan_acc] for g in groups}
        nothing = QuantGroup("", "", [])
        # all "only float" variants first, then all "only quantized" ones: each set shares a session,
        # and each variant runs from the last cut before its group, on its reference's kept tensors
        for slot, variant, label, ref in ((1, _variant_only_float, "kept float", "plan"),
                                          (0, _variant_only_quantized, "alone", "float")):
            if ref == "float" and active:
                ev.set_reference("float", *variant(index, base, nothing), progress=progress, specialise=True)
            def record(i: int, result, slot=slot, label=label) -> None:
                nonlocal done
                results[active[i].name][slot], results[active[i].name][slot + 2] = result
                done += 1
                progress.update(done, total, f"{active[i].name} {label}")

            ev.evaluate_all((variant(index, base, g) for g in active), ref, progress, record)
    finally:
        if own:
            ev.close()
    quantized = {g.name for g in active}
    entries = [SensitivityEntry(g, *results[g.name], plan_sqnr=plan_sqnr, plan_accuracy=plan_acc,
                                quantized=g.name in quantized) for g in groups]
    order = {g.name: i for i, g in enumerate(groups)}
    entries.sort(key=lambda e: (-e.score, order[e.group.name]))
    return entries
