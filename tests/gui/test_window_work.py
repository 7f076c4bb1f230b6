"""Issue 13: the window as a demanding user finds it. No lost work, nothing misleading, buttons that work."""
import json

import onnx
import pytest

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
