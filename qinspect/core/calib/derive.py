"""Activations whose statistics follow from another activation's, so calibration need not read them.

`y = x + c`, `x - c`, `c - x`, `x * c` and `x / c`, with `c` a finite non-zero scalar constant, are
monotone in x, and IEEE rounding keeps them monotone, so min(y) and max(y) are that function of
min(x) and max(x), exactly. The histogram's subsample of y is the function of x's subsample (the
same positions; the values are the ones onnxruntime computes, as both round the one float32 op).
In a transformer this covers the attention scaling and most of an Erf-GELU (x / sqrt 2, + 1, * 0.5):
about a quarter of the values a batch exposes.

Only subsampled histograms gain (an exact histogram must read every value anyway), and a batch
where x held NaN/Inf or y overflows is read as usual.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

_OPS = {"Add", "Sub", "Mul", "Div"}


@dataclass(frozen=True)
class Derived:
    source: str                                # the activation y is computed from
    fn: Callable[[np.ndarray], np.ndarray]     # y's values from x's (float32 in, float32 out)
    decreasing: bool                           # True when fn reverses order (c - x, x * -c, x / -c)


def _scalar(index, name: str) -> np.float32 | None:
    """The value of a constant of one element, if `name` is such a float32 constant."""
    if not index.is_constant(name):
        return None
    try:
        value = index.initializer(name)
    except (KeyError, ValueError):
        return None
    if value.size != 1 or value.dtype != np.float32:
        return None
    c = np.float32(value.reshape(-1)[0])
    return c if np.isfinite(c) else None


def _rule(op: str, c: np.float32, x_first: bool) -> tuple[Callable, bool] | None:
    if op == "Add":
        return (lambda v: v + c), False
    if op == "Sub":
        return ((lambda v: v - c), False) if x_first else ((lambda v: c - v), True)
    if op == "Mul" and c != 0:
        return (lambda v: v * c), bool(c < 0)
    if op == "Div" and c != 0 and x_first:
        return (lambda v: v / c), bool(c < 0)
    return None  # c / x is not monotone across zero; * 0 and / 0 lose the order


def scalar_affine(index, names: list[str]) -> dict[str, Derived]:
    """For the tensors of `names` that are an op of another tensor of `names` and a scalar constant:
    how to derive their statistics. Every source is itself read or derived, in graph order."""
    exposed = set(names)
    rules: dict[str, Derived] = {}
    for name in names:
        info = index.tensors.get(name)
        node = index.nodes.get(info.producer) if info is not None and info.producer else None
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in _OPS or len(node.input) != 2:
            continue
        if info.dtype != np.float32 or list(node.output) != [name]:
            continue
        for k in (0, 1):
            x, const = node.input[k], node.input[1 - k]
            c = _scalar(index, const)
            src = index.tensors.get(x)
            if c is None or x not in exposed or x == name or src is None or src.dtype != np.float32:
                continue
            rule = _rule(node.op_type, c, x_first=k == 0)
            if rule is not None:
                rules[name] = Derived(x, *rule)
                break
    return rules
