"""The precision editor: bitwidth, dtype, scheme, symmetry, per-channel and range of the selected tensors.

Every change pushes one `EditTensors` command for the whole selection, so one undo restores all of
them. The controls only display the plan: they refresh from project events (with signals blocked,
so a refresh never pushes a command). The bitwidths offered are those the target runs for every
selected tensor; what a target rule changes is said under the controls (`ruleLabel`).
"""
from __future__ import annotations

from PySide6.QtCore import QLocale, QSignalBlocker, Qt
from PySide6.QtGui import QDoubleValidator, QValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from qinspect.core.commands import EditTensors, SetEdits
from qinspect.core.plan import resolve
from qinspect.core.quant.ranges import SCHEMES
from qinspect.core.targets.profiles import get_target

from . import messages

MIXED = object()  # marker for a field whose value differs across the selection
# Fields "apply to all ops of this type" copies; a typed range or imported encoding is per tensor.
COPIED_FIELDS = ("bw", "dtype", "scheme", "symmetric", "strict", "unsigned", "per_channel", "percentile", "pow2")
ALL_FIELDS = COPIED_FIELDS + ("range", "encoding")
PLURAL = {"activation": "activations", "weight": "weights", "bias": "biases"}


def _common(values):
    values = list(values)
    first = values[0]
    return first if all(v == first for v in values[1:]) else MIXED


def _fmt(value: float) -> str:
    return repr(float(value))  # round-trips exactly, so committing an unchanged field moves nothing


