"""Bad input in the window (issue 5): each kind ends in a message (collected by the `messages` fixture
instead of a dialog) that names the file or tensor, and the window stays usable afterwards.

Truncated models and wrong-shape .npy data are in test_main_window.py; these are the other kinds.
"""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qinspect.gui import create_main_window
from tests.models import finish, small_cnn

WAIT = 30_000


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save_model(small_cnn(), path)
    return path


@pytest.fixture
def window(qtbot, messages, model_path):
    w = create_main_window(model=str(model_path))
    qtbot.addWidget(w)
    yield w
    w.cancel()
    w.wait_for_jobs(10_000)


def calibrate(qtbot, window, data):
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT) as blocker:
        assert window.calibrate(str(data))
    return blocker.args[0]


def export(qtbot, window, fn, path, *args):
    with qtbot.waitSignal(window.exportFinished, timeout=WAIT) as blocker:
        assert fn(path, *args)
    return blocker.args


def last(messages, level="error"):
    assert messages, "no message was shown"
    got, title, text = messages[-1]
    assert got == level, messages[-1]
    assert "Traceback" not in text
    return text


def still_usable(qtbot, window, tmp_path):
    """The window calibrates and exports after the failure."""
    assert calibrate(qtbot, window, "random:4") is True
    ok, _ = export(qtbot, window, window.export_qdq, tmp_path / "after.onnx")
    assert ok and (tmp_path / "after.onnx").exists()


def test_models_that_cannot_be_opened(qtbot, window, messages, model_path, tmp_path):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text('{"this": "is json"}')
    broken = tmp_path / "broken.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, broken)
    for path, needle in ((not_onnx, "not a readable ONNX model"), (broken, "fails the ONNX checker")):
        assert not window.open_model(path)
        text = last(messages)
        assert str(path) in text and needle in text
        assert window.project.model_path == str(model_path)  # what was open stays open
    still_usable(qtbot, window, tmp_path)


@pytest.mark.parametrize("kind", ["dtype", "names", "empty"])
def test_data_that_does_not_fit_the_model(qtbot, window, messages, tmp_path, kind):
    x = np.random.default_rng(0).standard_normal((4, 1, 3, 8, 8))
    if kind == "dtype":
        path, needle = tmp_path / "strings.npy", "expects float32"
        np.save(path, x.astype(str))
    elif kind == "names":
        path, needle = tmp_path / "named.npz", "missing input"
        np.savez(path, image=x.astype(np.float32))
    else:
        path, needle = tmp_path / "empty.npy", "holds no samples"
        np.save(path, np.zeros((0, 3, 8, 8), np.float32))
    assert calibrate(qtbot, window, path) is False
    text = last(messages)
    assert str(path) in text and needle in text
    assert window.project.stats == {}
    still_usable(qtbot, window, tmp_path)


def test_nan_and_inf_activations_warn_and_keep_working(qtbot, messages, tmp_path):
    nodes = [helper.make_node("Log", ["x"], ["log"], name="log"),
             helper.make_node("Abs", ["log"], ["y"], name="abs")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    path = tmp_path / "log.onnx"
    onnx.save_model(finish(graph), path)
    window = create_main_window(model=str(path))
    qtbot.addWidget(window)
    data = tmp_path / "x.npy"
    np.save(data, np.array([[1.0, 2.0, 0.0, -1.0]] * 6, np.float32))  # log(0) = -inf, log(-1) = nan
    assert calibrate(qtbot, window, data) is True
    text = last(messages, "warning")
    assert "NaN/Inf" in text and "log" in text
    stats = window.project.stats["log"]
    assert stats.nan_count == 6 and stats.neginf_count == 6 and np.isfinite([stats.min, stats.max]).all()
    window.table.select(["log"])
    edges, counts = window.histogram.histogram_data()
    assert np.isfinite(edges).all() and counts.sum() == stats.counts.sum()
    ok, _ = export(qtbot, window, window.export_qdq, tmp_path / "q.onnx")
    assert ok
    window.cancel()
    window.wait_for_jobs(10_000)


def test_bad_overrides_files_change_nothing(qtbot, window, messages, tmp_path):
    assert calibrate(qtbot, window, "random:4") is True
    before = dict(window.project.encodings)
    bad = {
        "invalid.json": "{not json",
        "version.json": json.dumps({"version": "9.9.9"}),
        "names.json": json.dumps({"version": "0.6.1", "activation_encodings": {
            "no_such_tensor": [{"bitwidth": 8, "dtype": "int", "min": -1, "max": 1}]}}),
        "bitwidth.json": json.dumps({"version": "0.6.1", "activation_encodings": {
            "input": [{"bitwidth": 7, "dtype": "int", "min": -1, "max": 1}]}}),
        "minmax.json": json.dumps({"version": "0.6.1", "activation_encodings": {
            "input": [{"bitwidth": 8, "dtype": "int", "min": 2, "max": -2}]}}),
    }
    needles = {"invalid.json": "not valid JSON", "version.json": "unknown version",
               "names.json": "no_such_tensor", "bitwidth.json": "input: bitwidth 7",
               "minmax.json": "input: min 2.0 is above max -2.0"}
    for name, text in bad.items():
        path = tmp_path / name
        path.write_text(text)
        assert not window.import_encodings(path)
        shown = last(messages)
        assert str(path) in shown and needles[name] in shown, shown
        assert window.project.encodings == before and not window.actionUndo.isEnabled()
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"version": "0.6.1", "activation_encodings": {
        "input": [{"bitwidth": 16, "dtype": "float"}]}}))
    assert window.import_encodings(good)
    assert window.project.encodings["input"].is_float and window.actionUndo.isEnabled()


