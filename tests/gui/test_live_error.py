"""The live error: SQNR column and output SQNR after calibration and after every edit, in a worker."""
import math

import pytest

from qinspect.core.commands import EditTensors
from qinspect.core.io.overrides import write_overrides
from qinspect.gui import create_main_window
from qinspect.gui.error_panel import live_samples
from qinspect.gui.main_window import EXAMPLE_DATA, EXAMPLE_MODEL
from qinspect.gui.tensor_table import SQNR

WAIT = 60_000


def calibrated(qtbot, window):
    """Calibrate on the example data and wait for the first live error numbers."""
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT) as done:
            assert window.calibrate(str(EXAMPLE_DATA))
        assert done.args == [True]
    return window


def sqnr_cell(window, name):
    model = window.table.model
    return model.data(model.index(model.row_of(name), SQNR))


def test_sqnr_column_and_status_fill_after_calibration(qtbot, window):
    label = window.findChild(object, "outputSqnrLabel")
    assert label is not None and "SQNR" not in label.text()
    calibrated(qtbot, window)
    model = window.table.model
    cells = {n: sqnr_cell(window, n) for n in model.names()}
    assert all(cells.values()), [n for n, c in cells.items() if not c]
    assert not any(math.isnan(float(c)) for c in cells.values())
    text = label.text()
    assert text.startswith("output SQNR ") and "dB" in text
    assert "top-1" in text  # the example's calibration data has labels
    assert window.live_error.comparison.samples == window.live_error.samples == 16


def test_an_edit_changes_its_sqnr_and_only_reruns_downstream(qtbot, window):
    calibrated(qtbot, window)
    comparer = window.live_error._comparer
    before = window.live_error.sqnr["conv2_relu_out"]
    upstream = window.live_error.sqnr["conv1_relu_out"]
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        window.stack.push(EditTensors(["conv2.weight"], bw=4))
    after = window.live_error.sqnr["conv2_relu_out"]
    assert after < before - 10  # 4-bit weights lose about 24 dB there
    assert float(sqnr_cell(window, "conv2_relu_out")) == pytest.approx(after, abs=0.05)
    assert window.live_error.sqnr["conv1_relu_out"] == upstream
    assert window.live_error._comparer is comparer  # kept alive between edits
    last = comparer.last_update
    assert "conv2.weight" in last["changed"]
    assert "conv1_relu_out" not in last["rerun"] and "logits" in last["rerun"]
    # undo is an edit too
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        window.actionUndo.trigger()
    assert window.live_error.sqnr["conv2_relu_out"] == pytest.approx(before)


def test_a_burst_of_edits_is_measured_once(qtbot, window):
    calibrated(qtbot, window)
    updates = []
    window.errorUpdated.connect(lambda: updates.append(1))
    for bw in (16, 4, 16, 4):
        window.stack.push(EditTensors(["fc1.weight"], bw=bw))
    qtbot.waitUntil(lambda: bool(updates) and not window.live_error.running, timeout=WAIT)
    qtbot.wait(300)  # nothing more comes
    assert len(updates) == 1
    assert window.live_error.comparison.encodings["fc1.weight"].bw == 4


def test_an_edit_during_a_run_replaces_it(qtbot, window):
    calibrated(qtbot, window)
    live = window.live_error
    before = live.sqnr["conv3_relu_out"]
    window.project.apply_edit(["conv3.weight"], {"bw": 4})
    live.refresh_now()
    assert live._thread is not None
    window.project.apply_edit(["conv3.weight", "conv3_relu_out"], {"bw": 16})
    live.refresh_now()  # cancels the running update; it restarts once that one has stopped

    def settled():
        return (not live.running and live.comparison is not None
                and live.comparison.encodings["conv3_relu_out"].bw == 16)

    qtbot.waitUntil(settled, timeout=WAIT)
    assert live.sqnr["conv3_relu_out"] > before  # 16 bits: only the error from upstream is left


def test_imported_encodings_without_data_say_so(qtbot, window, tmp_path):
    calibrated(qtbot, window)
    path = tmp_path / "enc.json"
    index = window.project.index
    encodings = dict(window.project.encodings)
    write_overrides(path, encodings, {n: index.targets[n].kind for n in encodings}, "1.0.0")
    other = create_main_window(model=str(EXAMPLE_MODEL))
    qtbot.addWidget(other)
    assert other.import_encodings(path)
    label = other.findChild(object, "outputSqnrLabel")
    qtbot.waitUntil(lambda: "no calibration data" in label.text(), timeout=WAIT)
    assert other.live_error.comparison is None
    other.live_error.stop()


def test_reopened_session_measures_at_once(qtbot, window, tmp_path):
    calibrated(qtbot, window)
    window.project.apply_edit(["fc1_relu_out"], {"bw": 16})
    session = tmp_path / "s.qinspect"
    assert window.save_session(session)
    other = create_main_window(session=str(session))
    qtbot.addWidget(other)
    with qtbot.waitSignal(other.errorUpdated, timeout=WAIT):
        pass
    assert other.live_error.sqnr.keys() == window.live_error.sqnr.keys()
    assert sqnr_cell(other, "fc1_relu_out")
    other.live_error.stop()


def test_big_models_use_fewer_live_samples(window):
    index = window.project.index
    assert live_samples(index) == 16
    assert live_samples(index, budget=3 * 16 * 1024) < 16  # a budget too small for 16 samples
    assert live_samples(index, budget=1) == 1


def test_missing_data_is_reported_in_the_label(qtbot, window, tmp_path):
    data = tmp_path / "calib.npz"
    data.write_bytes(EXAMPLE_DATA.read_bytes())
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        window.calibrate(str(data))
    session = tmp_path / "s.qinspect"
    assert window.save_session(session)
    data.unlink()
    other = create_main_window(session=str(session))
    qtbot.addWidget(other)
    label = other.findChild(object, "outputSqnrLabel")
    qtbot.waitUntil(lambda: "unavailable" in label.text(), timeout=WAIT)
    assert "calib.npz" in label.toolTip()
    other.live_error.stop()
