"""File > Export report (HTML): the target, the edits, the PTQ steps, the errors and the last
sensitivity ranking, measured on the calibration data in a worker."""
from qinspect.gui.main_window import EXAMPLE_DATA

WAIT = 60_000


def test_the_report_holds_the_users_work(qtbot, window, tmp_path):
    assert window.findChild(object, "actionExportReport") is not None
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT):
        assert window.calibrate(str(EXAMPLE_DATA))
    window.project.apply_edit(["fc1_relu_out"], {"bw": 16})
    with qtbot.waitSignal(window.sensitivity.runFinished, timeout=WAIT):
        assert window.sensitivity.run(samples=8)
    path = tmp_path / "report.html"
    with qtbot.waitSignal(window.exportFinished, timeout=WAIT) as done:
        assert window.export_report(path, samples=16)
    assert done.args == [True, str(path)]
    text = path.read_text()
    for needle in ("target: <code>qnn-htp</code>", "Precision plan", "fc1_relu_out", "bw 16", "Model outputs",
                   "Tensors, worst first", "samples: 16"):
        assert needle in text, needle
    assert window.sensitivity.entries and "Sensitivity" in text and "as last run in the window" in text


def test_the_report_needs_a_calibration(qtbot, window, messages, tmp_path):
    assert not window.export_report(tmp_path / "r.html")
    assert messages and "Calibrate" in messages[-1][2]
    assert not (tmp_path / "r.html").exists()


def test_export_for_qat_writes_the_start_bundle(qtbot, window, tmp_path):
    import json

    assert window.findChild(object, "actionExportQat") is not None
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT):
        assert window.calibrate(str(EXAMPLE_DATA))
    window.project.apply_edit(["fc1_relu_out"], {"range": (0.0, 20.0)})
    with qtbot.waitSignal(window.exportFinished, timeout=WAIT) as done:
        assert window.export_qat_start(tmp_path / "qat")
    assert done.args[0] is True
    doc = json.loads((tmp_path / "qat" / "qat_plan.json").read_text())
    assert doc["frozen"] == ["fc1_relu_out"] and (tmp_path / "qat" / "model.onnx").exists()


def test_a_qat_result_folder_comes_back_as_b(qtbot, window, messages, tmp_path):
    """The round trip in the window: Export for QAT, "train" (a weight moved, a range learned, saved as
    AIMET saves: model and .encodings in a folder), then File > Compare with QAT result."""
    import json
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT):
        assert window.calibrate(str(EXAMPLE_DATA))
    with qtbot.waitSignal(window.exportFinished, timeout=WAIT):
        assert window.export_qat_start(tmp_path / "qat")
    result = tmp_path / "trained"
    result.mkdir()
    model = onnx.load(str(tmp_path / "qat" / "model.onnx"))
    for t in model.graph.initializer:
        if t.name == "fc2.weight":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.3), t.name))
    onnx.save(model, str(result / "model_qat.onnx"))
    doc = json.loads((tmp_path / "qat" / "encodings.json").read_text())
    for e in doc["activation_encodings"]:
        if e["name"] == "conv2_relu_out":
            e["scale"] = [e["scale"][0] * 0.8]
    (result / "model_qat.encodings").write_text(json.dumps(doc))

    assert window.findChild(object, "actionCompareQat") is not None
    with qtbot.waitSignal(window.compare.compared, timeout=WAIT) as done:
        assert window.compare_qat_result(result)
    assert done.args == [True] and window.compare_dock.isVisibleTo(window)
    rows = {t.name: t for t in window.compare.result.tensors}
    assert {"range", "scale"} <= set(rows["conv2_relu_out"].changed)  # the learned range
    assert "sqnr" in rows["fc2.weight"].changed                          # the moved weight
    assert "model_qat.onnx" in window.compare.status.text()

    shutil.copy(result / "model_qat.onnx", result / "other.onnx")
    assert not window.compare_qat_result(result)
    assert "model_qat.onnx, other.onnx" in messages[-1][2] and "B model" in messages[-1][2]
    assert not window.compare_qat_result(tmp_path / "nowhere")
    assert "not a folder" in messages[-1][2]
