"""Statistics files (`.qstats`) for sharded calibration: each shard's calibration writes one
(`qinspect calibrate ... --save-stats PART.qstats`) and `merge_stats` adds them up, as if one run
had seen all the data.

Activation statistics add (`TensorStats.merge`: counts, min and max exactly, histograms re-binned
onto a grid that covers both). Weights and biases do not depend on the data: every shard holds the
same exact statistics, so the merge keeps one copy and checks the others agree. A file names the
model it came from by a fingerprint of its quantizer positions (names and kinds, after the target's
BatchNormalization folding), so shards of different models or targets are refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QInspectError
from ..quant.stats import TensorStats
from .files import atomic_write, read_json

FORMAT = "qinspect-stats"
SCHEMA_VERSION = 1


@dataclass
class StatsFile:
    model_path: str
    fingerprint: str
    target: str
    samples: int
    stats: dict[str, TensorStats]
    constants: list[str] = field(default_factory=list)  # weights and biases among `stats`
    data: str | None = None
    sampled: bool = True  # histograms from a subsample of each batch (min/max are exact either way)


def fingerprint(index) -> str:
    """The model's quantizer positions (name and kind), hashed: shards must agree on it."""
    text = "\n".join(f"{name}\t{t.kind}" for name, t in sorted(index.targets.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_stats(path, part: StatsFile, protect=()) -> Path:
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "model_path": str(Path(part.model_path).resolve()),
        "fingerprint": part.fingerprint,
        "target": part.target,
        "samples": int(part.samples),
        "data": part.data,
        "sampled": bool(part.sampled),
        "constants": list(part.constants),
        "stats": {name: s.to_dict() for name, s in part.stats.items()},
    }
    return atomic_write(Path(path), json.dumps(doc), protect=protect)


def load_stats(path) -> StatsFile:
    path = Path(path)
    doc = read_json(path, QInspectError, "choose a .qstats file written by qinspect calibrate --save-stats")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise QInspectError(f"{path}: not a qinspect statistics file (write one with qinspect calibrate --save-stats)")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise QInspectError(f"{path}: statistics schema {doc.get('schema_version')} is not supported (this qinspect "
                            f"reads {SCHEMA_VERSION}); calibrate the shard again with this version")
    try:
        return StatsFile(model_path=doc["model_path"], fingerprint=doc["fingerprint"], target=doc["target"],
                         samples=int(doc["samples"]),
                         stats={name: TensorStats.from_dict(s) for name, s in doc["stats"].items()},
                         constants=list(doc.get("constants", [])), data=doc.get("data"),
                         sampled=bool(doc.get("sampled", True)))
    except (KeyError, TypeError, ValueError) as exc:
        raise QInspectError(f"{path}: the statistics file is damaged ({exc}); calibrate the shard again") from None


def merge_stats(paths) -> StatsFile:
    """One StatsFile from the shards' files, as one calibration on all their data would give
    (histograms within the re-binning error)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise QInspectError("no statistics files to merge")
    parts = [load_stats(p) for p in paths]
    first, where = parts[0], paths[0]
    for part, path in zip(parts[1:], paths[1:]):
        if part.fingerprint != first.fingerprint or part.target != first.target:
            raise QInspectError(f"{path}: its statistics are of another model or target than {where}'s "
                                f"({part.model_path}, {part.target} against {first.model_path}, {first.target}); "
                                "calibrate every shard with the same model and --target")
        if part.sampled != first.sampled:
            raise QInspectError(f"{path}: its histograms are {'sub' if part.sampled else 'exact'}sampled, {where}'s are "
                                f"not; calibrate every shard the same way (--exact-histograms or not)")
    merged: dict[str, TensorStats] = {}
    constants = set(first.constants)
    for part, path in zip(parts, paths):
        for name, s in part.stats.items():
            if name in constants:
                kept = merged.setdefault(name, s)
                if (kept.count, kept.min, kept.max) != (s.count, s.min, s.max):
                    raise QInspectError(f"{path}: {name} is a weight but its values differ from {where}'s; the "
                                        "shards were calibrated from different models (or PTQ steps): calibrate "
                                        "them alike")
                continue
            if name in merged:
                merged[name].merge(s)
            else:  # a copy: the loaded shard stays as it was
                merged[name] = TensorStats.from_dict(s.to_dict())
    return StatsFile(model_path=first.model_path, fingerprint=first.fingerprint, target=first.target,
                     samples=sum(p.samples for p in parts), stats=merged, constants=first.constants,
                     data=None, sampled=first.sampled)
