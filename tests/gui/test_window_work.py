"""Issue 13: the window as a demanding user finds it. No lost work, nothing misleading, buttons that work."""
import json

import numpy as np

import onnx
import pytest
from PySide6.QtCore import Qt

from qinspect.core.commands import EditTensors
from qinspect.core.io.session import load_session
from qinspect.gui.file_actions import EXAMPLE_DATA
from tests.models import small_cnn

WAIT = 60_000


def calibrate(qtbot, window, data=str(EXAMPLE_DATA)):
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT) as done:
        assert window.calibrate(data)
    assert done.args == [True]


def test_the_run_sensitivity_button_runs(qtbot, window, messages):
    calibrate(qtbot, window)
    with qtbot.waitSignal(window.sensitivity.runFinished, timeout=WAIT) as done:
        window.sensitivity.run_button.click()  # clicked(False) once arrived as the sample count
    assert done.args == [True] and window.sensitivity.entries
    assert not [m for m in messages if m[0] == "error"]


def test_unsaved_work_is_marked_and_asked_about(qtbot, window, messages, questions, tmp_path):
    assert not window.isWindowModified() and "[*]" in window.windowTitle()
    calibrate(qtbot, window)
    assert window.isWindowModified()  # statistics no session holds yet
    session = tmp_path / "s.qinspect"
    assert window.save_session(session) and not window.isWindowModified()
    window.stack.push(EditTensors(["fc1_relu_out"], bw=16))
    assert window.isWindowModified()
    window.stack.undo()
    assert not window.isWindowModified()  # back where the session was saved
    window.stack.push(EditTensors(["fc1_relu_out"], bw=16))

    other = tmp_path / "other.onnx"
    onnx.save_model(small_cnn(), other)
    questions.answer = "Cancel"
    assert not window.open_model(other)
    assert window.project.model_path != str(other) and window.isWindowModified()
    title, text, choices = questions.asked[-1]
    assert title == "Unsaved changes" and "digits_cnn.onnx" in text and choices == ("Save", "Discard", "Cancel")

    questions.answer = "Save"  # goes to the session saved before, without asking where
    assert window.open_model(other) and window.project.model_path == str(other)
    assert load_session(session).plan.edits["fc1_relu_out"].bw == 16
    assert not window.isWindowModified()

    window.stack.push(EditTensors(["conv1.weight"], bw=4))
    questions.answer = "Cancel"
    window.show()
    window.close()
    assert window.isVisible()  # quitting was cancelled: nothing lost
    questions.answer = "Discard"
    window.close()
    assert not window.isVisible()


def test_a_typed_range_replaces_an_imported_encoding(qtbot, window, messages, tmp_path):
    from PySide6.QtWidgets import QComboBox

    calibrate(qtbot, window)
    path = tmp_path / "enc.json"
    path.write_text(json.dumps({"version": "1.0.0", "param_encodings": [], "activation_encodings": [
        {"name": "fc1_relu_out", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": False,
         "scale": [0.05], "offset": [0]}]}))
    assert window.import_encodings(path)
    window.table.select(["fc1_relu_out"])
    editor = window.editor
    scheme = window.findChild(QComboBox, "schemeCombo")
    assert scheme.currentIndex() == -1 and scheme.placeholderText() == "imported"  # not "tf"
    editor.min_edit.setText("0")
    editor.max_edit.setText("3")
    editor.max_edit.returnPressed.emit()
    enc = window.project.encodings["fc1_relu_out"]
    assert enc.max[0] == pytest.approx(3.0, rel=0.01) and enc.scale[0] != 0.05
    assert window.stack.undo_label == "set range [0, 3] on fc1_relu_out"
    window.stack.undo()
    assert window.project.encodings["fc1_relu_out"].scale == (0.05,)


