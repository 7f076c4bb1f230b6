"""PTQ steps in the window: run in a worker, one undoable edit each, before/after on the same views,
the output SQNR change in the status bar, refusals as messages, the float model export, sessions."""
import numpy as np
import onnx
from onnx import numpy_helper
from PySide6.QtWidgets import QDialogButtonBox

from qinspect.core.commands import SetDefaults
from qinspect.gui.file_actions import EXAMPLE_DATA
from qinspect.gui.ptq_dialog import PtqDialog

WAIT = 120_000


def calibrate(qtbot, window):
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT) as done:
        assert window.calibrate(str(EXAMPLE_DATA))
    assert done.args == [True]


def run(qtbot, window, step, **options):
    with qtbot.waitSignal(window.ptqFinished, timeout=WAIT) as done:
        assert window.run_ptq_step(step, **options)
    assert done.args == [True]


def measured(qtbot, window):
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        window.live_error.refresh_now()
    return min(o.sqnr_db for o in window.live_error.comparison.outputs.values())


def test_cle_is_one_undoable_step_with_before_and_after(qtbot, window, messages):
    calibrate(qtbot, window)
    index, stats = window.project.index, window.project.stats
    run(qtbot, window, "cle")
    project = window.project
    assert [r.step for r in project.steps] == ["cle"] and project.index is not index
    assert window.stack.undo_label == "cross-layer equalization" and window.isWindowModified()
    assert project.stats["conv1_relu_out"].max != stats["conv1_relu_out"].max  # computed again
    assert "PTQ: cross-layer equalization" in window.summary.text()
    info = [m for m in messages if m[0] == "info" and m[1] == "Cross-layer equalization"]
    assert info and "conv1 -> conv2" in info[0][2]
    # before and after on the same views: conv1's weights, whole and per channel
    window.table.select(["conv1.weight"])
    assert window.histogram.before_curve.xData is not None and len(window.histogram.before_curve.xData)
    assert "dashed: before cross-layer equalization" in window.histogram.info.toolTip()
    old = index.initializer("conv1.weight")
    np.testing.assert_allclose(window.histogram.before_max.yData, old.reshape(old.shape[0], -1).max(axis=1))
    window.stack.undo()
    assert project.index is index and project.stats is not stats and project.steps == []
    assert project.stats.keys() == stats.keys()
    window.table.select(["conv1.weight"])
    assert not len(window.histogram.before_curve.xData or [])
    window.stack.redo()
    assert [r.step for r in project.steps] == ["cle"]


def test_adaround_raises_the_output_sqnr_and_the_status_bar_says_by_how_much(qtbot, window, messages):
    calibrate(qtbot, window)
    window.stack.push(SetDefaults("4-bit weights", param_bw=4))
    nearest = measured(qtbot, window)
    run(qtbot, window, "adaround", samples=64, iterations=300)
    learned = measured(qtbot, window)
    print(f"\nwindow, W4A8: output SQNR {nearest:.1f} dB -> {learned:.1f} dB after AdaRound")
    assert learned > nearest + 5
    label = window.live_error.label.text()
    assert f"(was {nearest:.1f} dB before AdaRound)" in label
    # the table's weight SQNR is measured against the float weights, with the learned rounding
    assert window.live_error.sqnr["conv2.weight"] < 100
    assert window.project.plan.edits["conv2.weight"].encoding is not None  # frozen
    window.stack.undo()
    assert measured(qtbot, window) == nearest


def test_a_step_that_cannot_run_says_why(qtbot, window, messages):
    assert not window.run_ptq_step("adaround")  # not calibrated
    assert messages[-1][:2] == ("warning", "AdaRound not run")
    assert "calibrate first" in messages[-1][2]
    dialog = PtqDialog("adaround", window.ptq_refusal("adaround"), window)
    qtbot.addWidget(dialog)
    assert not dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.Ok).isEnabled()
    assert "calibrate first" in dialog.findChild(object, "ptqRefusal").text()
    assert dialog.values() == {"samples": 128, "iterations": 1000, "reg_param": 0.01}
    dialog.findChild(object, "ptqOption_iterations").setValue(50)
    assert dialog.values()["iterations"] == 50


