"""Cross-layer equalization (Nagel et al. 2019, arXiv 1906.04721), with high-bias absorption.

A chain is Conv -> act -> Conv, or Conv -> act -> depthwise Conv -> act -> Conv (the forms the QNN
converter's guide lists; Gemm and MatMul take part like a Conv), where each tensor between the
layers has one reader and is not a graph output. `act` is Relu, nothing, or Relu6 (Clip 0..6),
which becomes Relu as the QNN converter and AIMET do: a Relu commutes with a positive per-channel
scale, Relu6 does not. Any other activation ends the chain; every chain not taken is listed with
the reason.

For two layers, output channel i of the first is divided by s_i = sqrt(r1_i / r2_i) and input
channel i of the second multiplied by it, r being the per-channel max |w|; both then have the range
sqrt(r1_i r2_i). For a depthwise chain the three ranges meet at R = (r1 r2 r3)^(1/3): s1 = r1 / R
and s2 = R / r3 (the depthwise channel is scaled by s1 / s2). Chains that share a layer are
equalized again until the scales settle.

High-bias absorption: where the first layer had a BatchNormalization (its output channel ~
N(beta, gamma^2)) and a Relu follows, c = max(0, beta - 3 |gamma|) moves from its bias into the
next layer's (through that layer's weights), which shrinks the activation range the quantizer has
to cover. It is exact while the pre-activation stays above c, which the 3-sigma margin makes the
common case; padded borders of a convolution see c where they saw 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..progress import NullProgress, Progress, check_cancel
from .layers import Layer, WorkingModel, along, attr, layer_of, per_channel_max

MAX_PASSES = 30
SETTLED = 1e-6  # |log s| under this for every channel: the chains are equalized
HIGH_BIAS_SIGMAS = 3.0


@dataclass
class Chain:
    layers: list[Layer]
    acts: list[onnx.NodeProto | None]  # the activation after each layer but the last

    @property
    def name(self) -> str:
        return " -> ".join(layer.node for layer in self.layers)


@dataclass
class CleReport:
    chains: list[str] = field(default_factory=list)        # equalized, "conv1 -> dw1 -> pw1"
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why no chain starts there
    relu6: list[str] = field(default_factory=list)         # Clip nodes now Relu
    absorbed: dict[str, int] = field(default_factory=dict)  # layer -> channels whose high bias moved on
    passes: int = 0

    def notes(self) -> list[str]:
        out = [f"equalized {len(self.chains)} chain(s) in {self.passes} pass(es): " + "; ".join(self.chains[:8])
               + (f"; and {len(self.chains) - 8} more" if len(self.chains) > 8 else "")]
        if self.relu6:
            out.append(f"{len(self.relu6)} Relu6 (Clip 0..6) became Relu, as the QNN converter and AIMET do before "
                       f"equalizing (values above 6 are no longer clipped): {', '.join(self.relu6[:8])}")
        if self.absorbed:
            out.append("high bias absorbed into the next layer after " + ", ".join(
                f"{k} ({v} channels)" for k, v in list(self.absorbed.items())[:8]))
        for layer, why in list(self.skipped.items())[:8]:
            out.append(f"not equalized after {layer}: {why}")
        if len(self.skipped) > 8:
            out.append(f"... and {len(self.skipped) - 8} more layers start no chain")
        return out


def _act_kind(wm: WorkingModel, node: onnx.NodeProto) -> str | None:
    """"relu", "relu6" or None (not an activation CLE can cross)."""
    if node.op_type == "Relu":
        return "relu"
    if node.op_type != "Clip":
        return None
    if len(node.input) > 1:  # opset >= 11: bounds are inputs
        bounds = []
        for name in list(node.input[1:3]) + [""] * (3 - len(node.input)):
            if not name:
                bounds.append(None)
            elif name in wm.inits:
                bounds.append(float(wm.value(name).reshape(-1)[0]))
            else:
                return None
        lo, hi = bounds
    else:
        lo, hi = attr(node, "min", None), attr(node, "max", None)
    if lo != 0.0:
        return None
    if hi is None or hi == float("inf") or hi >= 3.4e38:
        return "relu"
    return "relu6" if hi == 6.0 else None


def _next_layer(wm: WorkingModel, layers: dict[str, Layer], tensor: str, after: str):
    """(activation node or None, the layer reading it) after `tensor`, or a reason (str)."""
    node = wm.single_consumer(tensor)
    if node is None:
        readers = len(wm.consumers.get(tensor, []))
        return ("its output is a graph output" if tensor in wm.outputs
                else f"its output feeds {readers} nodes" if readers else "nothing reads its output")
    if node.name in layers:
        return None, layers[node.name]
    if _act_kind(wm, node) is None:
        return f"{node.op_type} {node.name} follows it (only Relu and Relu6 can be crossed)"
    second = wm.single_consumer(node.output[0])
    if second is None or second.name not in layers:
        what = "several nodes" if second is None else f"{second.op_type} {second.name}"
        return f"{node.name} feeds {what}, not one Conv, Gemm or MatMul"
    return node, layers[second.name]


def _in_channels(wm: WorkingModel, layer: Layer) -> int:
    w = wm.value(layer.weight)
    return int(w.shape[0]) if layer.depthwise else int(w.shape[layer.in_axis])


def find_chains(wm: WorkingModel) -> tuple[list[Chain], dict[str, str]]:
    """The chains to equalize, and why the other layers start none."""
    layers = wm.layers()
    chains, skipped = [], {}
    for layer in layers.values():
        if layer.depthwise:
            continue  # a depthwise layer sits in the middle of a chain
        found = _next_layer(wm, layers, layer.output, layer.node)
        if isinstance(found, str):
            skipped[layer.node] = found
            continue
        act, second = found
        if _in_channels(wm, second) != layer.channels(wm.value(layer.weight)):
            skipped[layer.node] = f"{second.node} reads a different number of channels"
            continue
        chain = Chain([layer, second], [act])
        if second.depthwise:
            third = _next_layer(wm, layers, second.output, second.node)
            if not isinstance(third, str) and not third[1].depthwise \
                    and _in_channels(wm, third[1]) == second.channels(wm.value(second.weight)):
                chain = Chain([layer, second, third[1]], [act, third[0]])
        chains.append(chain)
    inside = {layer.node for chain in chains for layer in chain.layers}
    return chains, {k: v for k, v in skipped.items() if k not in inside}  # a chain's last layer starts none


def _scale_out(wm: WorkingModel, layer: Layer, s: np.ndarray) -> None:
    """Divide the layer's output channels (weights and bias) by s."""
    w = wm.value(layer.weight)
    wm.set(layer.weight, w / along(s, layer.out_axis, w.ndim))
    if layer.bias is not None:
        wm.set(layer.bias, wm.value(layer.bias) / s)
    if layer.node in wm.bn_params:
        gamma, beta = wm.bn_params[layer.node]
        wm.bn_params[layer.node] = (gamma / s, beta / s)


