"""The options of one PTQ step, before it runs (objectName ``ptqDialog``; a field per option,
``ptqOption_<name>``). It says what the step does, and why it cannot run when it cannot."""
from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
)

from ..core.ptq.bias_correction import METHODS
from ..core.steps import OPTIONS, TITLES

ABOUT = {
    "cle": "Scales the channels of consecutive layers (Conv -> Relu -> Conv, Conv -> Relu -> depthwise -> "
           "Relu -> Conv) so each channel has the same weight range in both: per-tensor weight encodings then "
           "waste far less of their grid. The float model computes the same (Relu6 becomes Relu). High-bias "
           "absorption moves what a Relu never sees below into the next layer's bias. The statistics are "
           "computed again.",
    "seq-mse": "Chooses each output channel's weight range among 20 candidates (max x 1/20 ... max x 20/20) as "
               "the one that keeps the layer's output closest to the float model's on the data. The ranges are "
               "frozen.",
    "adaround": "Learns, layer by layer, whether each weight rounds up or down so that the layer's output, not "
                "each weight, stays closest to the float model's on the data. The weights' quantizers get the "
                "learned values and their encodings are frozen.",
    "bias-correction": "Removes the shift quantized weights cause in each layer's mean output: empirical (measured "
                       "on the data, layer by layer) or analytic (from BatchNormalization statistics, no data).",
}
LABELS = {"absorb_high_bias": "High-bias absorption", "samples": "Samples", "candidates": "Candidates",
          "iterations": "Iterations per layer", "reg_param": "Rounding regulariser", "method": "Method"}


class PtqDialog(QDialog):
    def __init__(self, step: str, refusal: str | None = None, parent=None):
        super().__init__(parent)
        self.setObjectName("ptqDialog")
        self.step = step
        self.setWindowTitle(TITLES[step][0].upper() + TITLES[step][1:])
        about = QLabel(ABOUT[step], wordWrap=True)
        about.setMinimumWidth(420)
        form = QFormLayout()
        self.fields = {}
        for name, default in OPTIONS[step].items():
            if isinstance(default, bool):
                field = QCheckBox(checked=default)
            elif name == "method":
                field = QComboBox()
                field.addItems(list(METHODS))
                field.setCurrentText(default)
            elif isinstance(default, int):
                field = QSpinBox(minimum=1, maximum=100_000, value=default)
            else:
                field = QDoubleSpinBox(minimum=0.0, maximum=10.0, decimals=4, singleStep=0.001, value=default)
            field.setObjectName(f"ptqOption_{name}")
            self.fields[name] = field
            form.addRow(LABELS.get(name, name), field)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setText("Run")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(about)
        layout.addLayout(form)
        if refusal:
            why = QLabel(f"Cannot run now: {refusal}", wordWrap=True, objectName="ptqRefusal")
            why.setStyleSheet("color: #b71c1c")
            layout.addWidget(why)
            buttons.button(QDialogButtonBox.Ok).setEnabled(False)
        layout.addWidget(buttons)

    def values(self) -> dict:
        out = {}
        for name, field in self.fields.items():
            if isinstance(field, QCheckBox):
                out[name] = field.isChecked()
            elif isinstance(field, QComboBox):
                out[name] = field.currentText()
            else:
                out[name] = field.value()
        return out
