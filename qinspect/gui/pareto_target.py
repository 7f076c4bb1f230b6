"""The Mixed precision panel's target row: an output SQNR (and, with labelled data, a largest top-1
drop) that "Meet target" asks `analysis.to_target.search_to_target` to reach with the panel's
candidates; and the words the panel shows for its outcome.

Object names: ``paretoTargetSqnr`` (dB; its lowest value reads "off"), ``paretoDropCheck`` and
``paretoMaxDrop`` (percentage points of top-1; enabled only when the calibration data has labels),
``paretoMeetButton``.
"""
from __future__ import annotations

import math

from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QWidget

DEFAULT_SQNR = 40.0   # dB: the bundled example's all-int8 plan misses it, all-int16 meets it
DEFAULT_DROP = 1.0    # percentage points of top-1
SHOWN_GROUPS = 6      # groups named in the outcome (all of them in the tooltip)
NO_LABELS_TIP = ("A largest top-1 drop needs labels in the calibration data: a 'labels' array beside the "
                 "inputs in the .npz (the status bar then shows top-1). These data have none.")
DROP_TIP = "Largest loss of top-1 accuracy against the float model, in percentage points, on the search's samples"


def _db(value: float) -> str:
    return f"{value:.1f} dB" if math.isfinite(value) else ("exact" if value > 0 else "-inf dB")


def _top1(accuracy) -> str:
    return "" if accuracy is None else f", top-1 {100 * accuracy:.1f}%"


def goal_words(target_sqnr: float | None, max_drop: float | None) -> str:
    """"40 dB", "top-1 within 1 point", or both: for the undo label and the messages."""
    parts = []
    if target_sqnr is not None:
        parts.append(f"{target_sqnr:g} dB")
    if max_drop is not None:
        parts.append(f"top-1 within {max_drop:g} point{'' if max_drop == 1 else 's'}")
    return ", ".join(parts)


def _names(names: list[str], shown: int = SHOWN_GROUPS) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _scale(result) -> str:
    c, d = result.cheapest, result.dearest
    return (f"{c.label}: {_db(c.sqnr)}{_top1(c.accuracy)}, cost {c.cost:.2f}\n"
            f"{d.label}: {_db(d.sqnr)}{_top1(d.accuracy)}, cost {d.cost:.2f}")


def describe_met(result, applied: bool) -> tuple[str, str]:
    """(info text, tooltip) for a target that was met; `applied`: its plan was pushed (else it was the plan already)."""
    point = result.point
    moved = result.promoted()
    by_precision: dict[str, list[str]] = {}
    for group, precision in moved.items():
        by_precision.setdefault(precision, []).append(group)
    lines = [f"Met {result.goal}: {_db(point.output_sqnr)}{_top1(point.accuracy)} at cost {point.cost:.2f}"]
    if moved:
        lines.append(f"{len(moved)} of {len(point.precisions)} groups moved: "
                     + "; ".join(f"to {p}: {_names(g)}" for p, g in by_precision.items()))
    else:
        lines.append(f"{result.cheapest.label} meets it: no group needs more")
    lines.append(_scale(result))
    lines.append(f"On {result.samples} samples. " + ("Applied as one step (Ctrl+Z undoes)." if applied
                                                      else "The plan already is this one: nothing to apply."))
    tip = "\n".join([f"{result.goal}, on {result.samples} calibration samples",
                     f"cost: bit operations over {result.cheapest.label}"]
                    + [f"  {g}: {p}" for g, p in moved.items()])
    return "\n".join(lines), tip


def describe_unmet(result, candidates) -> tuple[str, str]:
    """(info text, tooltip) for a target the candidates cannot reach: what limits it and the fix."""
    dearest = candidates[-1]
    lines = [f"Cannot reach {result.goal} with {', '.join(candidates)}: even {result.dearest.label} gives "
             f"{_db(result.dearest.sqnr)}{_top1(result.dearest.accuracy)}. Nothing applied."]
    if result.limits:
        lines.append("What limits it (kept float32 would gain): "
                     + ", ".join(f"{g} {gain:+.1f} dB" for g, _, gain in result.limits[:4]))
    fix = [f"tick {' or '.join(c for c in ('float16', 'float32') if c not in candidates)}"
           ] if dearest != "float32" else []
    lines.append("Fix: " + " or ".join(fix + ["lower the target"]) + ".")
    lines.append(_scale(result))
    tip = "\n".join([f"{result.goal}, on {result.samples} calibration samples", "groups that limit it:"]
                    + [f"  {g} ({', '.join(t)}): {gain:+.1f} dB kept float32" for g, t, gain in result.limits])
    return "\n".join(lines), tip


class TargetRow(QWidget):
    """The target's inputs and the Meet button; the panel connects `meet_button.clicked`."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.sqnr_spin = QDoubleSpinBox(objectName="paretoTargetSqnr", suffix=" dB", decimals=1, minimum=0.0,
                                        maximum=200.0, value=DEFAULT_SQNR, singleStep=1.0)
        self.sqnr_spin.setSpecialValueText("off")  # 0 dB: an accuracy target alone
        self.sqnr_spin.setToolTip("Output SQNR the plan must reach on the calibration data (lowest value: off)")
        self.drop_check = QCheckBox("max top-1 drop", objectName="paretoDropCheck")
        self.drop_spin = QDoubleSpinBox(objectName="paretoMaxDrop", suffix=" pt", decimals=1, minimum=0.0,
                                        maximum=100.0, value=DEFAULT_DROP, singleStep=0.5)
        self.meet_button = QPushButton("Meet target", objectName="paretoMeetButton")
        self.meet_button.setToolTip("The cheapest plan found over the ticked candidates that meets the target, "
                                    "applied as one undoable step")
        self.drop_check.toggled.connect(self._update)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Target output SQNR"))
        layout.addWidget(self.sqnr_spin)
        layout.addWidget(self.drop_check)
        layout.addWidget(self.drop_spin)
        layout.addWidget(self.meet_button)
        layout.addStretch(1)
        self.labelled = False
        self.set_labelled(False)

    def set_labelled(self, labelled: bool) -> None:
        """Whether the calibration data has labels: the top-1 drop is offered only then."""
        self.labelled = bool(labelled)
        self.drop_check.setEnabled(self.labelled)
        for w in (self.drop_check, self.drop_spin):
            w.setToolTip(DROP_TIP if self.labelled else NO_LABELS_TIP)
        self._update()

    def values(self) -> tuple[float | None, float | None]:
        """(target SQNR in dB or None when off, largest top-1 drop in points or None)."""
        sqnr = self.sqnr_spin.value()
        drop = self.drop_spin.value() if self.labelled and self.drop_check.isChecked() else None
        return (None if sqnr <= self.sqnr_spin.minimum() else sqnr), drop

    def _update(self) -> None:
        self.drop_spin.setEnabled(self.labelled and self.drop_check.isChecked())
