"""Live error: float vs quantized on a few calibration samples, re-measured after every edit.

`LiveError` keeps one core `Comparer` per (model, calibration data) alive between edits and runs
`Comparer.update(encodings, changed)` in a `JobThread`, so only what an edit can affect is re-run.
Bursts of edits are coalesced by a short single-shot timer; an edit that arrives while a run is
under way cancels it and starts a new one when it has stopped (never two runs on one Comparer).
A cancelled or failed run changes nothing: the names it was to re-measure are kept for the next.

Signals: ``updated(object)`` carries the new `analysis.compare.Comparison` (on the main thread);
``statusChanged(str)`` the text of the status label.
"""
from __future__ import annotations

import logging
import math
from functools import partial

import numpy as np
import shiboken6
from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QLabel

from .events import listen
from .widgets import ElidedLabel
from .workers import JobThread

log = logging.getLogger(__name__)
LIVE_SAMPLES = 16   # calibration samples the live error runs on (at most)
LIVE_BYTES = 512 * 2**20  # the Comparer keeps every activation of its samples: fewer samples past this
DEBOUNCE_MS = 150   # edits closer together than this are measured once
NO_DATA = ("output SQNR: no calibration data — calibrate (Ctrl+R) to measure the error",
           "The live error compares float and quantized on a few calibration samples. These encodings "
           "have no calibration data behind them (imported, or calibrated elsewhere): calibrate to measure.")


def _db(value: float) -> str:
    if math.isinf(value):
        return "exact" if value > 0 else "-inf dB"
    return f"{value:.1f} dB"


def describe(comparison) -> tuple[str, str]:
    """(status text, tooltip) for a Comparison: the worst output SQNR, accuracy when labelled."""
    outputs = list(comparison.outputs.values())
    if not outputs:
        return "output SQNR: the model has no float output to compare", ""
    worst = min(outputs, key=lambda o: o.sqnr_db)
    text = f"output SQNR {_db(worst.sqnr_db)}"
    if len(outputs) > 1:
        text += f" (worst of {len(outputs)} outputs)"
    if comparison.accuracy_quantized is not None:
        text += (f" · top-1 {100 * comparison.accuracy_quantized:.1f}%"
                 f" (float {100 * comparison.accuracy_float:.1f}%)")
    lines = [f"Float vs quantized on {comparison.samples} calibration samples "
             f"({1000 * comparison.seconds:.0f} ms):"]
    lines += [f"  {o.name}: {_db(o.sqnr_db)}, relative error {o.rel_error:.3g}" for o in outputs]
    return text, "\n".join(lines)


