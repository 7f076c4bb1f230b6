"""The small protocol long jobs use to report progress and to learn that they should stop.

The GUI, the command line and tests each implement it; the core only calls `update` and `cancelled`.
"""
from __future__ import annotations

from typing import Protocol

from .errors import Cancelled


class Progress(Protocol):
    def update(self, done: int, total: int, message: str = "") -> None:
        """Report that `done` of `total` units of work are finished."""

    def cancelled(self) -> bool:
        """True once the user asked the job to stop."""


class NullProgress:
    """Progress that reports nothing and never cancels."""

    def update(self, done: int, total: int, message: str = "") -> None:
        pass

    def cancelled(self) -> bool:
        return False


def check_cancel(progress: Progress) -> None:
    """Raise `Cancelled` if the user asked to stop; jobs call this between units of work."""
    if progress.cancelled():
        raise Cancelled("cancelled by the user")