def test_export_float_model_and_a_session_with_steps(qtbot, window, messages, tmp_path):
    calibrate(qtbot, window)
    run(qtbot, window, "cle")
    run(qtbot, window, "bias-correction", samples=32)
    out = tmp_path / "float.onnx"
    assert window.export_float_model(out)
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name, value in window.project.index.ptq_values.items():  # the corrected biases, in the model
        np.testing.assert_array_equal(written[name], value)
    assert not window.export_float_model(window.project.model_path)  # never over the input model
    assert messages[-1][0] == "error"
    session = tmp_path / "s.qinspect"
    assert window.save_session(session)
    encodings = dict(window.project.encodings)
    assert window.open_example() and window.project.steps == []
    assert window.open_session(session)
    assert [r.step for r in window.project.steps] == ["cle", "bias-correction"]
    assert window.project.encodings == encodings
    assert "PTQ: cross-layer equalization → bias correction" in window.summary.text()


def test_cle_on_the_mobile_example_as_a_user_sees_it(qtbot, window, messages):
    """Per-tensor weights on the MobileNet-style example: a depthwise channel hundreds of times wider
    than the rest ruins the output; after CLE the views show the layer at its new scale, the old
    outlier dashed and off it, and the status bar the output SQNR it had before."""
    from qinspect.gui.file_actions import EXAMPLE_MODEL

    assert window.open_model(str(EXAMPLE_MODEL.with_name("digits_mobile.onnx")))
    calibrate(qtbot, window)
    window.table.select(window.project.index.weights())
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        window.editor.per_channel_check.click()  # per-tensor weights, as a user sets them
    before = min(o.sqnr_db for o in window.live_error.comparison.outputs.values())
    window.show()
    qtbot.waitExposed(window)
    window.graph_dock.raise_()
    window.table.select(["dw2.weight"])
    assert "dw2" in window.graph._highlighted
    run(qtbot, window, "cle")
    # the graph is rebuilt for the rewritten model and still shows the layer the user was on
    assert "dw2" in window.graph._highlighted
    assert window.graph._visible_rect().intersects(window.graph.node_item("dw2").sceneBoundingRect())
    after = measured(qtbot, window)
    print(f"\nwindow, mobile example, per-tensor W8: output SQNR {before:.1f} dB -> {after:.1f} dB after CLE")
    assert before < 5 and after > 20
    assert f"(was {before:.1f} dB before cross-layer equalization)" in window.live_error.label.text()
    assert window.statusBar().currentMessage().startswith("cross-layer equalization in ")
    assert " 0.0 s" not in window.statusBar().currentMessage()  # a quick step still says how quick
    window.table.select(["dw2.weight"])
    panel = window.histogram
    values = window.project.index.initializer("dw2.weight")
    (x0, x1), _ = panel.plot.getViewBox().viewRange()
    assert x1 - x0 < 4 * (values.max() - values.min())  # the layer as it is now, readable
    assert "mostly off this scale" in panel.info.toolTip()
    assert len(panel.before_curve.xData) and len(panel.before_max.yData) == values.shape[0]
    (_, _), (y0, y1) = panel.channel_plot.getViewBox().viewRange()
    assert y1 - y0 < 4 * (values.max() - values.min())
    assert "before CLE, off-scale" in panel.channel_plot.plotItem.titleLabel.text


def test_cancelling_a_step_changes_nothing(qtbot, window, messages):
    calibrate(qtbot, window)
    index, encodings = window.project.index, dict(window.project.encodings)
    depth = window.stack.undo_label
    with qtbot.waitSignal(window.ptqFinished, timeout=WAIT) as done:
        assert window.run_ptq_step("adaround", samples=64, iterations=200_000)  # long enough to catch
        assert not window.progress.isHidden()
        qtbot.wait(300)  # let it get into the rounding
        window.actionCancel.trigger()  # what Esc does
    assert done.args == [False]
    assert window.project.index is index and window.project.steps == [] and window.stack.undo_label == depth
    assert window.project.encodings == encodings
    assert "cancelled; nothing changed" in window.statusBar().currentMessage()
    assert window.ptq_refusal("adaround") is None  # free to run again