def test_undo_labels_read_as_words(qtbot, window):
    from qinspect.core.commands import describe

    assert describe({"bw": 16, "dtype": "float"}) == "bitwidth 16, dtype float"
    assert describe({"bw": None, "symmetric": True, "per_channel": False}) == \
        "bitwidth default, symmetric on, per channel off"
    assert describe({"range": (-1.0, 2.5), "percentile": 99.9}) == "range [-1, 2.5], percentile 99.9"
    window.stack.push(EditTensors(["logits"], bw=16))
    assert window.actionUndo.text() == "&Undo set bitwidth 16 on logits"


def test_undo_keys_work_while_the_channel_box_has_focus(qtbot, window):
    from PySide6.QtCore import Qt

    calibrate(qtbot, window)
    window.show()
    qtbot.waitExposed(window)
    window.stack.push(EditTensors(["conv1.weight"], bw=4))
    window.table.select(["conv1.weight"])
    spin = window.histogram.channel_spin
    spin.setFocus()
    qtbot.waitUntil(spin.hasFocus, timeout=5000)
    qtbot.keyClick(spin, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not window.stack.can_undo and window.project.plan.edited() == []
    qtbot.keyClick(spin, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert window.project.plan.edit("conv1.weight").bw == 4


def test_a_session_saved_from_the_command_line_reopens_elsewhere(qtbot, messages, tmp_path, monkeypatch):
    import shutil

    from qinspect.cli import main
    from qinspect.gui import create_main_window
    from qinspect.gui.file_actions import EXAMPLE_MODEL

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(EXAMPLE_DATA, work / "calib.npz")
    monkeypatch.chdir(work)  # the paths are typed relative to here
    assert main(["calibrate", str(EXAMPLE_MODEL), "--data", "calib.npz", "-o", "enc.json", "--samples", "64",
                 "--session", "s.qinspect", "-q"]) == 0
    doc = json.loads((work / "s.qinspect").read_text())
    assert doc["data"] == str(work / "calib.npz") and doc["samples"] == 64
    monkeypatch.chdir(tmp_path)  # reopened from somewhere else
    window = create_main_window(session=str(work / "s.qinspect"))
    qtbot.addWidget(window)
    assert "calibrated on 64 samples" in window.summary.text()
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        window.live_error.schedule(None)  # finds its data
    assert window.live_error.sqnr and not [m for m in messages if m[0] == "error"]


def test_the_dialogs_scheme_sets_every_tensor_and_can_be_undone(qtbot, window):
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT):
        assert window.calibrate(str(EXAMPLE_DATA), scheme="tf_enhanced")
    d = window.project.plan.defaults
    assert (d.act_scheme, d.param_scheme) == ("tf_enhanced", "tf_enhanced")  # as --scheme on the command line
    assert window.stack.undo_label == "scheme tf_enhanced for every tensor"
    window.stack.undo()
    assert (window.project.plan.defaults.act_scheme, window.project.plan.defaults.param_scheme) == ("tf", "tf")
    assert window.project.stats  # the calibration itself stays


def test_the_data_path_survives_a_failed_run_and_dialogs_start_in_the_models_folder(qtbot, window, messages,
                                                                                 tmp_path):
    from pathlib import Path

    from qinspect.gui.calibration_dialog import CalibrationDialog

    bad = tmp_path / "typo.npz"
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT) as done:
        window.calibrate(str(bad))
    assert done.args == [False]
    assert window._last_data == str(bad)  # the next dialog offers it again to correct
    # the bundled example lives inside the package: dialogs and export paths start at home instead
    assert window.start_folder() == str(Path.home())
    assert window._default_path(".qdq.onnx") == str(Path.home() / "digits_cnn.qdq.onnx")
    model = tmp_path / "mine.onnx"
    onnx.save_model(small_cnn(), model)
    assert window.open_model(model)
    assert window.start_folder() == str(tmp_path) and window._default_path(".json") == str(tmp_path / "mine.json")
    dialog = CalibrationDialog(window, str(bad), folder=window.start_folder())
    qtbot.addWidget(dialog)
    assert dialog.data_edit.minimumWidth() >= 480 and dialog.start_folder() == str(tmp_path)