def _scale_in(wm: WorkingModel, layer: Layer, s: np.ndarray) -> None:
    """Multiply the layer's input channels by s (a depthwise layer's channels, bias untouched)."""
    w = wm.value(layer.weight)
    axis = 0 if layer.depthwise else layer.in_axis
    wm.set(layer.weight, w * along(s, axis, w.ndim))


def _safe(s: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def _equalize_once(wm: WorkingModel, chain: Chain) -> float:
    """Scale one chain; returns the largest |log s| applied."""
    first, *rest = chain.layers
    r1 = per_channel_max(wm.value(first.weight).astype(np.float64), first.out_axis)
    if len(rest) == 1:
        second = rest[0]
        r2 = per_channel_max(wm.value(second.weight).astype(np.float64), 0 if second.depthwise else second.in_axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = _safe(np.sqrt(r1 / r2))
        _scale_out(wm, first, s)
        _scale_in(wm, second, s)
        return float(np.abs(np.log(s)).max(initial=0.0))
    dw, last = rest
    r2 = per_channel_max(wm.value(dw.weight).astype(np.float64), 0)
    r3 = per_channel_max(wm.value(last.weight).astype(np.float64), last.in_axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        big = np.cbrt(r1 * r2 * r3)
        s1, s2 = _safe(r1 / big), _safe(big / r3)
    _scale_out(wm, first, s1)
    _scale_in(wm, dw, s1)
    _scale_out(wm, dw, s2)
    _scale_in(wm, last, s2)
    return float(max(np.abs(np.log(s1)).max(initial=0.0), np.abs(np.log(s2)).max(initial=0.0)))


def _absorb(wm: WorkingModel, prev: Layer, nxt: Layer) -> int:
    """Move the high bias of `prev` (through a Relu) into `nxt`; returns the channels moved."""
    gamma, beta = wm.bn_params[prev.node]
    c = np.maximum(0.0, beta - HIGH_BIAS_SIGMAS * gamma)
    if not (c > 0).any() or prev.bias is None:
        return 0
    nxt = wm.ensure_bias(nxt)
    w = wm.value(nxt.weight).astype(np.float64)
    if nxt.depthwise:
        shift = w.reshape(w.shape[0], -1).sum(axis=1) * c
    elif nxt.op_type == "Conv":
        shift = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) @ c
    elif nxt.in_axis == 1:
        shift = w @ c
    else:
        shift = c @ w
    wm.set(prev.bias, wm.value(prev.bias) - c)
    wm.set(nxt.bias, wm.value(nxt.bias) + shift)
    wm.bn_params[prev.node] = (gamma, beta - c)
    return int((c > 0).sum())


def _to_relu(node: onnx.NodeProto) -> None:
    node.op_type = "Relu"
    del node.input[1:]
    kept = [a for a in node.attribute if a.name not in ("min", "max")]
    del node.attribute[:]
    node.attribute.extend(kept)


def equalize(model: onnx.ModelProto, bn_params: dict | None = None, *, absorb_high_bias: bool = True,
             progress: Progress | None = None) -> tuple[onnx.ModelProto, dict, CleReport]:
    """A copy of `model` (BatchNormalization already folded) with its chains equalized; the updated
    `bn_params` (layer -> (|gamma|, beta)) and what was done."""
    progress = progress or NullProgress()
    wm = WorkingModel(model, bn_params)
    chains, skipped = find_chains(wm)
    report = CleReport(skipped=skipped)
    for chain in chains:
        for act in chain.acts:
            if act is not None and _act_kind(wm, act) == "relu6":
                _to_relu(act)
                report.relu6.append(act.name)
        report.chains.append(chain.name)
    for report.passes in range(1, MAX_PASSES + 1):
        check_cancel(progress)
        progress.update(report.passes, MAX_PASSES, "equalizing")
        moved = max((_equalize_once(wm, chain) for chain in chains), default=0.0)
        if moved < SETTLED:
            break
    progress.update(MAX_PASSES, MAX_PASSES, "equalized")
    if absorb_high_bias:
        for chain in chains:
            for prev, act, nxt in zip(chain.layers, chain.acts, chain.layers[1:]):
                if act is not None and prev.node in wm.bn_params:
                    current = wm.layers()  # an earlier absorption may have given a layer a bias
                    moved = _absorb(wm, current[prev.node], current[nxt.node])
                    if moved:
                        report.absorbed[prev.node] = moved
    return wm.proto(), wm.bn_params, report
