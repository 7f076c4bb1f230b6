import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLabel, QLineEdit, QPushButton

from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.commands import CommandStack, EditTensors
from qinspect.core.project import Project
from qinspect.core.quant.stats import TensorStats
from qinspect.gui.precision_editor import PrecisionEditor
from qinspect.gui.tensor_table import BW, TensorTable
from tests.helpers import cnn_project
from tests.models import small_cnn

CONV_WEIGHTS = ["conv1.weight", "conv2.weight"]


@pytest.fixture
def project(tmp_path):
    return cnn_project(tmp_path, 400, lambda i, n: i + 1)


@pytest.fixture
def stack(project):
    return CommandStack(project)


@pytest.fixture
def editor(qtbot, project, stack):
    widget = PrecisionEditor(project, stack)
    qtbot.addWidget(widget)
    widget.show()
    return widget


def child(editor, cls, name):
    widget = editor.findChild(cls, name)
    assert widget is not None, name
    return widget


def bw_of(project, name):
    return project.plan.settings(project.index.targets[name].kind, name).bw


def combo_items(combo):
    return [combo.itemText(i) for i in range(combo.count())]


def test_object_names(editor):
    assert editor.objectName() == "precisionEditor"
    for cls, name in [(QComboBox, "bitwidthCombo"), (QComboBox, "dtypeCombo"), (QComboBox, "schemeCombo"),
                      (QCheckBox, "symmetricCheck"), (QCheckBox, "perChannelCheck"), (QLineEdit, "minEdit"),
                      (QLineEdit, "maxEdit"), (QPushButton, "resetButton"), (QPushButton, "applyToOpTypeButton"),
                      (QLabel, "encodingSummary")]:
        child(editor, cls, name)


def test_no_selection_disables_the_controls(editor):
    editor.set_selection([])
    assert not child(editor, QComboBox, "bitwidthCombo").isEnabled()
    assert not child(editor, QPushButton, "resetButton").isEnabled()
    editor.set_selection(["ghost", "logits"])  # unknown names are dropped
    assert editor.selected_names() == ["logits"]


def test_multi_selection_edit_is_one_command_and_undo_restores_all(editor, project, stack):
    names = CONV_WEIGHTS + ["fc.weight"]
    editor.set_selection(names)
    combo = child(editor, QComboBox, "bitwidthCombo")
    assert combo.currentText() == "8"
    combo.setCurrentText("4")
    assert all(bw_of(project, n) == 4 for n in names)
    assert all(project.encodings[n].bw == 4 for n in names)
    assert stack.can_undo and stack.undo_label.endswith("3 tensors")
    stack.undo()
    assert not stack.can_undo  # it was a single command
    assert all(bw_of(project, n) == 8 for n in names) and project.plan.edited() == []
    assert combo.currentText() == "8"  # the editor follows the undo


def test_refresh_never_pushes_commands(editor, project, stack):
    editor.set_selection(["logits"])
    editor.set_selection(["conv1.weight", "relu1_out"])
    project.set_stats(dict(project.stats), 400)
    project.apply_edit(["relu1_out"], {"bw": 16, "symmetric": True})  # an edit from elsewhere
    assert not stack.can_undo
    assert child(editor, QComboBox, "bitwidthCombo").currentText() == ""  # mixed 8/16


def test_mixed_values_show_blank(editor, project, stack):
    stack.push(EditTensors(["relu1_out"], bw=16, scheme="mse", symmetric=True))
    editor.set_selection(["relu1_out", "logits"])
    assert child(editor, QComboBox, "bitwidthCombo").currentIndex() == -1
    assert child(editor, QComboBox, "schemeCombo").currentText() == ""
    assert child(editor, QComboBox, "dtypeCombo").currentText() == "int"
    symmetric = child(editor, QCheckBox, "symmetricCheck")
    assert symmetric.checkState() == Qt.PartiallyChecked
    symmetric.click()  # from mixed, a click makes them all symmetric
    assert project.plan.edit("logits").symmetric is True
    assert symmetric.checkState() == Qt.Checked and not symmetric.isTristate()


