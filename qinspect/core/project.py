"""The state one window (or one script) works on: model, statistics, plan (with its target) and
derived encodings.

Views subscribe to change events and never own the truth. Events:
``"model"`` (a model was opened; everything changed), ``"index"`` (the same document's model was
rewritten: a PTQ step, or a target that places quantizers differently; views rebuild as for
"model", the document and its history stay), ``"stats"`` (a calibration finished), ``"plan"``
(edits, or another target; `names` lists the tensors whose encodings may have changed, None = all).
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from .graph.model import ModelIndex
from .io.session import Session, load_session, save_session
from .plan import PrecisionPlan, TensorEdit, check_edit, derive_encodings, refusals, rule_effects
from .ptq.prepare import prepare_model
from .steps import StepOutcome, StepRecord
from .quant.encoding import Encoding
from .quant.stats import TensorStats
from .targets.profiles import get_target
from .targets.rules import RuleEffect, summary

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
        self._effects: dict[str, RuleEffect] | None = None
        self._listeners: list[Listener] = []
        self.steps: list[StepRecord] = []  # PTQ steps applied, in order
        # (index, statistics, step title) before the last step, for before/after views
        self.before: tuple | None = None

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

    @property
    def target(self) -> str:
        return self.plan.target

    def open_model(self, path_or_index) -> None:
        """Open a model as the current target runs it; on failure (ModelError) the previous state is kept."""
        if isinstance(path_or_index, ModelIndex):
            index = path_or_index
        else:
            index = prepare_model(path_or_index, self.plan.target)
        self.index = index
        self.plan = PrecisionPlan(self.plan.defaults, self.plan.target)
        self.stats = {}
        self.samples = 0
        self.steps, self.before = [], None
        self._encodings = self._effects = None
        self._emit("model")

    def set_target(self, name: str) -> str:
        """Switch to another target; returns the previous one (for undo). Raises ValueError, changing
        nothing, when the plan holds settings the new target cannot run. A target that places
        quantizers differently reopens the model (statistics of tensors both share are kept)."""
        new, old = get_target(name), get_target(self.plan.target)
        if new.name == old.name:
            return old.name
        if self.index is not None:
            trial = copy.copy(self.plan)
            trial.target = new.name
            problems = refusals(self.index, trial, list(self.plan.edits))
            if problems:
                raise ValueError(f"{new.name} cannot run the current plan: " + summary(problems, limit=4))
        reindex = self.index is not None and (new.placement, new.fold_batchnorm) != (old.placement, old.fold_batchnorm)
        if reindex:
            if self.steps:  # the rewritten model, not the file: the steps' work stays
                index = prepare_model(self.index.model, new.name)
                index.path, index.notes, index.bn_params = self.index.path, self.index.notes, self.index.bn_params
                index.ptq_values = dict(self.index.ptq_values)
            else:
                index = prepare_model(self.index.path or self.index.model, new.name)
            self.index = index
            self.stats = {n: s for n, s in self.stats.items() if n in index.targets}
        self.plan.target = new.name
        self._encodings = self._effects = None
        if reindex:
            self._emit("index")
        else:
            self._emit("plan", None)
        return old.name

    def set_defaults(self, **changes) -> dict:
        """Change what every tensor gets unless edited (scheme, bitwidths, ...); returns the previous
        values, for undo. Every encoding is derived again."""
        from dataclasses import asdict

        unknown = set(changes) - set(asdict(self.plan.defaults))
        if unknown:
            raise ValueError(f"unknown defaults: {', '.join(sorted(unknown))}")
        previous = {k: getattr(self.plan.defaults, k) for k in changes}
        self.plan.defaults = replace(self.plan.defaults, **changes)
        self._encodings = self._effects = None
        self._emit("plan", None)
        return previous

    def set_stats(self, stats: dict[str, TensorStats], samples: int = 0, data_spec=None, data_options=None) -> None:
        self.stats = dict(stats)
        self.samples = samples
        if data_spec is not None:
            self.data_spec = data_spec
            self.data_options = dict(data_options or {})
        self._encodings = self._effects = None
        self._emit("stats")

    # --- PTQ steps (called by commands) -----------------------------------------------------------
    def apply_step(self, outcome: StepOutcome) -> tuple:
        """Put a step's result in place (`steps.run_step` computed it); returns the state to give
        `restore_state` for undo."""
        previous = self._state()
        self.before = (self.index, self.stats, outcome.record.title)
        self.index = outcome.index
        if outcome.stats is not None:
            self.stats, self.samples = dict(outcome.stats), outcome.samples
        for name, enc in outcome.frozen.items():
            self.plan.restore(name, replace(self.plan.edit(name), encoding=enc))
        self.steps = self.steps + [outcome.record]
        self._encodings = self._effects = None
        self._emit("index")
        return previous

    def restore_state(self, state: tuple) -> None:
        self.index, self.stats, self.samples, edits, self.steps, self.before = state
        self.plan.edits = {n: replace(e) for n, e in edits.items()}
        self._encodings = self._effects = None
        self._emit("index")

    def _state(self) -> tuple:
        edits = {n: replace(e) for n, e in self.plan.edits.items()}
        return self.index, dict(self.stats), self.samples, edits, list(self.steps), self.before

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

    @property
    def rule_effects(self) -> dict[str, RuleEffect]:
        """Tensors whose settings a target rule changed, with what it did and why."""
        if self.index is None:
            return {}
        if self._effects is None:
            self._effects = rule_effects(self.index, self.plan)
        return self._effects

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
        if not problems and self.index is not None:
            trial = copy.copy(self.plan)
            trial.edits = dict(self.plan.edits)
            for name, changes in changes_by_name.items():
                trial.restore(name, replace(trial.edit(name), **changes))
            problems = refusals(self.index, trial, list(changes_by_name))
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
        """Re-derive what the edits of `names` change: themselves, what target rules tie to them and
        the biases that follow them; views hear about all of those."""
        self._effects = None
        changed = set(names)
        if self._encodings is not None and self.index is not None:
            old = self._encodings
            self._encodings = derive_encodings(self.index, self.stats, self.plan, names, old)
            changed |= {n for n in set(old) | set(self._encodings) if old.get(n) != self._encodings.get(n)}
        self._emit("plan", sorted(changed))

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
        session = Session(self.index.path, self.data_spec, self.stats, self.plan, self.data_options, self.samples)
        if self.steps:
            session.steps = [r.to_dict() for r in self.steps]
            session.model, session.ptq_values = self.index.model, self.index.ptq_values
            session.bn_params = self.index.bn_params
        return save_session(path, session, protect=[self.index.path])

    @classmethod
    def from_session(cls, path) -> Project:
        session = load_session(path)
        if session.steps:  # the model the steps rewrote, as the user's file
            index = prepare_model(session.model, session.plan.target)
            index.path, index.bn_params, index.ptq_values = session.model_path, session.bn_params, session.ptq_values
        else:
            index = prepare_model(session.model_path, session.plan.target)
        project = cls(index, session.plan)
        project.steps = [StepRecord.from_dict(d) for d in session.steps]
        project.stats = session.stats
        project.samples = session.samples
        project.data_spec = session.data
        project.data_options = session.data_options
        return project


def session_configuration(path, index: ModelIndex, target: str) -> tuple[dict[str, Encoding], ModelIndex | None]:
    """A session as one side of a comparison with `index`'s model: its encodings, and its own model's
    index when its PTQ steps rewrote the model (None otherwise). Raises QInspectError naming the file
    and the fix for a session of another target or model, or without a calibration."""
    from .errors import QInspectError

    try:
        project = Project.from_session(path)
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc)
        raise QInspectError(text if Path(path).name in text else f"{path}: cannot open this session: {text}") from None
    if project.target != target:
        raise QInspectError(f"{path}: the session is for target {project.target}; switch to it "
                            f"(--target {project.target})")
    if not project.stats:
        raise QInspectError(f"{path}: the session holds no calibration; calibrate it and save it again")
    if set(project.index.targets) != set(index.targets):
        raise QInspectError(f"{path}: the session is of another model ({project.index.path}); compare sessions "
                            f"of the model open here")
    return dict(project.encodings), (project.index if project.steps else None)