def test_unwritable_export_paths(qtbot, window, messages, tmp_path, monkeypatch):
    assert calibrate(qtbot, window, "random:4") is True
    missing = tmp_path / "missing" / "q.onnx"
    ok, text = export(qtbot, window, window.export_qdq, missing)
    assert not ok and "does not exist" in text and str(missing) in last(messages)

    from qinspect.core.io import files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    target = tmp_path / "enc.json"
    ok, text = export(qtbot, window, window.export_encodings, target, "0.6.1")
    assert not ok and "read-only" in text and str(target) in last(messages)
    assert not target.exists()
    monkeypatch.undo()
    ok, _ = export(qtbot, window, window.export_encodings, target, "0.6.1")
    assert ok and json.loads(target.read_text())["version"] == "0.6.1"
    still_usable(qtbot, window, tmp_path)


def test_flagged_mask_tensor_can_be_kept_in_float(qtbot, messages, tmp_path):
    """An attention-style mask puts -1e9 into an activation: calibration flags it, one action fixes it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from qinspect.gui import create_main_window
    from tests.models import finish

    mask = helper.make_tensor("mask", TensorProto.FLOAT, [1, 8], [0.0] * 6 + [-1e9] * 2)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "mask"], ["scores"], name="add_mask"),
         helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1)],
        "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 8])], initializer=[mask])
    path = tmp_path / "masked.onnx"
    onnx.save_model(finish(graph), path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    window = create_main_window(model=str(path))
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.calibrationFinished, timeout=60_000) as done:
        window.calibrate(str(tmp_path / "x.npy"))
    assert done.args[0] is True
    assert window.actionKeepFlaggedFloat.isEnabled()
    assert any("scores" in text for _, _, text in messages)
    window.actionKeepFlaggedFloat.trigger()
    assert window.project.encodings["scores"].is_float
    window.actionUndo.trigger()
    assert not window.project.encodings["scores"].is_float
    window.cancel()
    window.wait_for_jobs(10_000)


def test_zero_d_tensors_in_the_window(qtbot, messages, tmp_path):
    """A scalar weight, a scalar activation and a scalar output: every panel shows them, edits apply."""
    from tests.models import scalars

    path = tmp_path / "scalars.onnx"
    onnx.save_model(scalars(), path)
    np.save(tmp_path / "x.npy", np.random.default_rng(4).standard_normal((16, 2, 3)).astype(np.float32))
    w = create_main_window(model=str(path))
    qtbot.addWidget(w)
    try:
        calibrate(qtbot, w, tmp_path / "x.npy")
        for name in ("c", "b0", "s", "y", "half"):
            w.table.select([name])
            assert w.histogram.tensor == name
            w.grab()  # paints every panel
        w.project.apply_edit(["s"], {"range": (-3.0, 3.0)})
        w.project.apply_edit(["c"], {"bw": 4})
        with qtbot.waitSignal(w.errorUpdated, timeout=WAIT):
            w.live_error.schedule(None)
        assert "s" in w.live_error.sqnr
        assert not [m for m in messages if m[0] == "error"], messages
    finally:
        w.cancel()
        w.wait_for_jobs(10_000)
