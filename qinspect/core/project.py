"""The state one window (or one script) works on: model, statistics, plan and derived encodings.

Views subscribe to change events and never own the truth. Events:
``"model"`` (a model was opened; everything changed), ``"stats"`` (a calibration finished),
``"plan"`` (edits; `names` lists the tensors whose encodings may have changed, None = all).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from .quant.encoding import Encoding
from .io.session import Session, load_session, save_session
from .graph.model import ModelIndex, load_model
from .plan import PrecisionPlan, TensorEdit, check_edit, derive_encodings
from .quant.stats import TensorStats

Listener = Callable[[str, "list[str] | None"], None]


class Project:
    def __init__(self, index: ModelIndex | None = None, plan: PrecisionPlan | None = None):
        self.index = index
        self.plan = plan or PrecisionPlan()
        self.stats: dict[str, TensorStats] = {}
        self.samples = 0
        self.data_spec: str | None = None
        self.data_options: dict = {}
        self._encodings: dict[str, Encoding] | None = None
        self._listeners: list[Listener] = []

    # --- events -----------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: str, names: list[str] | None = None) -> None:
        for listener in list(self._listeners):
            listener(event, names)

    # --- loading ----------------------------------------------------------------------------
    @property
    def model_path(self) -> str | None:
        return self.index.path if self.index is not None else None

    def open_model(self, path_or_index) -> None:
        """Open a model; on failure (ModelError) the previous state is kept."""
        index = path_or_index if isinstance(path_or_index, ModelIndex) else load_model(path_or_index)
        self.index = index
        self.plan = PrecisionPlan(self.plan.defaults)
        self.stats = {}
        self.samples = 0
        self._encodings = None
        self._emit("model")

    def set_stats(self, stats: dict[str, TensorStats], samples: int = 0, data_spec=None, data_options=None) -> None:
        self.stats = dict(stats)
        self.samples = samples
        if data_spec is not None:
            self.data_spec = data_spec
            self.data_options = dict(data_options or {})
        self._encodings = None
        self._emit("stats")

    # --- encodings --------------------------------------------------------------------------
    @property
    def encodings(self) -> dict[str, Encoding]:
        if self.index is None:
            return {}
        if self._encodings is None:
            self._encodings = derive_encodings(self.index, self.stats, self.plan)
        return self._encodings

    def encoding(self, name: str) -> Encoding | None:
        if self.index is None:
            return None
        return self.encodings.get(self.index.encoding_source(name))

    # --- edits (called by commands, so that every edit can be undone) --------------------------
    def apply_edit(self, names: list[str], changes: dict) -> dict[str, TensorEdit]:
        """Apply the same changes to several tensors; returns their previous edits for undo."""
        return self.apply_edits({name: changes for name in names})

    def apply_edits(self, changes_by_name: dict[str, dict]) -> dict[str, TensorEdit]:
        """Apply per-tensor changes; returns the previous edits for undo.

        All edits are checked first, so a bad value changes nothing.
        """
        problems = []
        for name, changes in changes_by_name.items():
            if self.index is not None and name not in self.index.targets:
                problems.append(f"{name}: not a quantized tensor of this model")
                continue
            problems += check_edit(name, replace(self.plan.edit(name), **changes))
        if problems:
            raise ValueError("; ".join(problems))
        previous = {name: self.plan.set(name, **changes) for name, changes in changes_by_name.items()}
        self._changed(list(changes_by_name))
        return previous

    def restore_edits(self, edits: dict[str, TensorEdit]) -> None:
        for name, edit in edits.items():
            self.plan.restore(name, edit)
        self._changed(list(edits))

    def _changed(self, names: list[str]) -> None:
        if self._encodings is not None and self.index is not None:
            self._encodings = derive_encodings(self.index, self.stats, self.plan, names, self._encodings)
        self._emit("plan", list(names))

    # --- summaries --------------------------------------------------------------------------
    def size_bytes(self) -> tuple[int, int]:
        """(bytes of weights and biases at the plan's bitwidths, bytes in float32)."""
        if self.index is None:
            return 0, 0
        quantized = floats = 0
        encodings = self.encodings
        for name in self.index.weights() + self.index.biases():
            count = int(np.prod(self.index.initializer(name).shape))
            floats += 4 * count
            enc = encodings.get(name)
            quantized += count * (enc.bw if enc is not None else 32) // 8
        return quantized, floats

    # --- sessions ---------------------------------------------------------------------------
    def save_session(self, path) -> Path:
        if self.index is None or self.index.path is None:
            raise ValueError("open a model from a file before saving a session")
        session = Session(self.index.path, self.data_spec, self.stats, self.plan, self.data_options)
        return save_session(path, session, protect=[self.index.path])

    @classmethod
    def from_session(cls, path) -> Project:
        session = load_session(path)
        project = cls(load_model(session.model_path), session.plan)
        project.stats = session.stats
        project.data_spec = session.data
        project.data_options = session.data_options
        return project
