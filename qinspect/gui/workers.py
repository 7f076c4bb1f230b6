"""Run core jobs off the UI thread. A job is `fn(progress)`; the thread is its Progress object.

Signals are emitted from the worker thread and delivered queued on the main thread, so only the
main thread touches widgets or project state.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback

from PySide6.QtCore import QThread, Signal

from ..core.errors import Cancelled, QInspectError

log = logging.getLogger(__name__)
PROGRESS_INTERVAL = 0.05  # seconds between progress signals: enough for a smooth bar, no flood


class JobThread(QThread):
    progressed = Signal(int, int, str)  # done, total, message
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled_ = Signal()

    def __init__(self, job, parent=None, name: str = "job"):
        super().__init__(parent)
        self._job = job
        self._cancel = threading.Event()
        self._last = 0.0
        self.name = name
        self.started_at = 0.0

    # --- the core Progress protocol (called from the worker thread) ---
    def update(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL or done >= total:
            self._last = now
            self.progressed.emit(int(done), int(total), message)

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # --- control (main thread) ---
    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            result = self._job(self)
        except Cancelled:
            self.cancelled_.emit()
        except QInspectError as exc:
            self.failed.emit(str(exc))
        except MemoryError:
            self.failed.emit(f"{self.name}: out of memory; use fewer samples or a smaller batch size")
        except Exception as exc:  # a bug: report it, keep the window alive
            log.error("%s failed:\n%s", self.name, traceback.format_exc())
            self.failed.emit(f"{self.name} failed: {type(exc).__name__}: {exc}")
        else:
            self.succeeded.emit(result)
