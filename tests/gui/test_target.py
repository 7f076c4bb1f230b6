"""The target in the window: the toolbar combo (undoable), rule results in the table and editor, Verify."""
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QLabel

from qinspect.gui.file_actions import EXAMPLE_DATA
from qinspect.gui.tensor_table import BW, COLUMNS

WAIT = 60_000


def calibrate(qtbot, window):
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT) as done:
        assert window.calibrate(str(EXAMPLE_DATA))
    assert done.args == [True]


def cell(window, name, column, role=Qt.DisplayRole):
    model = window.table.model
    return model.data(model.index(model.names().index(name), column), role)


def test_target_combo_is_an_undoable_edit_and_the_table_shows_the_rule(qtbot, window, messages):
    calibrate(qtbot, window)
    combo = window.findChild(QComboBox, "targetCombo")
    assert combo.currentText() == "qnn-htp" and "[qnn-htp]" in window.windowTitle()
    assert cell(window, "conv2.weight", BW) == "8"
    combo.setCurrentText("ort-cpu")
    assert window.project.target == "ort-cpu" and "[ort-cpu]" in window.windowTitle()
    assert cell(window, "conv2.weight", BW) == "8 (7-bit grid)"
    assert cell(window, "conv2.weight", BW, Qt.FontRole).italic()
    tip = cell(window, "conv2.weight", COLUMNS.index("Name"), Qt.ToolTipRole)
    assert "set by the target: ort-cpu: conv2's 8-bit weight uses a 7-bit grid" in tip
    window.table.select(["conv2.weight"])
    assert "Set by the target" in window.findChild(QLabel, "ruleLabel").text()
    assert window.actionUndo.text() == "&Undo target ort-cpu"
    window.actionUndo.trigger()
    assert window.project.target == "qnn-htp" and combo.currentText() == "qnn-htp"
    assert cell(window, "conv2.weight", BW) == "8" and window.findChild(QLabel, "ruleLabel").text() == ""


def test_a_target_that_cannot_run_the_plan_is_refused_and_the_combo_goes_back(qtbot, window, messages):
    calibrate(qtbot, window)
    combo = window.findChild(QComboBox, "targetCombo")
    combo.setCurrentText("ort-cpu")
    window.project.apply_edit(["conv2.bias"], {"bw": 16})
    combo.setCurrentText("qnn-htp")
    assert window.project.target == "ort-cpu" and combo.currentText() == "ort-cpu"
    level, title, text = messages[-1]
    assert (level, title) == ("warning", "Target not changed") and "conv2.bias: int16 biases" in text


def test_verify_runs_the_export_in_onnxruntime_and_reports_it(qtbot, window, messages):
    calibrate(qtbot, window)
    window.findChild(QComboBox, "targetCombo").setCurrentText("ort-cpu")
    with qtbot.waitSignal(window.verifier.finished, timeout=WAIT) as done:
        window.actionVerify.trigger()
    comparison = done.args[0]
    check = comparison.runtime
    assert check.target == "ort-cpu" and check.agrees()
    label = window.findChild(QLabel, "runtimeLabel").text()
    assert label.startswith("onnxruntime ") and "simulated" in label
    level, title, text = messages[-1]
    assert (level, title) == ("info", "Runtime check") and "default session options" in text
    window.project.apply_edit(["fc1.weight"], {"bw": 4})  # an edit makes the numbers stale
    assert window.findChild(QLabel, "runtimeLabel").text() == ""


def test_verify_before_calibration_says_what_to_do(window, messages):
    assert not window.verifier.run()
    assert messages[-1][:2] == ("warning", "Nothing to verify") and "Calibrate" in messages[-1][2]


def test_an_imported_file_the_target_cannot_run_is_refused_whole(qtbot, window, messages, tmp_path):
    import json

    window.findChild(QComboBox, "targetCombo").setCurrentText("ort-cpu")
    path = tmp_path / "int4.json"
    path.write_text(json.dumps({"version": "1.0.0", "param_encodings": [], "activation_encodings": [
        {"name": "conv1_relu_out", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 4, "is_sym": False,
         "scale": [0.2], "offset": [0]},
        {"name": "logits", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": False,
         "scale": [0.2], "offset": [-100]}]}))
    assert not window.import_encodings(path)
    level, title, text = messages[-1]
    assert (level, title) == ("error", "Cannot import encodings")
    assert "conv1_relu_out: int4 activations do not run on ort-cpu" in text
    assert window.project.plan.edited() == []  # not half of it either


def test_the_editor_shows_an_8bit_choice_for_a_weight_on_the_7bit_grid(qtbot, window, messages):
    calibrate(qtbot, window)
    window.findChild(QComboBox, "targetCombo").setCurrentText("ort-cpu")
    window.table.select(["conv2.weight"])
    assert window.findChild(QComboBox, "bitwidthCombo").currentText() == "8"
    assert "int8 on a 7-bit grid" in window.findChild(QLabel, "encodingSummary").text()


def test_a_power_of_two_target_in_the_window_shows_its_rule_and_verifies(qtbot, window, messages):
    calibrate(qtbot, window)
    window.findChild(QComboBox, "targetCombo").setCurrentText("vitis-dpu")
    assert window.project.target == "vitis-dpu" and not messages
    enc = window.project.encodings["conv2.bias"]
    assert enc.bw == 8 and float(enc.scale[0]).hex().startswith("0x1.0000000000000p")  # a power of two
    tip = cell(window, "conv2.bias", COLUMNS.index("Name"), Qt.ToolTipRole)
    assert "set by the target: vitis-dpu: the DPU multiplies by shifting" in tip
    window.table.select(["conv1_relu_out"])
    assert "power" in window.findChild(QLabel, "ruleLabel").text()
    with qtbot.waitSignal(window.verifier.finished, timeout=WAIT) as done:
        window.actionVerify.trigger()
    check = done.args[0].runtime
    assert check.target == "vitis-dpu" and check.agrees()
