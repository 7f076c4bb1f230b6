"""Session files: model path, data settings, statistics and plan in one versioned JSON document,
so that reopening needs no new calibration.

A session with PTQ steps also keeps what they did, beside it: `<session>.model.onnx` (the model
as equalization and bias correction rewrote it) and `<session>.values.npz` (the values AdaRound
and bias correction give the quantizers). Both are written before the JSON that names them.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import QInspectError
from ..plan import PrecisionPlan
from ..quant.stats import TensorStats
from .files import atomic_write, read_json

SCHEMA_VERSION = 2
READABLE = (1, 2)  # 1: before PTQ steps


@dataclass
class Session:
    model_path: str
    data: str | None = None
    stats: dict[str, TensorStats] = field(default_factory=dict)
    plan: PrecisionPlan = field(default_factory=PrecisionPlan)
    data_options: dict = field(default_factory=dict)
    samples: int = 0  # how many samples the statistics came from
    steps: list[dict] = field(default_factory=list)        # PTQ steps applied (StepRecord dicts)
    model: onnx.ModelProto | None = None                   # the rewritten model, when there are steps
    ptq_values: dict[str, np.ndarray] = field(default_factory=dict)
    bn_params: dict = field(default_factory=dict)          # layer -> (|gamma|, beta)


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


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + ".model.onnx"), path.with_name(path.name + ".values.npz")


def save_session(path, session: Session, protect=()) -> Path:
    path = Path(path)
    doc = session_dict(session)
    if session.steps:
        model_file, values_file = _sidecars(path)
        atomic_write(model_file, session.model.SerializeToString(), protect=protect)
        buffer = io.BytesIO()
        np.savez(buffer, **{f"v{i}": v for i, v in enumerate(session.ptq_values.values())})
        atomic_write(values_file, buffer.getvalue(), protect=protect)
        doc["ptq"] = {
            "steps": session.steps,
            "model_file": model_file.name,
            "values_file": values_file.name,
            "values": list(session.ptq_values),
            "bn_params": {k: {"gamma": [float(x) for x in g], "beta": [float(x) for x in b]}
                          for k, (g, b) in session.bn_params.items()},
        }
    return atomic_write(path, json.dumps(doc), protect=protect)


def _read_ptq(path: Path, doc: dict, session: Session) -> None:
    ptq = doc.get("ptq")
    if not ptq:
        return
    model_file, values_file = path.with_name(ptq["model_file"]), path.with_name(ptq["values_file"])
    for file in (model_file, values_file):
        if not file.is_file():
            raise QInspectError(f"{path}: {file.name}, which holds its PTQ steps' work, is missing: keep it beside "
                                "the session (or reopen the model and apply the steps again)")
    try:
        session.model = onnx.load(str(model_file))
        with np.load(values_file) as values:
            session.ptq_values = {name: values[f"v{i}"] for i, name in enumerate(ptq.get("values", []))}
    except Exception as exc:
        raise QInspectError(f"{path}: {model_file.name} or {values_file.name} is damaged ({str(exc).splitlines()[0]}); "
                            "reopen the model and apply the steps again") from None
    session.steps = list(ptq.get("steps", []))
    session.bn_params = {k: (np.array(v["gamma"]), np.array(v["beta"])) for k, v in ptq.get("bn_params", {}).items()}


def load_session(path) -> Session:
    path = Path(path)
    doc = read_json(path, QInspectError, "choose a .qinspect file saved by qinspect")
    if not isinstance(doc, dict) or doc.get("format") != "qinspect-session":
        raise QInspectError(f"{path}: not a qinspect session file")
    version = doc.get("schema_version")
    if version not in READABLE:
        raise QInspectError(f"{path}: session schema {version} is not supported (this qinspect reads {SCHEMA_VERSION}); upgrade qinspect")
    try:
        session = Session(
            model_path=doc["model_path"],
            data=doc.get("data"),
            stats={name: TensorStats.from_dict(s) for name, s in doc.get("stats", {}).items()},
            plan=PrecisionPlan.from_dict(doc.get("plan", {})),
            data_options=doc.get("data_options", {}),
            samples=int(doc.get("samples", 0)),
        )
        _read_ptq(path, doc, session)
        return session
    except (KeyError, TypeError, ValueError) as exc:
        raise QInspectError(f"{path}: the session file is damaged ({exc}); recalibrate and save again") from None