class _NumberValidator(QDoubleValidator):
    """A number in C-locale notation, or nothing (an empty field is a valid "no fixed range")."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setLocale(QLocale.c())  # the same decimal point as Python's float()

    def validate(self, text, pos):
        if not text.strip():
            return QValidator.Acceptable, text, pos
        return super().validate(text, pos)


class PrecisionEditor(QWidget):
    """Edits the plan of the tensors given to `set_selection` through `stack` (a CommandStack)."""

    def __init__(self, project, stack, parent=None):
        super().__init__(parent)
        self.setObjectName("precisionEditor")
        self._project = None
        self._stack = stack
        self._names: list[str] = []
        self._subscribed: list = [None]
        subscribed = self._subscribed
        self.destroyed.connect(lambda *_: subscribed[0] and subscribed[0][0].unsubscribe(subscribed[0][1]))

        self.selection_label = QLabel(objectName="selectionLabel")
        self.selection_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.dtype_combo = QComboBox(objectName="dtypeCombo")
        self.dtype_combo.addItem("int", "int")
        self.dtype_combo.addItem("float", "float")
        self.bitwidth_combo = QComboBox(objectName="bitwidthCombo")
        self.scheme_combo = QComboBox(objectName="schemeCombo")
        for scheme in SCHEMES:
            self.scheme_combo.addItem(scheme, scheme)
        self.scheme_combo.setItemData(SCHEMES.index("tf_adjusted"),
                                      "QNN's TF Adjusted: an 8-bit asymmetric weight's grid grows to keep both ends of "
                                      "its range instead of clipping one; elsewhere it is tf", Qt.ToolTipRole)
        self.percentile_spin = QDoubleSpinBox(objectName="percentileSpin", decimals=3, minimum=50.0, maximum=100.0)
        self.percentile_spin.setSingleStep(0.01)
        self.percentile_spin.setKeyboardTracking(False)  # commit the typed number, not each keystroke
        self.symmetric_check = QCheckBox("Symmetric", objectName="symmetricCheck")
        self.strict_check = QCheckBox("Strict", objectName="strictCheck")
        self.strict_check.setToolTip("Strict symmetric: -127..127 at 8 bits, so the grid is symmetric about 0 "
                                     "(AIMET's strict mode)")
        self.unsigned_check = QCheckBox("Unsigned", objectName="unsignedCheck")
        self.unsigned_check.setToolTip("Unsigned symmetric: a tensor that is never negative uses the whole "
                                       "unsigned grid from 0 (AIMET's unsigned symmetric mode)")
        self.per_channel_check = QCheckBox("Per channel", objectName="perChannelCheck")
        self.pow2_combo = QComboBox(objectName="pow2Combo")
        for label, value in (("off", "off"), ("nearest", "round"), ("up (covers the range)", "ceil"),
                             ("down (finer, clips)", "floor")):
            self.pow2_combo.addItem(label, value)
        self.pow2_combo.setToolTip("Power-of-two scale with zero point 0 (NNabla's pow2, for shift-only hardware): "
                                   "the power of two nearest the symmetric scale, the next one up or down")
        validator = _NumberValidator(self)
        self.min_edit = QLineEdit(objectName="minEdit")
        self.max_edit = QLineEdit(objectName="maxEdit")
        for edit in (self.min_edit, self.max_edit):
            edit.setValidator(validator)
            edit.setToolTip("Type a range and press Enter; clear both fields and press Enter to go back "
                            "to the calibrated range")
        self.reset_button = QPushButton("Reset", objectName="resetButton")
        self.reset_button.setToolTip("Return the selected tensors to the default settings")
        self.apply_button = QPushButton("Apply to all ops of this type", objectName="applyToOpTypeButton")
        self.summary = QLabel(objectName="encodingSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.rule_label = QLabel(objectName="ruleLabel")
        self.rule_label.setWordWrap(True)
        self.rule_label.setStyleSheet("color: #1a4f8b;")

        form = QFormLayout()
        form.addRow("Dtype", self.dtype_combo)
        form.addRow("Bitwidth", self.bitwidth_combo)
        form.addRow("Scheme", self.scheme_combo)
        form.addRow("Percentile", self.percentile_spin)
        checks = QHBoxLayout()
        checks.addWidget(self.symmetric_check)
        checks.addWidget(self.per_channel_check)
        form.addRow(checks)
        refine = QHBoxLayout()  # a row of their own: the editor must not get wider (small screens)
        refine.addWidget(self.strict_check)
        refine.addWidget(self.unsigned_check)
        form.addRow(refine)
        form.addRow("Power of two", self.pow2_combo)
        form.addRow("Min", self.min_edit)
        form.addRow("Max", self.max_edit)
        buttons = QHBoxLayout()
        buttons.addWidget(self.reset_button)
        buttons.addWidget(self.apply_button, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.selection_label)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.summary)
        layout.addWidget(self.rule_label)
        layout.addStretch(1)

        self.dtype_combo.currentIndexChanged.connect(self._on_dtype)
        self.bitwidth_combo.currentIndexChanged.connect(self._on_bitwidth)
        self.scheme_combo.currentIndexChanged.connect(self._on_scheme)
        self.pow2_combo.currentIndexChanged.connect(
            lambda i: self.pow2_combo.itemData(i) is not None and self._push(pow2=self.pow2_combo.itemData(i)))
        self.percentile_spin.valueChanged.connect(lambda v: self._push(percentile=float(v)))
        for box, field in ((self.symmetric_check, "symmetric"), (self.per_channel_check, "per_channel"),
                           (self.strict_check, "strict"), (self.unsigned_check, "unsigned")):
            # checkStateChanged is Qt 6.7+; stateChanged (an int) is the older spelling.
            signal = getattr(box, "checkStateChanged", None) or box.stateChanged
            signal.connect(lambda state, field=field: self._on_check(field, Qt.CheckState(state)))
        self.min_edit.returnPressed.connect(self._on_range)
        self.max_edit.returnPressed.connect(self._on_range)
        self.reset_button.clicked.connect(self.reset)
        self.apply_button.clicked.connect(self.apply_to_op_type)
        self.set_project(project, stack)

    # --- public API -------------------------------------------------------------------------
    def set_project(self, project, stack=None) -> None:
        if self._subscribed[0] is not None:
            old, listener = self._subscribed[0]
            old.unsubscribe(listener)
        self._project = project
        self._stack = stack or self._stack
        self._subscribed[0] = None
        if project is not None:
            listener = self._on_event
            project.subscribe(listener)
            self._subscribed[0] = (project, listener)
        self._names = []
        self.refresh()

    def selected_names(self) -> list[str]:
        return list(self._names)

    def set_selection(self, names: list[str]) -> None:
        targets = self._targets_dict()
        self._names = [n for n in names if n in targets]
        self.refresh()

    def reset(self) -> None:
        """Every field of the selected tensors back to its default, as one command."""
        self._push(label=f"reset {self._what()}", **{f: None for f in ALL_FIELDS})

    def apply_to_op_type(self) -> None:
        """Copy the selection's common edits to every target of the first one's op type and kind."""
        if not self._names:
            return
        first = self._targets_dict()[self._names[0]]
        names = [n for n, t in self._targets_dict().items() if t.op_type == first.op_type and t.kind == first.kind]
        edits = [self._project.plan.edit(n) for n in self._names]
        changes = {f: v for f in COPIED_FIELDS if (v := _common(getattr(e, f) for e in edits)) is not MIXED}
        if not changes:
            messages.notify(self, "info", "Nothing to apply",
                            "The selected tensors differ in every setting; select tensors that agree.")
            return
        label = f"apply settings to all {len(names)} {first.op_type} {PLURAL[first.kind]}"
        self._push(names=names, label=label, **changes)

    def refresh(self) -> None:
        """Show the plan of the current selection (never pushes a command)."""
        blockers = [QSignalBlocker(w) for w in self._controls()]
        try:
            self._refresh()
        finally:
            del blockers

    # --- display ----------------------------------------------------------------------------
    def _controls(self):
        return (self.dtype_combo, self.bitwidth_combo, self.scheme_combo, self.percentile_spin, self.pow2_combo,
                self.symmetric_check, self.strict_check, self.unsigned_check, self.per_channel_check, self.min_edit,
                self.max_edit)

    def _targets_dict(self) -> dict:
        index = self._project.index if self._project is not None else None
        return index.targets if index is not None else {}

    def _allowed(self, dtype: str) -> list[int]:
        """Bitwidths of `dtype` the target runs for every selected tensor."""
        target = get_target(self._project.plan.target)
        targets = self._targets_dict()
        sets = [{bw for d, bw in target.supported(targets[n].kind, targets[n].op_type) if d == dtype}
                for n in self._names]
        return sorted(set.intersection(*sets)) if sets else []

    def _what(self) -> str:
        return self._names[0] if len(self._names) == 1 else f"{len(self._names)} tensors"

    def _refresh(self) -> None:
        names = self._names
        enabled = bool(names)
        for w in (*self._controls(), self.reset_button, self.apply_button):
            w.setEnabled(enabled)
        if not names:
            self.selection_label.setText("No tensor selected")
            self.summary.setText("Select tensors in the table to edit their precision.")
            for combo in (self.dtype_combo, self.bitwidth_combo, self.scheme_combo, self.pow2_combo):
                combo.setCurrentIndex(-1)
            self.min_edit.clear()
            self.max_edit.clear()
            self.apply_button.setText("Apply to all ops of this type")
            self.rule_label.clear()
            return
        targets = self._targets_dict()
        plan = self._project.plan
        # What the target runs: a rule's dtype or bitwidth shows here too, and ruleLabel says why.
        settings = [resolve(self._project.index, plan, n)[0] for n in names]
        edits = [plan.edit(n) for n in names]
        self.selection_label.setText(names[0] if len(names) == 1 else f"{len(names)} tensors selected")
        self.selection_label.setToolTip("\n".join(names[:50]) + ("\n..." if len(names) > 50 else ""))

        dtype = _common(s.dtype for s in settings)
        self.dtype_combo.setCurrentIndex(-1 if dtype is MIXED else self.dtype_combo.findData(dtype))
        allowed = self._allowed("float" if dtype is MIXED else dtype)
        self.bitwidth_combo.clear()
        for bw in allowed:
            self.bitwidth_combo.addItem(str(bw), bw)
        bw = _common(8 if s.bw == 7 else s.bw for s in settings)  # a 7-bit grid is an 8-bit choice
        self.bitwidth_combo.setCurrentIndex(-1 if bw is MIXED else self.bitwidth_combo.findData(bw))

        is_int = dtype == "int"
        # an imported encoding has no scheme: the file's numbers are used as they are
        imported = _common(e.encoding is not None for e in edits)
        scheme = "imported" if imported is True else _common(s.scheme for s in settings)
        self.scheme_combo.setCurrentIndex(self.scheme_combo.findData(scheme) if scheme in SCHEMES else -1)
        self.scheme_combo.setPlaceholderText("(mixed)" if scheme is MIXED else "imported")
        self.scheme_combo.setEnabled(is_int)
        percentile = _common(s.percentile for s in settings)
        self.percentile_spin.setValue(self.percentile_spin.minimum() if percentile is MIXED else percentile)
        self.percentile_spin.setSpecialValueText("(mixed)" if percentile is MIXED else "")
        self.percentile_spin.setEnabled(is_int and scheme == "percentile")

        kinds = {targets[n].kind for n in names}
        weights_with_axis = kinds == {"weight"} and all(targets[n].axis is not None for n in names)
        per_channel = _common(s.per_channel for s in settings)
        _show_check(self.per_channel_check, per_channel if weights_with_axis else False)
        self.per_channel_check.setEnabled(is_int and weights_with_axis)
        self.per_channel_check.setToolTip("" if weights_with_axis else "Only weights of Conv, ConvTranspose, "
                                          "Gemm and MatMul have output channels")
        _show_check(self.symmetric_check, _common(s.symmetric for s in settings))
        forced = weights_with_axis and per_channel is True
        self.symmetric_check.setEnabled(is_int and not forced)
        self.symmetric_check.setToolTip("Per-channel weights are always symmetric (QNN)" if forced else "")
        symmetric = _common(s.symmetric or s.strict for s in settings)
        for box, values in ((self.strict_check, [s.strict for s in settings]),
                            (self.unsigned_check, [s.unsigned for s in settings])):
            _show_check(box, _common(values))
            box.setEnabled(is_int and symmetric is True)

        pow2 = _common(s.pow2 or "off" for s in settings)
        self.pow2_combo.setCurrentIndex(-1 if pow2 is MIXED else self.pow2_combo.findData(pow2))
        self.pow2_combo.setPlaceholderText("(mixed)")
        self.pow2_combo.setEnabled(is_int and kinds != {"bias"})

        ranges = _common(e.range for e in edits)
        lo = hi = ""
        if ranges is not MIXED and ranges is not None:
            lo, hi = _fmt(ranges[0]), _fmt(ranges[1])
        elif len(names) == 1:
            enc = self._project.encodings.get(names[0])
            if enc is not None and not enc.is_float:
                lo, hi = _fmt(enc.min.min()), _fmt(enc.max.max())
        self.min_edit.setText(lo)
        self.max_edit.setText(hi)
        hint = "(mixed)" if ranges is MIXED else "(calibrated)"
        self.min_edit.setPlaceholderText(hint)
        self.max_edit.setPlaceholderText(hint)
        self.min_edit.setEnabled(is_int)
        self.max_edit.setEnabled(is_int)

        first = targets[names[0]]
        self.apply_button.setText(f"Apply to all {first.op_type} {PLURAL[first.kind]}")
        self.apply_button.setToolTip(f"Copy these settings (not the range) to every {first.kind} of a "
                                     f"{first.op_type} op, as one undoable edit")
        self.summary.setText(self._summary())
        effects = self._project.rule_effects
        ruled = [n for n in names if n in effects]
        if len(names) == 1 and ruled:
            self.rule_label.setText(f"Set by the target: {effects[ruled[0]].message}")
        elif ruled:
            self.rule_label.setText(f"{len(ruled)} of the {len(names)} selected tensors are set by the target's "
                                    f"rules (see their rows' tooltips)")
        else:
            self.rule_label.clear()

    def _summary(self) -> str:
        if len(self._names) != 1:
            return f"{len(self._names)} tensors: select one to see its encoding."
        enc = self._project.encodings.get(self._names[0])
        if enc is None:
            return "No encoding yet: calibrate to get a range."
        if enc.is_float:
            return f"float{enc.bw}: no scale or offset"
        kind = "strict symmetric" if enc.strict else ("symmetric" if enc.symmetric else "asymmetric")
        bits = "int8 on a 7-bit grid" if enc.bw == 7 else f"int{enc.bw}"
        if enc.per_channel and len(enc.scale) > 1:
            scales = enc.scales
            return (f"{bits} {kind}, {len(enc.scale)} channels (axis {enc.axis}): "
                    f"scale {scales.min():.4g}..{scales.max():.4g}, "
                    f"min {enc.min.min():.4g}, max {enc.max.max():.4g}")
        return (f"{bits} {kind}: scale {enc.scale[0]:.4g}, offset {enc.offset[0]}, "
                f"min {float(enc.min[0]):.4g}, max {float(enc.max[0]):.4g}")

    # --- edits ------------------------------------------------------------------------------
    def _push(self, names=None, label=None, **changes) -> bool:
        names = list(names if names is not None else self._names)
        if not names:
            return False
        try:
            self._stack.push(EditTensors(names, label=label, **changes))
        except ValueError as e:
            messages.notify(self, "warning", "Edit refused", str(e))
            self.refresh()  # put the controls back to what the plan says
            return False
        return True

    def _on_dtype(self, i: int) -> None:
        dtype = self.dtype_combo.itemData(i)
        if dtype is None:
            return
        allowed = self._allowed(dtype)
        changes = {"dtype": None if dtype == "int" else dtype}  # int is the default dtype
        # Keep an explicit bitwidth only if the new dtype supports it; otherwise use its default.
        if any(self._project.plan.edit(n).bw not in (None, *allowed) for n in self._names):
            changes["bw"] = None
        self._push(**changes)

    def _on_bitwidth(self, i: int) -> None:
        bw = self.bitwidth_combo.itemData(i)
        if bw is not None:  # a mixed-dtype selection is offered only bitwidths both dtypes allow
            self._push(bw=bw)

    def _on_scheme(self, i: int) -> None:
        scheme = self.scheme_combo.itemData(i)
        if scheme is not None:
            self._push(scheme=scheme)

    def _on_check(self, field: str, state) -> None:
        if state == Qt.PartiallyChecked:
            return  # only a display of a mixed selection; a click moves on to checked
        self._push(**{field: state == Qt.Checked})

    def _on_range(self) -> None:
        lo_text, hi_text = self.min_edit.text().strip(), self.max_edit.text().strip()
        if not lo_text and not hi_text:
            self._push(range=None)
            return
        try:
            lo, hi = float(lo_text), float(hi_text)
        except ValueError:
            messages.notify(self, "warning", "Range not set", "Type both a min and a max, for example -1 and 1.")
            return
        if lo > hi:
            messages.notify(self, "warning", "Range not set",
                            f"Min {lo:g} is above max {hi:g}: type a min that is not above the max.")
            self.refresh()
            return
        plan = self._project.plan
        imported = {n: plan.edit(n).encoding for n in self._names if plan.edit(n).encoding is not None}
        if not imported:
            self._push(range=(lo, hi))
            return
        # A typed range replaces an imported encoding (which wins over a range), keeping its bitwidth.
        changes = {n: {"range": (lo, hi), **({"encoding": None, "bw": imported[n].bw,
                                              "symmetric": imported[n].symmetric} if n in imported else {})}
                   for n in self._names}
        try:
            self._stack.push(SetEdits(changes, f"set range [{lo:g}, {hi:g}] on {self._what()}"))
        except ValueError as e:
            messages.notify(self, "warning", "Edit refused", str(e))
            self.refresh()

    def _on_event(self, event: str, names) -> None:
        if event in ("model", "index", "stats"):
            self.set_selection(self._names)  # drops names a new model does not have
        elif event == "plan" and (names is None or set(names) & set(self._names) or len(self._names) == 1):
            # A single tensor's summary can change through others (a bias follows its weight).
            self.refresh()


def _show_check(box: QCheckBox, value) -> None:
    box.setTristate(value is MIXED)
    box.setCheckState(Qt.PartiallyChecked if value is MIXED else (Qt.Checked if value else Qt.Unchecked))