def test_dtype_float_offers_float_bitwidths(editor, project, stack):
    editor.set_selection(["conv2_out"])
    child(editor, QComboBox, "bitwidthCombo").setCurrentText("16")
    dtype = child(editor, QComboBox, "dtypeCombo")
    dtype.setCurrentText("float")
    bitwidth = child(editor, QComboBox, "bitwidthCombo")
    assert combo_items(bitwidth) == ["16", "32"]
    assert bitwidth.currentText() == "16"
    assert project.encodings["conv2_out"].is_float and project.encodings["conv2_out"].bw == 16
    assert "float16" in child(editor, QLabel, "encodingSummary").text()
    assert not child(editor, QLineEdit, "minEdit").isEnabled()
    bitwidth.setCurrentText("32")
    assert project.encodings["conv2_out"].bw == 32
    dtype.setCurrentText("int")
    assert combo_items(bitwidth) == ["8", "16"]  # what the target (qnn-htp) runs for activations
    # int32 is not one of them, so the explicit 32 went back to the default
    assert bitwidth.currentText() == "8" and not project.encodings["conv2_out"].is_float
    editor.set_selection(["conv2.weight"])
    assert combo_items(bitwidth) == ["4", "8", "16"]
    editor.set_selection(["conv2.weight", "conv2_out"])  # only what both can take
    assert combo_items(bitwidth) == ["8", "16"]


def test_typed_range_commits_on_enter(editor, project, stack, qtbot):
    editor.set_selection(["relu1_out"])
    lo, hi = child(editor, QLineEdit, "minEdit"), child(editor, QLineEdit, "maxEdit")
    assert float(hi.text()) == pytest.approx(float(project.encodings["relu1_out"].max[0]), rel=1e-6)
    lo.setText("-1")
    hi.setText("2.5")
    qtbot.keyClick(hi, Qt.Key_Return)
    assert project.plan.edit("relu1_out").range == (-1.0, 2.5)
    assert stack.undo_label.startswith("set range")
    lo.clear()
    hi.clear()
    qtbot.keyClick(lo, Qt.Key_Return)  # both empty: back to the calibrated range
    assert project.plan.edit("relu1_out").range is None


def test_min_above_max_is_refused_with_a_message(editor, project, stack, messages, qtbot):
    editor.set_selection(["relu1_out"])
    before = project.encodings["relu1_out"]
    lo, hi = child(editor, QLineEdit, "minEdit"), child(editor, QLineEdit, "maxEdit")
    lo.setText("3")
    hi.setText("1")
    qtbot.keyClick(lo, Qt.Key_Return)
    assert len(messages) == 1 and messages[0][0] == "warning" and "above" in messages[0][2]
    assert not stack.can_undo and project.plan.edited() == []
    assert project.encodings["relu1_out"] == before
    assert float(lo.text()) == pytest.approx(float(before.min[0]), abs=1e-9)  # fields show the plan again


def test_a_refused_edit_shows_the_reason(editor, project, stack, messages, monkeypatch):
    def refuse(command):
        raise ValueError("conv2_out: bitwidth 16 is not allowed here")

    monkeypatch.setattr(stack, "push", refuse)
    editor.set_selection(["conv2_out"])
    combo = child(editor, QComboBox, "bitwidthCombo")
    combo.setCurrentText("16")
    assert messages == [("warning", "Edit refused", "conv2_out: bitwidth 16 is not allowed here")]
    assert combo.currentText() == "8"  # back to what the plan says


def test_per_channel_only_for_weights(editor, project):
    check = child(editor, QCheckBox, "perChannelCheck")
    editor.set_selection(["relu1_out"])
    assert not check.isEnabled()
    editor.set_selection(["conv1.bias"])
    assert not check.isEnabled()
    editor.set_selection(["conv1.weight"])
    assert check.isEnabled() and check.isChecked()
    assert not child(editor, QCheckBox, "symmetricCheck").isEnabled()  # per-channel is always symmetric
    assert "channels" in child(editor, QLabel, "encodingSummary").text()
    check.setChecked(False)
    assert project.encodings["conv1.weight"].axis is None
    assert child(editor, QCheckBox, "symmetricCheck").isEnabled()


def test_reset_is_one_command(editor, project, stack):
    stack.push(EditTensors(["logits", "sig_out"], bw=16, scheme="mse"))
    stack.push(EditTensors(["logits"], range=(-2.0, 2.0)))
    editor.set_selection(["logits", "sig_out"])
    child(editor, QPushButton, "resetButton").click()
    assert project.plan.edited() == []
    stack.undo()
    assert project.plan.edit("logits").range == (-2.0, 2.0) and project.plan.edit("sig_out").bw == 16


def test_apply_to_op_type(editor, project, stack):
    editor.set_selection(["conv1.weight"])
    child(editor, QComboBox, "bitwidthCombo").setCurrentText("4")
    child(editor, QComboBox, "schemeCombo").setCurrentText("mse")
    button = child(editor, QPushButton, "applyToOpTypeButton")
    assert "Conv" in button.text()
    button.click()
    assert bw_of(project, "conv2.weight") == 4
    assert project.plan.settings("weight", "conv2.weight").scheme == "mse"
    assert bw_of(project, "fc.weight") == 8  # a Gemm weight
    assert bw_of(project, "conv2_out") == 8 and bw_of(project, "conv2.bias") == 32  # other kinds
    stack.undo()  # one command: conv2.weight back, conv1.weight keeps its own edits
    assert bw_of(project, "conv2.weight") == 8 and bw_of(project, "conv1.weight") == 4


