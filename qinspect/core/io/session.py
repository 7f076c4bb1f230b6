"""Session files: model path, data settings, statistics and plan in one versioned JSON document,
so that reopening needs no new calibration."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QInspectError
from ..plan import PrecisionPlan
from ..quant.stats import TensorStats
from .files import atomic_write, read_json

SCHEMA_VERSION = 1


@dataclass
class Session:
    model_path: str
    data: str | None = None
    stats: dict[str, TensorStats] = field(default_factory=dict)
    plan: PrecisionPlan = field(default_factory=PrecisionPlan)
    data_options: dict = field(default_factory=dict)
    samples: int = 0  # how many samples the statistics came from


def _absolute(data: str | None) -> str | None:
    """A data path as typed (relative to where the command ran) made absolute, so the session opens
    from anywhere; other DATA forms (random:N) stay as they are."""
    if data and Path(data).exists():
        return str(Path(data).resolve())
    return data


def session_dict(session: Session) -> dict:
    return {
        "format": "qinspect-session",
        "schema_version": SCHEMA_VERSION,
        "model_path": str(Path(session.model_path).resolve()),
        "data": _absolute(session.data),
        "samples": int(session.samples),
        "data_options": session.data_options,
        "stats": {name: s.to_dict() for name, s in session.stats.items()},
        "plan": session.plan.to_dict(),
    }


def save_session(path, session: Session, protect=()) -> Path:
    return atomic_write(path, json.dumps(session_dict(session)), protect=protect)


def load_session(path) -> Session:
    path = Path(path)
    doc = read_json(path, QInspectError, "choose a .qinspect file saved by qinspect")
    if not isinstance(doc, dict) or doc.get("format") != "qinspect-session":
        raise QInspectError(f"{path}: not a qinspect session file")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise QInspectError(f"{path}: session schema {version} is not supported (this qinspect reads {SCHEMA_VERSION}); upgrade qinspect")
    try:
        return Session(
            model_path=doc["model_path"],
            data=doc.get("data"),
            stats={name: TensorStats.from_dict(s) for name, s in doc.get("stats", {}).items()},
            plan=PrecisionPlan.from_dict(doc.get("plan", {})),
            data_options=doc.get("data_options", {}),
            samples=int(doc.get("samples", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise QInspectError(f"{path}: the session file is damaged ({exc}); recalibrate and save again") from None