def test_clipping_is_one_number_everywhere(qtbot, window):
    """The table, the editor's preview and the estimate agree on what clipped means (beyond half a step
    past the grid's ends; 1.5 steps for int32 biases), and a bias one step over its top is not clipped."""
    from qinspect.core.quant.encoding import Encoding, clip_bounds
    from qinspect.core.quant.estimate import histogram_error
    from qinspect.gui.tensor_table import CLIPPED

    calibrate(qtbot, window)
    window.project.apply_edit(["conv2_relu_out"], {"dtype": "float", "bw": 16})  # conv3's input: float
    model = window.table.model
    for name in ("conv3.bias", "fc2.bias", "fc1.bias"):  # AIMET's fallback scale puts conv3's top 1 step up
        text = model.data(model.index(model.names().index(name), CLIPPED))
        assert text == "0.00%", (name, text)
    stats = window.project.stats["fc1_relu_out"]
    enc8 = window.project.encodings["fc1_relu_out"]
    window.project.apply_edit(["fc1_relu_out"], {"bw": 16})
    enc16 = window.project.encodings["fc1_relu_out"]
    assert histogram_error(stats, enc16).clipped_fraction <= histogram_error(stats, enc8).clipped_fraction
    row = model.names().index("fc1_relu_out")
    table = float(model.data(model.index(row, CLIPPED)).rstrip("%")) / 100
    assert table == pytest.approx(histogram_error(stats, enc16).clipped_fraction, abs=5e-5)
    top = Encoding(bw=32, scale=(1.0,), offset=(-(2**31),), symmetric=True)
    assert clip_bounds(top)[1][0] == 2**31 - 1 + 1.5


def test_the_longest_sensitivity_bar_is_the_most_sensitive_group(qtbot, window):
    from qinspect.gui.sensitivity_panel import bar_lengths

    lengths = bar_lengths([-3.0, -20.0, -35.5, float("inf")])
    assert list(np.argsort(-lengths[:3])) == [0, 1, 2] and lengths.min() > 0
    calibrate(qtbot, window)
    with qtbot.waitSignal(window.sensitivity.runFinished, timeout=WAIT):
        window.actionRunSensitivity.trigger()
    panel = window.sensitivity
    widths = panel.bars.opts["width"]
    assert int(np.argmax(widths)) == 0  # rank 1, the most sensitive group, has the longest bar
    assert "longer = more sensitive" in panel.plot.getAxis("bottom").labelText


def test_the_window_fits_a_1366x768_laptop(qtbot, window):
    calibrate(qtbot, window)
    window.resize(1366, 768)
    window.show()
    qtbot.waitExposed(window)
    with qtbot.waitSignal(window.verifier.finished, timeout=WAIT):
        window.verifier.run(samples=8)  # long status texts: they must not widen the window
    for name in ("conv2.weight", "conv2_relu_out"):
        window.table.select([name])
        qtbot.wait(50)
        assert window.minimumSizeHint().width() <= 1024, window.minimumSizeHint()
        assert window.width() == 1366  # it never widens itself
        assert window.histogram.plot.height() >= 200, (name, window.histogram.plot.height())
    window.resize(1024, 700)
    qtbot.wait(50)
    assert window.width() == 1024


def test_the_bottom_panels_grow_with_the_screen_until_the_user_sizes_them(qtbot, window):
    window.resize(1366, 768)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: window._dock_height is not None, timeout=5000)
    small = window.graph_dock.height()
    window.resize(1920, 1080)
    qtbot.waitUntil(lambda: window.graph_dock.height() > small + 80, timeout=5000)  # the graph gets the room
    assert window.graph_dock.height() >= 0.3 * window.height()
    # the user drags the edge: that height stays through later resizes
    window.resizeDocks([window.graph_dock], [300], Qt.Vertical)
    qtbot.waitUntil(lambda: window.graph_dock.height() < 300, timeout=5000)
    dragged = window.graph_dock.height()
    window.resize(1700, 1000)
    qtbot.wait(50)
    window.resize(1366, 768)
    qtbot.wait(50)
    assert window.graph_dock.height() == dragged
