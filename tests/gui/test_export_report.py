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
