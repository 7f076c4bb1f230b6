"""The target toolbar: which device or runtime the plan is for, and a check of the export in onnxruntime.

The combo (`targetCombo`) pushes an undoable `SetTarget`; a target that cannot run the current
plan refuses with the reason and the combo goes back. `Verifier` runs the runtime check
(`compare(..., runtime=True)`) in a worker on the calibration data and reports the exported
model's output SQNR next to the simulated one (`runtimeLabel` in the status bar).
"""
from __future__ import annotations

import math

from PySide6.QtCore import QObject, QSignalBlocker, Signal
from PySide6.QtWidgets import QComboBox, QLabel, QToolBar

from ..core.commands import SetTarget
from ..core.errors import QInspectError
from ..core.targets.profiles import TARGETS
from . import messages
from .events import listen
from .widgets import ElidedLabel

VERIFY_SAMPLES = 64  # enough for a stable output SQNR; the check is a full float + simulated + runtime run


class TargetBar(QToolBar):
    def __init__(self, project, stack, parent=None):
        super().__init__("Target", parent)
        self.setObjectName("targetBar")
        self.project, self.stack = project, stack
        self.addWidget(QLabel(" Target "))
        self.combo = QComboBox(objectName="targetCombo")
        for t in TARGETS.values():
            self.combo.addItem(t.name, t.name)
            self.combo.setItemData(self.combo.count() - 1, f"{t.title}\n{t.summary}", 3)  # 3: tooltip role
        self.combo.setToolTip("What the model will run on: its rules decide the encodings and the exports")
        self.combo.currentIndexChanged.connect(self._chosen)
        self.addWidget(self.combo)
        listen(self, project, self._on_event)
        self.refresh()

    def refresh(self) -> None:
        with QSignalBlocker(self.combo):
            self.combo.setCurrentIndex(self.combo.findData(self.project.target))
        target = TARGETS[self.project.target]
        self.combo.setToolTip(f"{target.title}\n{target.summary}")

    def _chosen(self, i: int) -> None:
        name = self.combo.itemData(i)
        if name is None or name == self.project.target:
            return
        try:
            self.stack.push(SetTarget(name))
        except (ValueError, QInspectError) as exc:
            messages.notify(self, "warning", "Target not changed", str(exc))
        self.refresh()

    def _on_event(self, event: str, names) -> None:
        if event in ("model", "index", "plan"):
            self.refresh()


class Verifier(QObject):
    """Runs the runtime check in a worker; `finished` carries the Comparison (None if it stopped)."""

    finished = Signal(object)

    def __init__(self, project, start, parent):
        super().__init__(parent)
        self.project, self._start, self._parent = project, start, parent
        self.label = ElidedLabel(objectName="runtimeLabel")
        self.label.setToolTip("The exported QDQ model run in onnxruntime with default session options "
                              "(Analysis > Verify in onnxruntime)")
        self.running = False
        listen(self, project, self._on_event)

    def _on_event(self, event: str, names) -> None:
        if not self.running:
            self.label.clear()  # the numbers were of the plan before this change

    def run(self, samples: int = VERIFY_SAMPLES) -> bool:
        from ..core.analysis.compare import compare
        from ..core.calib.data import open_data

        project = self.project
        if project.index is None or not project.stats or not project.data_spec:
            messages.notify(self._parent, "warning", "Nothing to verify",
                            "Calibrate the model first: the check runs on the calibration data.")
            return False
        index, encodings, target = project.index, dict(project.encodings), project.target
        spec, options = project.data_spec, dict(project.data_options)

        def job(progress):
            with open_data(spec, index.inputs, **options) as data:
                return compare(index, encodings, data, samples=samples, progress=progress, runtime=True,
                               target=target)

        def done(comparison):
            self.running = False
            self._show(comparison.runtime, comparison.samples)
            self.finished.emit(comparison)

        def stopped():
            self.running = False
            self.finished.emit(None)

        self.running = True
        self.label.setText("onnxruntime: checking…")
        self._start(job, "runtime check", done, stopped)
        return True

    def _show(self, check, samples: int) -> None:
        worst = min(check.outputs.values(), default=math.nan)
        sim = min(check.simulated.values(), default=math.nan)
        ok = check.agrees()
        self.label.setText(f"onnxruntime {_db(worst)} dB · simulated {_db(sim)} dB on {samples} samples"
                           + ("" if ok else " \u26a0") + " |")
        self.label.setStyleSheet("" if ok else "color: #8b0000;")
        text = "\n".join(check.lines() + [f"note: {n}" for n in check.notes[:6]])
        messages.notify(self._parent, "info" if ok else "warning",
                        "Runtime check" if ok else "The exported model differs from the simulation", text)


def _db(v: float) -> str:
    return "–" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.1f}")
