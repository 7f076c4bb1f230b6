"""The window driven as a user would, offscreen. Every wait has a timeout; messages are collected."""
import json
import time

import numpy as np
import onnxruntime as ort
import pytest
from PySide6.QtCore import QTimer

from qinspect.cli import main
from qinspect.gui import create_main_window
from qinspect.gui.main_window import EXAMPLE_DATA, EXAMPLE_MODEL

WAIT = 60_000


def calibrate(qtbot, window, data=str(EXAMPLE_DATA), **options):
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT) as blocker:
        assert window.calibrate(data, **options)
    return blocker.args[0]


def test_opens_the_example_with_object_names(window):
    assert window.objectName() == "MainWindow"
    assert window.project.model_path == str(EXAMPLE_MODEL)
    for name in ("tensorTable", "histogramPlot", "precisionEditor", "calibrationProgress"):
        assert window.findChild(object, name) is not None, name
    for name in ("actionOpenModel", "actionCalibrate", "actionCancel", "actionExportEncodings",
                 "actionExportQdq", "actionSaveSession", "actionUndo", "actionRedo"):
        assert window.findChild(object, name) is not None, name
    assert window.table.findChild(object, "tensorTable").model().rowCount() == len(window.project.index.targets)


def test_calibrate_select_edit_undo(qtbot, window):
    assert calibrate(qtbot, window) is True
    stats = window.project.stats["conv2_relu_out"]
    window.table.select(["conv2_relu_out"])
    edges, counts = window.histogram.histogram_data()
    np.testing.assert_array_equal(counts, stats.counts)
    before = window.project.encodings["conv2_relu_out"]
    window.editor.findChild(object, "bitwidthCombo").setCurrentText("16")
    assert window.project.encodings["conv2_relu_out"].bw == 16
    assert window.actionUndo.isEnabled()
    window.actionUndo.trigger()
    assert window.project.encodings["conv2_relu_out"] == before
    window.actionRedo.trigger()
    assert window.project.encodings["conv2_relu_out"].bw == 16


def test_drag_a_handle_commits_one_snapped_edit(qtbot, window):
    calibrate(qtbot, window)
    window.table.select(["fc1_relu_out"])
    enc = window.project.encodings["fc1_relu_out"]
    lo, hi = window.histogram.region()
    assert (lo, hi) == pytest.approx((enc.min[0], enc.max[0]))
    region = window.histogram.region_item
    region.setRegion((lo, hi * 0.5))
    region.sigRegionChangeFinished.emit(region)
    new = window.project.encodings["fc1_relu_out"]
    assert new.max[0] == pytest.approx(hi * 0.5, rel=0.02) and new.offset == (0,)
    assert new.min[0] == pytest.approx(new.offset[0] * new.scale[0])
    window.actionUndo.trigger()
    assert window.project.encodings["fc1_relu_out"] == enc


def test_export_both_files_and_reopen_session(qtbot, window, tmp_path):
    calibrate(qtbot, window)
    window.project.apply_edit(["fc1_relu_out"], {"bw": 16})
    enc_path, qdq_path = tmp_path / "enc.json", tmp_path / "model.qdq.onnx"
    with qtbot.waitSignal(window.exportFinished, timeout=WAIT) as done:
        window.export_encodings(enc_path, "1.0.0")
    assert done.args[0] is True
    doc = json.loads(enc_path.read_text())
    assert {e["name"] for e in doc["activation_encodings"]} >= {"input", "fc1_relu_out"}
    cli = tmp_path / "cli.json"  # the window writes what the command line writes for the same defaults
    assert main(["calibrate", str(EXAMPLE_MODEL), "--data", str(EXAMPLE_DATA), "-o", str(cli), "--format", "1.0.0",
                 "-q"]) == 0
    assert doc["quantizer_args"] == json.loads(cli.read_text())["quantizer_args"]
    assert doc["producer"]["target"] == "qnn-htp"
    with qtbot.waitSignal(window.exportFinished, timeout=WAIT) as done:
        window.export_qdq(qdq_path)
    assert done.args[0] is True, done.args
    x = np.load(EXAMPLE_DATA)["input"][:4]
    out = ort.InferenceSession(str(qdq_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape == (4, 10)
    session = tmp_path / "s.qinspect"
    assert window.save_session(session)
    encodings = dict(window.project.encodings)
    other = create_main_window(session=str(session))
    qtbot.addWidget(other)
    assert other.project.encodings == encodings
    assert other.project.stats.keys() == window.project.stats.keys()


def test_only_edited_export(qtbot, window, messages, tmp_path):
    calibrate(qtbot, window)
    window.project.apply_edit(["conv1_relu_out"], {"dtype": "float"})
    path = tmp_path / "partial.json"
    with qtbot.waitSignal(window.exportFinished, timeout=WAIT):
        window.export_encodings(path, "0.6.1", only_edited=True)
    doc = json.loads(path.read_text())
    assert doc["activation_encodings"] == {"conv1_relu_out": [{"bitwidth": 16, "dtype": "float"}]}
    assert doc["param_encodings"] == {}
    assert not window.export_encodings(tmp_path / "partial2.json", "2.0.0", only_edited=True)
    assert "the edited ones in 1.0.0" in messages[-1][2] and not (tmp_path / "partial2.json").exists()


def test_cancel_halfway_leaves_state_unchanged(qtbot, window):
    calibrate(qtbot, window)
    before = {n: (s.min, s.max, s.count) for n, s in window.project.stats.items()}
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT) as blocker:
        window.calibrate("random:100000", batch_size=1)
        qtbot.waitUntil(lambda: window.progress.value() > 0, timeout=WAIT)
        window.actionCancel.trigger()
    assert blocker.args[0] is False
    assert {n: (s.min, s.max, s.count) for n, s in window.project.stats.items()} == before
    qtbot.waitUntil(lambda: not window.jobs, timeout=WAIT)
    assert not window.actionCancel.isEnabled()


def test_corrupt_model_gives_a_message_and_a_live_window(qtbot, window, messages, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(EXAMPLE_MODEL.read_bytes()[:500])
    assert not window.open_model(bad)
    assert messages and messages[-1][0] == "error" and "broken.onnx" in messages[-1][2]
    assert window.project.model_path == str(EXAMPLE_MODEL)
    assert calibrate(qtbot, window) is True  # still usable


def test_wrong_shape_data_gives_a_message(qtbot, window, messages, tmp_path):
    data = tmp_path / "wrong.npy"
    np.save(data, np.zeros((5, 1, 9, 9), np.float32))
    assert calibrate(qtbot, window, str(data)) is False
    level, _, text = messages[-1]
    assert level == "error" and "wrong.npy" in text and "input" in text
    assert window.project.stats == {}


def test_longest_ui_stall_during_calibration(qtbot, window):
    """Reports the longest gap between 10 ms timer ticks while calibrating (target < 100 ms is a benchmark)."""
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    calibrate(qtbot, window, "random:3000", batch_size=4)
    timer.stop()
    gaps = np.diff(ticks)
    assert len(gaps) > 5
    print(f"\nlongest UI stall during calibration: {gaps.max() * 1000:.1f} ms over {len(gaps)} ticks")
