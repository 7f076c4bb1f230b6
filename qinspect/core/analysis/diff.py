"""Two configurations side by side (PTQ against QAT, two sessions, before and after a PTQ step):
per tensor, both encodings (bitwidth, range, scale) and the error each gives, with what differs
named; per model output, both SQNRs (and top-1 with labels).

Each side is a full `compare` on the same samples, against its own float model: A's model, or B's
own with `index_b` when its weights differ (after fine-tuning). So with `index_b` the SQNRs say how
well each configuration runs its own weights, not how far B's outputs moved from A's float model.
Tensors are matched by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..progress import Progress
from ..quant.encoding import Encoding
from .compare import Comparison, compare, encoding_label

SQNR_CHANGE_DB = 0.1  # a smaller SQNR change is not called a difference


@dataclass
class Side:
    encoding: str            # "uint8", "int8/ch", "float16", "none", ...
    bw: int | None
    min: float | None        # the grid's ends (over channels: the lowest min, the highest max)
    max: float | None
    scale: float | None      # per tensor; per channel: the largest
    sqnr_db: float | None

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


@dataclass
class TensorDiff:
    name: str
    kind: str
    a: Side
    b: Side
    changed: list[str] = field(default_factory=list)  # of "encoding", "range", "scale", "sqnr"

    @property
    def sqnr_change(self) -> float | None:
        a, b = self.a.sqnr_db, self.b.sqnr_db
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            return None
        return b - a

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "a": self.a.to_dict(), "b": self.b.to_dict(),
                "changed": self.changed, "sqnr_change_db": self.sqnr_change}


@dataclass
class Diff:
    tensors: list[TensorDiff]
    outputs: dict[str, tuple[float, float]]  # output -> (A's SQNR, B's SQNR)
    samples: int
    accuracy: tuple | None = None            # (float, A, B) top-1, with labels

    def to_dict(self) -> dict:
        def num(x):
            return None if x is None or not math.isfinite(x) else x

        return {"samples": self.samples,
                "outputs": [{"name": n, "a_sqnr_db": num(a), "b_sqnr_db": num(b)} for n, (a, b) in self.outputs.items()],
                "accuracy": None if self.accuracy is None else dict(zip(("float", "a", "b"), self.accuracy)),
                "tensors": [t.to_dict() for t in self.tensors]}


def side(enc: Encoding | None, sqnr: float | None) -> Side:
    if enc is None or enc.is_float:
        return Side(encoding_label(enc), None if enc is None else enc.bw, None, None, None, sqnr)
    return Side(encoding_label(enc), enc.bw, float(np.min(enc.min)), float(np.max(enc.max)),
                float(np.max(enc.scales)), sqnr)


def _changed(a: Side, b: Side) -> list[str]:
    out = []
    if (a.encoding, a.bw) != (b.encoding, b.bw):
        out.append("encoding")
    if (a.min, a.max) != (b.min, b.max):
        out.append("range")
    if a.scale != b.scale:
        out.append("scale")
    if a.sqnr_db is not None and b.sqnr_db is not None and (
            math.isfinite(a.sqnr_db) != math.isfinite(b.sqnr_db)
            or (math.isfinite(a.sqnr_db) and abs(b.sqnr_db - a.sqnr_db) >= SQNR_CHANGE_DB)):
        out.append("sqnr")
    return out


def join(ca: Comparison, cb: Comparison) -> Diff:
    """The per-tensor and per-output table of two comparisons (same samples)."""
    rows = []
    for name in dict.fromkeys(list(ca.tensors) + list(cb.tensors)):
        ta, tb = ca.tensors.get(name), cb.tensors.get(name)
        a = side(ca.encodings.get(name), ta.sqnr_db if ta else None)
        b = side(cb.encodings.get(name), tb.sqnr_db if tb else None)
        rows.append(TensorDiff(name, (ta or tb).kind, a, b, _changed(a, b)))
    outputs = {n: (o.sqnr_db, cb.outputs[n].sqnr_db) for n, o in ca.outputs.items() if n in cb.outputs}
    accuracy = None
    if ca.accuracy_float is not None:
        accuracy = (ca.accuracy_float, ca.accuracy_quantized, cb.accuracy_quantized)
    return Diff(rows, outputs, min(ca.samples, cb.samples), accuracy)


def diff(index_a, encodings_a: dict[str, Encoding], encodings_b: dict[str, Encoding], data, *, index_b=None,
         samples: int | None = None, batch_size: int = 8, progress: Progress | None = None, providers=None) -> Diff:
    """Compare A and B each against the float model (A's) on the same samples, and join the results."""
    ca = compare(index_a, encodings_a, data, samples=samples, batch_size=batch_size, progress=progress,
                 providers=providers)
    cb = compare(index_b or index_a, encodings_b, data, samples=samples, batch_size=batch_size, progress=progress,
                 providers=providers)
    return join(ca, cb)