def live_samples(index, most: int = LIVE_SAMPLES, budget: int = LIVE_BYTES) -> int:
    """Samples for the live error: `most`, or fewer when keeping their float activations would
    take more than `budget` bytes (unknown dims count 1, so this is a lower bound)."""
    per_sample = 0
    for name in index.activations():
        info = index.tensors.get(name)
        if info is None or info.shape is None or info.dtype is None:
            continue
        dims = list(info.shape)[1:] if info.shape else []  # the first axis is the batch
        per_sample += int(np.prod([d if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in dims],
                                  dtype=np.int64)) * info.dtype.itemsize
    return int(max(1, min(most, budget // max(per_sample, 1))))


class LiveError(QObject):
    """Measures the live error of `project` in the background and reports it in `label`."""

    updated = Signal(object)      # analysis.Comparison
    statusChanged = Signal(str)

    def __init__(self, project, parent=None, samples: int = LIVE_SAMPLES, debounce_ms: int = DEBOUNCE_MS):
        """`samples`: the most calibration samples to run on (fewer for big models, see `live_samples`)."""
        super().__init__(parent)
        self.project = project
        self.samples = samples
        self.label = ElidedLabel(objectName="outputSqnrLabel")
        self.comparison = None          # the last Comparison shown
        self.baseline: tuple[str, float] | None = None  # (PTQ step, output SQNR before it), shown beside
        self._comparer = None           # kept alive between edits
        self._key = None                # what the comparer was built for
        self._pending: set[str] | None = set()  # names changed since the last run; None: everything
        self._thread: JobThread | None = None
        self._again = False             # run again when the current run has stopped
        self._stopped = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(debounce_ms)
        self._timer.timeout.connect(self._run)
        listen(self, project, self._on_project)
        self._set_status("", "")
        if project.index is not None and project.stats:
            self.schedule(None)

    # --- public API ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None or self._timer.isActive()

    @property
    def sqnr(self) -> dict[str, float]:
        """SQNR (dB) per tensor of the last comparison shown."""
        if self.comparison is None:
            return {}
        return {n: t.sqnr_db for n, t in self.comparison.tensors.items()}

    def schedule(self, names=None) -> None:
        """Re-measure soon; `names` are the tensors whose encodings changed (None: all of them)."""
        if self._stopped:
            return
        if names is None or self._pending is None:
            self._pending = None
        else:
            self._pending.update(names)
        self._timer.start()

    def refresh_now(self) -> None:
        """Skip the debounce delay (scripts and tests)."""
        self._timer.stop()
        self._run()

    def stop(self, wait_ms: int = 5000) -> None:
        """Cancel the current run, wait for it and start no more (the window is closing)."""
        self._stopped = True
        self._timer.stop()
        thread = self._thread
        if thread is not None:
            thread.cancel()
            thread.wait(wait_ms)
        self._close_comparer()

    def wait(self, ms: int = 10_000) -> bool:
        thread = self._thread
        return thread is None or thread.wait(ms)

    def cancel(self) -> None:
        if self._thread is not None:
            self._thread.cancel()

    # --- internals ----------------------------------------------------------------------------
    def _set_status(self, text: str, tip: str) -> None:
        self.label.setText(text)
        self.label.setToolTip(tip)
        self.statusChanged.emit(text)

    def _current_key(self):
        p = self.project
        if p.index is None or not p.data_spec:
            return None
        return (id(p.index), p.data_spec, repr(sorted(p.data_options.items())), self.samples)

    def samples_for(self, index) -> int:
        return live_samples(index, self.samples)

    def _close_comparer(self) -> None:
        if self._comparer is not None:
            self._comparer.close()
        self._comparer = None
        self._key = None

    def _on_project(self, event: str, names) -> None:
        if not shiboken6.isValid(self) or self._stopped:
            return
        if event in ("model", "index"):
            self.cancel()
            self.comparison = None
            self._pending = None
            self._set_status("", "")
            if self.project.stats:
                self.schedule(None)
        elif event == "stats":
            self.schedule(None)
        elif event == "plan":  # without statistics, _run says what is missing
            self.schedule(names)

    def _run(self) -> None:
        if self._stopped:
            return
        if self._thread is not None:  # replace the running update: cancel, then run again
            self._thread.cancel()
            self._again = True
            return
        project = self.project
        index = project.index
        if index is None:
            self._set_status("", "")
            return
        key = self._current_key()
        if key is None:
            self._set_status(*NO_DATA)
            return
        if not project.stats:
            self._set_status("output SQNR: not calibrated (Ctrl+R)", "")
            return
        if key != self._key:  # another model or other data: the cached float values are stale
            self._close_comparer()
            self._key = key
            self._pending = None
        comparer = self._comparer
        changed, self._pending = self._pending, set()
        encodings = dict(project.encodings)
        spec, options, samples = project.data_spec, dict(project.data_options), self.samples_for(index)
        built: list = []
        if comparer is None or self.comparison is None:
            self._set_status("output SQNR: measuring…", "Running float and quantized on a few calibration samples")

        def job(progress):
            from ..core.analysis.live import Comparer
            from ..core.calib.data import open_data

            c = comparer
            if c is None:
                data = open_data(spec, index.inputs, **options)
                try:
                    c = Comparer(index, data, samples, progress=progress)
                finally:
                    data.close()
                built.append(c)
            return c, c.update(encodings, None if changed is None else sorted(changed), progress=progress)

        thread = JobThread(job, self, "live error")
        thread.succeeded.connect(partial(self._done, key))
        thread.cancelled_.connect(partial(self._not_done, key, changed, built, None))
        thread.failed.connect(partial(self._not_done, key, changed, built))
        thread.finished.connect(partial(self._finished, thread))
        self._thread = thread
        thread.start()

    def _keep(self, key, built) -> None:
        """Keep a comparer built by a run, if it is still for the current model and data."""
        for c in built:
            if key == self._key and key == self._current_key() and self._comparer is None:
                self._comparer = c
            elif c is not self._comparer:
                c.close()

    def _done(self, key, result) -> None:
        comparer, comparison = result
        self._keep(key, [comparer])
        if self._stopped or key != self._current_key():
            return  # the model or the data changed meanwhile: these numbers are stale
        self.comparison = comparison
        text, tip = describe(comparison)
        if self.baseline is not None and comparison.outputs:
            step, db = self.baseline
            text += f" (was {_db(db)} before {step})"
        self._set_status(text, tip)
        self.updated.emit(comparison)

    def _not_done(self, key, changed, built, error=None) -> None:
        self._keep(key, built)
        if changed is None or self._pending is None:
            self._pending = None
        else:
            self._pending.update(changed)
        if error is not None and not self._stopped and key == self._current_key():
            log.warning("live error failed: %s", error)
            self._set_status("output SQNR: unavailable", f"Measuring the error failed:\n{error}")

    def _finished(self, thread: JobThread) -> None:
        if self._thread is thread:
            self._thread = None
        thread.deleteLater()
        if self._again and not self._stopped:
            self._again = False
            self._run()