def test_summary_line(editor, project):
    summary = child(editor, QLabel, "encodingSummary")
    editor.set_selection(["relu1_out"])
    enc = project.encodings["relu1_out"]
    assert f"offset {enc.offset[0]}" in summary.text() and "scale" in summary.text()
    editor.set_selection(["relu1_out", "logits"])
    assert "2 tensors" in summary.text()
    fresh = Project()
    fresh.open_model(small_cnn())
    editor.set_project(fresh, CommandStack(fresh))
    editor.set_selection(["logits"])
    assert "calibrate" in summary.text()


def test_edits_show_in_the_table_at_once(qtbot):
    p = Project()
    p.open_model("resources/digits_cnn.onnx")
    result = calibrate(p.index, open_data("resources/digits_calib.npz", p.index.inputs, samples=16))
    p.set_stats(result.stats, result.samples)
    stack = CommandStack(p)
    table = TensorTable(p)
    editor = PrecisionEditor(p, stack)
    for w in (table, editor):
        qtbot.addWidget(w)
        w.show()
    table.selectionChanged.connect(editor.set_selection)
    weights = p.index.weights()[:2]
    with qtbot.waitSignal(table.selectionChanged, timeout=2000):
        table.select(weights)
    assert editor.selected_names() == weights
    child(editor, QComboBox, "bitwidthCombo").setCurrentText("16")
    model = table.model
    assert [model.data(model.index(model.row_of(n), BW)) for n in weights] == ["16", "16"]
    stack.undo()
    assert [model.data(model.index(model.row_of(n), BW)) for n in weights] == ["8", "8"]


def test_percentile_only_with_the_percentile_scheme(editor, project):
    editor.set_selection(["logits"])
    spin = editor.findChild(QDoubleSpinBox, "percentileSpin")
    assert not spin.isEnabled()
    child(editor, QComboBox, "schemeCombo").setCurrentText("percentile")
    assert spin.isEnabled() and spin.value() == pytest.approx(99.99)
    spin.setValue(99.5)
    assert project.plan.settings("activation", "logits").percentile == 99.5


def test_a_deleted_editor_stops_listening(qtbot, project, stack):
    widget = PrecisionEditor(project, stack)
    widget.set_selection(["logits"])
    widget.deleteLater()
    qtbot.waitUntil(lambda: not project._listeners, timeout=2000)
    stack.push(EditTensors(["logits"], bw=16))


def test_strict_and_unsigned_symmetric_from_the_editor(editor, project, stack):
    editor.set_selection(["conv1.weight"])
    strict = child(editor, QCheckBox, "strictCheck")
    unsigned = child(editor, QCheckBox, "unsignedCheck")
    assert strict.isEnabled() and not strict.isChecked()
    strict.click()
    enc = project.encodings["conv1.weight"]
    assert enc.strict and set(enc.offset) == {-127} and stack.can_undo
    stats = dict(project.stats)
    stats["relu1_out"] = TensorStats.of(np.abs(np.random.default_rng(0).standard_normal(400)))  # never negative
    project.set_stats(stats, 400)
    editor.set_selection(["relu1_out"])  # asymmetric: strict and unsigned do not apply
    assert not strict.isEnabled() and not unsigned.isEnabled()
    child(editor, QCheckBox, "symmetricCheck").click()
    assert unsigned.isEnabled()
    unsigned.click()
    assert project.encodings["relu1_out"].offset == (0,)  # never negative: the unsigned grid from 0
    stack.undo()
    stack.undo()
    stack.undo()
    assert project.plan.edited() == []


def test_power_of_two_is_a_per_tensor_choice_and_undoable(editor, project, stack):
    combo = child(editor, QComboBox, "pow2Combo")
    editor.set_selection(["relu1_out"])
    assert combo.currentData() == "off" and combo.isEnabled()
    combo.setCurrentIndex(combo.findData("ceil"))
    enc = project.encodings["relu1_out"]
    assert np.log2(enc.scale[0]) == round(np.log2(enc.scale[0])) and project.plan.edit("relu1_out").pow2 == "ceil"
    assert stack.can_undo
    stack.undo()
    assert project.plan.edit("relu1_out").pow2 is None and combo.currentData() == "off"
    editor.set_selection(["conv1.bias"])
    assert not combo.isEnabled()  # int32 biases follow input x weight scale
