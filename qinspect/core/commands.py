"""Every user edit is a command on a Project, so that it can be undone and redone (glue's pattern)."""
from __future__ import annotations

from typing import Callable

MAX_UNDO = 200


class Command:
    label = "edit"

    def do(self, project) -> None:
        raise NotImplementedError

    def undo(self, project) -> None:
        raise NotImplementedError


_WORDS = {"bw": "bitwidth", "per_channel": "per channel"}


def describe(changes: dict) -> str:
    """Edit fields as a person reads them: "bitwidth 16, dtype float", "range [-1, 2]", "scheme default"."""
    parts = []
    for key, value in changes.items():
        word = _WORDS.get(key, key)
        if value is None:
            parts.append(f"{word} default")
        elif isinstance(value, bool):
            parts.append(f"{word} {'on' if value else 'off'}")
        elif key == "range":
            parts.append(f"range [{value[0]:g}, {value[1]:g}]")
        elif key == "encoding":
            parts.append("an exact encoding")
        else:
            parts.append(f"{word} {value:g}" if isinstance(value, float) else f"{word} {value}")
    return ", ".join(parts)


class EditTensors(Command):
    """Set the same fields (bw, dtype, scheme, range, ...) on one or more tensors."""

    def __init__(self, names, label: str | None = None, **changes):
        self.names = list(names)
        self.changes = changes
        self.previous = None
        target = self.names[0] if len(self.names) == 1 else f"{len(self.names)} tensors"
        self.label = label or f"set {describe(changes)} on {target}"

    def do(self, project) -> None:
        self.previous = project.apply_edit(self.names, self.changes)

    def undo(self, project) -> None:
        project.restore_edits(self.previous)


class SetEdits(Command):
    """Different changes for different tensors in one step (an imported file, a preset)."""

    def __init__(self, changes_by_name: dict[str, dict], label: str):
        self.changes_by_name = dict(changes_by_name)
        self.previous = None
        self.label = label

    def do(self, project) -> None:
        self.previous = project.apply_edits(self.changes_by_name)

    def undo(self, project) -> None:
        project.restore_edits(self.previous)


class SetDefaults(Command):
    """Change the plan's defaults (the scheme of every tensor, say)."""

    def __init__(self, label: str, **changes):
        self.changes = changes
        self.previous = None
        self.label = label

    def do(self, project) -> None:
        self.previous = project.set_defaults(**self.changes)

    def undo(self, project) -> None:
        project.set_defaults(**self.previous)


class SetTarget(Command):
    """Switch the plan to another target (its rules then apply to every tensor)."""

    def __init__(self, target: str):
        self.target = target
        self.previous = None
        self.label = f"target {target}"

    def do(self, project) -> None:
        self.previous = project.set_target(self.target)

    def undo(self, project) -> None:
        project.set_target(self.previous)


class ApplyStep(Command):
    """Put a PTQ step's result (`steps.run_step`, computed in a worker) in place."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.previous = None
        self.label = outcome.record.title

    def do(self, project) -> None:
        self.previous = project.apply_step(self.outcome)

    def undo(self, project) -> None:
        project.restore_state(self.previous)


class CommandStack:
    """Undo/redo history. `push` runs the command; a failing command is not recorded."""

    def __init__(self, project, max_undo: int = MAX_UNDO):
        self.project = project
        self.max_undo = max_undo
        self._done: list[Command] = []
        self._undone: list[Command] = []
        self._listeners: list[Callable[[], None]] = []
        self._clean_top: Command | None = None  # the command on top when the state was last saved

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _emit(self) -> None:
        for listener in list(self._listeners):
            listener()

    def push(self, command: Command) -> None:
        command.do(self.project)
        self._done.append(command)
        del self._done[: -self.max_undo]
        self._undone.clear()
        self._emit()

    def undo(self) -> None:
        if self._done:
            command = self._done.pop()
            command.undo(self.project)
            self._undone.append(command)
            self._emit()

    def redo(self) -> None:
        if self._undone:
            command = self._undone.pop()
            command.do(self.project)
            self._done.append(command)
            self._emit()

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()
        self._clean_top = None
        self._emit()

    def set_clean(self) -> None:
        """The state as it is now is saved: `is_clean` until the next edit, undo or redo."""
        self._clean_top = self._done[-1] if self._done else None
        self._emit()

    @property
    def is_clean(self) -> bool:
        return (self._done[-1] if self._done else None) is self._clean_top

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    @property
    def undo_label(self) -> str:
        return self._done[-1].label if self._done else ""

    @property
    def redo_label(self) -> str:
        return self._undone[-1].label if self._undone else ""
