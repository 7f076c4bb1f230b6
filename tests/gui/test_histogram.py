import math
import time

import numpy as np
import pyqtgraph as pg
import pytest
import shiboken6
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication, QCheckBox, QLabel, QSpinBox

from qinspect.core.commands import CommandStack, EditTensors
from qinspect.core.quant.encoding import compute_encoding
from qinspect.core.graph.model import load_model
from qinspect.core.project import Project
from qinspect.core.quant.stats import TensorStats
from qinspect.gui.histogram import HistogramPanel
from tests.models import small_cnn


def make_stats(name: str, rng) -> TensorStats:
    if name == "relu1_out":
        return TensorStats.of(np.maximum(rng.standard_normal(20_000) * 2.0, 0.0))
    if name == "sig_out":
        return TensorStats.of(1 / (1 + np.exp(-rng.standard_normal(20_000))))
    values = rng.standard_normal(20_000) * 3.0 + 0.5
    if name == "conv2_out":
        values[:5] = [np.nan, np.nan, np.nan, np.inf, -np.inf]
    return TensorStats.of(values)


@pytest.fixture
def project():
    p = Project()
    p.open_model(load_model(small_cnn()))
    rng = np.random.default_rng(0)
    p.set_stats({n: make_stats(n, rng) for n in p.index.activations()}, 20_000)
    return p


@pytest.fixture
def stack(project):
    return CommandStack(project)


@pytest.fixture
def panel(qtbot, project, stack):
    widget = HistogramPanel(project, stack)
    qtbot.addWidget(widget)
    widget.resize(900, 600)
    widget.show()
    qtbot.waitExposed(widget, timeout=5000)
    return widget


def child(panel, cls, name):
    widget = panel.findChild(cls, name)
    assert widget is not None, name
    return widget


def bounds(enc):
    return float(enc.min[0]), float(enc.max[0])


def test_histogram_and_region_match_stats_and_encoding(panel, project):
    plot = child(panel, pg.PlotWidget, "histogramPlot")
    panel.show_tensor("conv2_out")
    edges, counts = panel.histogram_data()
    stats = project.stats["conv2_out"]
    np.testing.assert_array_equal(edges, stats.edges)
    np.testing.assert_array_equal(counts, stats.counts)
    assert panel.region() == pytest.approx(bounds(project.encoding("conv2_out")))
    assert panel.curve.opts["stepMode"] == "center"
    shown_edges, shown = panel.display_data()  # drawn with display bins over [min, max]
    np.testing.assert_array_equal(panel.curve.yData, shown)
    assert shown.sum() == pytest.approx(stats.counts.sum()) and len(shown) <= 400
    assert shown_edges[0] == stats.min and shown_edges[-1] == stats.max
    assert panel.min_line.value() == stats.min and panel.max_line.value() == stats.max
    # Redraws reuse the items: switching tensors adds nothing to the plot.
    items = list(plot.getPlotItem().items)
    for name in ["logits", "conv1.weight", "relu1_out", "conv2_out", None, "sig_out"]:
        panel.show_tensor(name)
    assert plot.getPlotItem().items == items


def test_aliased_tensor_uses_source_encoding(panel, project, stack):
    panel.show_tensor("pool_out")  # MaxPool output: reuses relu1_out's encoding
    assert "uses the encoding of relu1_out" in child(panel, QLabel, "histogramInfo").text()
    np.testing.assert_array_equal(panel.histogram_data()[1], project.stats["relu1_out"].counts)
    assert panel.region() == pytest.approx(bounds(project.encoding("relu1_out")))
    panel.region_item.setRegion((0.0, 2.0))  # with signals: a drag and its release
    assert stack.can_undo and project.plan.edit("relu1_out").range is not None
    assert project.plan.edit("pool_out").range is None


def test_drag_previews_then_commits_one_snapped_undoable_command(panel, project, stack):
    pushes = []
    stack.subscribe(lambda: pushes.append(stack.undo_label))
    preview = child(panel, QLabel, "previewLabel")
    panel.show_tensor("logits")
    original = project.encoding("logits")
    lo, hi = bounds(original)
    assert panel.region_item.movable

    # Dragging the upper handle: live preview, no command yet.
    before = preview.text()
    panel.region_item.lines[1].setValue(hi * 0.5)
    assert preview.text() != before and preview.text().startswith("preview")
    assert "clipped" in preview.text() and "SQNR" in preview.text()
    assert len(panel.tails[1].xData) > 1  # the new clipped tail is shaded at once
    assert not pushes

    # Release: exactly one command, with the range snapped to the grid.
    panel.region_item.sigRegionChangeFinished.emit(panel.region_item)
    assert len(pushes) == 1 and stack.can_undo
    expected = compute_encoding(lo, hi * 0.5, 8)
    assert project.plan.edit("logits").range == pytest.approx(bounds(expected))
    assert bounds(project.encoding("logits")) == pytest.approx(bounds(expected))
    assert panel.region() == pytest.approx(bounds(expected))
    assert len(pushes) == 1  # putting the region on the snapped range pushed nothing

    stack.undo()
    assert project.encoding("logits") == original
    assert panel.region() == pytest.approx((lo, hi))
    assert not stack.can_undo


def test_release_without_change_pushes_nothing(panel, stack):
    panel.show_tensor("logits")
    panel.region_item.sigRegionChangeFinished.emit(panel.region_item)
    assert not stack.can_undo


def send_mouse(widget, kind, pos, buttons):
    button = Qt.NoButton if kind == QEvent.MouseMove else Qt.LeftButton
    event = QMouseEvent(kind, QPointF(pos), QPointF(widget.mapToGlobal(pos)), button, buttons, Qt.NoModifier)
    QApplication.sendEvent(widget, event)


def test_real_mouse_drag_of_a_handle(panel, project, stack):
    """Mouse events on the viewport, as a user drags the upper handle (QTest's mouseMove
    carries no pressed buttons, so the events are built by hand)."""
    panel.show_tensor("conv2_out")
    lo, hi = panel.region()
    view = panel.plot.getViewBox()

    def to_viewport(x):
        _, (y0, y1) = view.viewRange()
        return panel.plot.mapFromScene(view.mapViewToScene(QPointF(x, 0.5 * (y0 + y1))))

    start, end = to_viewport(hi), to_viewport(hi * 0.6)
    viewport = panel.plot.viewport()
    send_mouse(viewport, QEvent.MouseButtonPress, start, Qt.LeftButton)
    for i in range(1, 6):
        send_mouse(viewport, QEvent.MouseMove, start + (end - start) * (i / 5), Qt.LeftButton)
        if i == 3:
            assert not stack.can_undo and "preview" in panel.preview.text()  # still dragging
    send_mouse(viewport, QEvent.MouseButtonRelease, end, Qt.NoButton)
    assert stack.can_undo
    new_lo, new_hi = panel.region()
    step = project.encoding("conv2_out").scale[0]
    assert new_lo == pytest.approx(lo, abs=step) and hi * 0.5 < new_hi < hi * 0.7  # snapping nudges lo
    assert (new_lo, new_hi) == pytest.approx(bounds(project.encoding("conv2_out")))


def test_failed_edit_is_reported_and_region_restored(panel, stack, messages, monkeypatch):
    panel.show_tensor("logits")
    before = panel.region()

    def refuse(command):
        raise ValueError("logits: refused for the test")

    monkeypatch.setattr(stack, "push", refuse)
    panel.region_item.setRegion((before[0] * 0.5, before[1] * 0.5))
    assert messages and messages[-1][0] == "error" and "refused" in messages[-1][2]
    assert panel.region() == pytest.approx(before)


def test_log_scale(panel, project):
    check = child(panel, QCheckBox, "logScaleCheck")
    panel.show_tensor("relu1_out")
    counts = project.stats["relu1_out"].counts
    check.setChecked(True)
    shown = panel.display_data()[1]  # display bins, not the 2048 of the statistics
    assert len(shown) <= 400 and shown.sum() == pytest.approx(counts.sum())
    np.testing.assert_allclose(panel.curve.yData, np.log10(1 + shown))
    np.testing.assert_array_equal(panel.histogram_data()[1], counts)  # the data, not the drawing
    assert panel.plot.getViewBox().viewRange()[1][1] <= np.log10(1 + shown.max()) * 1.1
    check.setChecked(False)
    np.testing.assert_array_equal(panel.curve.yData, shown)


def test_relu_zero_spike_is_drawn_and_labelled(panel, project):
    """A Relu's zeros: log scale is chosen for it, the spike is a visible bar with its share; on the
    linear axis the user picks, it runs off the top and the rest stays readable."""
    panel.show_tensor("relu1_out")
    check = child(panel, QCheckBox, "logScaleCheck")
    assert check.isChecked() and "Chosen for this tensor" in check.toolTip()
    stats = project.stats["relu1_out"]
    zeros = float((stats.counts[:1]).sum()) / stats.counts.sum()
    label = panel.spike_labels[0]
    assert label.isVisible() and label.toPlainText().startswith("0: ")
    assert f"{100 * zeros:.1f}%" in label.toPlainText()
    assert list(panel.spike_bars.opts["x"]) == [0.0] and panel.spike_bars.opts["height"][0] > 0
    box = panel.plot.getViewBox().sceneBoundingRect()
    assert box.contains(label.sceneBoundingRect())  # beside the spike at the left edge, not cut off
    check.setChecked(False)  # the user's choice wins from now on
    top = panel.plot.getViewBox().viewRange()[1][1]
    assert top < panel.display_data()[1].max() / 2  # the rest of the histogram stays visible
    assert "runs off the top" in child(panel, QLabel, "histogramInfo").text()
    assert box.contains(label.sceneBoundingRect())
    panel.show_tensor("conv2_out")
    assert not check.isChecked()  # still the user's choice


def test_grid_only_where_sparse_and_tails_shaded(panel, project, stack):
    panel.show_tensor("fc.weight")  # the targets run 4-bit weights (not activations)
    stack.push(EditTensors(["fc.weight"], bw=4, per_channel=False))
    enc = project.encoding("fc.weight")
    xs = np.unique(panel.grid.xData)
    assert 0 < len(xs) <= 16
    np.testing.assert_allclose(xs, (np.arange(16) + enc.offset[0])[: len(xs)] * enc.scale[0] + 0 * xs)
    stack.undo()
    panel.show_tensor("conv2_out")
    assert panel.grid.xData is None or len(panel.grid.xData) == 0  # 256 lines: too dense
    # Zooming in far enough shows the 8-bit grid.
    lo, _ = panel.region()
    panel.plot.setXRange(lo, lo + 20 * project.encoding("conv2_out").scale[0], padding=0)
    assert 0 < len(np.unique(panel.grid.xData)) <= 64
    # A narrow range clips both tails, shaded with exactly the counts outside it.
    stack.push(EditTensors(["conv2_out"], range=(-1.0, 1.0)))
    enc = project.encoding("conv2_out")
    edges, counts = panel.display_data()  # the tails sit on the bins drawn
    left = counts[edges[:-1] < enc.min[0]]
    np.testing.assert_array_equal(panel.tails[0].yData, left)
    assert panel.tails[0].xData[-1] == pytest.approx(enc.min[0])
    assert panel.tails[1].yData.sum() == counts[edges[1:] > enc.max[0]].sum()


def test_per_channel_weight(panel, project):
    spin = child(panel, QSpinBox, "channelSpin")
    channel_plot = child(panel, pg.PlotWidget, "channelPlot")
    panel.show_tensor("logits")
    assert not channel_plot.isVisible() and not spin.isVisible()

    panel.show_tensor("conv1.weight")
    weights = project.index.initializer("conv1.weight")
    enc = project.encoding("conv1.weight")
    assert enc.axis == 0 and len(enc.scale) == 4
    assert channel_plot.isVisible() and spin.isVisible()
    assert (spin.minimum(), spin.maximum(), spin.value()) == (-1, 3, -1)
    assert len(panel.obs_min.xData) == 4
    np.testing.assert_allclose(panel.obs_min.yData, weights.reshape(4, -1).min(axis=1))
    np.testing.assert_allclose(panel.obs_max.yData, weights.reshape(4, -1).max(axis=1))
    np.testing.assert_allclose(panel.enc_max.yData, enc.max)
    assert panel.histogram_data()[1].sum() == weights.size
    assert not panel.region_item.movable  # the plan edits whole-tensor ranges only
    assert "exact" in child(panel, QLabel, "previewLabel").text()

    spin.setValue(2)
    edges, counts = panel.histogram_data()
    assert counts.sum() == weights[2].size
    assert edges[0] <= weights[2].min() and edges[-1] >= weights[2].max()
    assert panel.region() == pytest.approx((enc.min[2], enc.max[2]))
    assert "channel 2" in child(panel, QLabel, "histogramInfo").text()
    assert panel.channel_marker.isVisible() and panel.channel_marker.value() == 2

    panel.show_tensor("logits")  # another tensor starts on the whole-tensor view
    panel.show_tensor("conv1.weight")
    assert spin.value() == -1 and panel.histogram_data()[1].sum() == weights.size


def test_per_tensor_weight_is_draggable(panel, project, stack):
    stack.push(EditTensors(["fc.weight"], per_channel=False))
    panel.show_tensor("fc.weight")
    # its channels still show, under the one range drawn flat across them (what CLE evens out)
    assert child(panel, QSpinBox, "channelSpin").isVisible() and panel.channel_plot.isVisible()
    enc = project.encoding("fc.weight")
    weights = project.index.initializer("fc.weight")
    assert len(panel.obs_max.yData) == weights.shape[0]
    np.testing.assert_allclose(panel.obs_max.yData, weights.max(axis=1))
    np.testing.assert_allclose(panel.enc_max.yData, np.full(weights.shape[0], enc.max[0]))
    assert panel.region_item.movable
    lo, hi = panel.region()
    panel.region_item.setRegion((lo * 0.5, hi * 0.5))
    assert project.plan.edit("fc.weight").range is not None
    assert panel.region() == pytest.approx(bounds(project.encoding("fc.weight")))


def test_float_tensor_has_no_handles(panel, stack):
    stack.push(EditTensors(["logits"], dtype="float"))
    panel.show_tensor("logits")
    assert panel.region() is None and not panel.region_item.isVisible()
    assert "kept in float16" in child(panel, QLabel, "histogramInfo").text()
    assert "float16 cast" in child(panel, QLabel, "previewLabel").text()
    assert panel.histogram_data()[1].sum() > 0
    stack.undo()  # back to int8: the handles come back
    assert panel.region() is not None


def test_not_calibrated_and_nonfinite(panel, project):
    info = child(panel, QLabel, "histogramInfo")
    panel.show_tensor("conv2_out")
    assert "NaN 3" in info.text() and "+Inf 1" in info.text() and "-Inf 1" in info.text()
    project.set_stats({"logits": TensorStats.of(np.array([np.nan, np.inf]))})
    panel.show_tensor("conv2_out")
    assert "not calibrated" in info.text()
    assert panel.histogram_data()[0].size == 0 and panel.region() is None
    assert panel.notice.isVisible()
    panel.show_tensor("logits")
    assert "not calibrated" in info.text() and "NaN 1" in info.text()
    panel.show_tensor(None)
    assert panel.histogram_data()[0].size == 0 and panel.region() is None
    panel.show_tensor("conv1.weight")
    panel.show_tensor("no_such_tensor")
    assert "not a tensor of this model" in info.text()
    assert not child(panel, pg.PlotWidget, "channelPlot").isVisible()


def test_refreshes_on_project_events(panel, project, stack):
    panel.show_tensor("conv1.bias")  # its encoding follows conv1.weight's scales
    before = child(panel, QLabel, "previewLabel").text()
    stack.push(EditTensors(["conv1.weight"], bw=4))
    assert child(panel, QLabel, "previewLabel").text() != before
    np.testing.assert_allclose(panel.enc_max.yData, project.encoding("conv1.bias").max)
    panel.show_tensor("logits")
    stack.push(EditTensors(["logits"], range=(-2.0, 2.0)))
    assert panel.region() == pytest.approx(bounds(project.encoding("logits")))
    rng = np.random.default_rng(5)
    project.set_stats({"logits": TensorStats.of(rng.standard_normal(100) * 50)})
    assert panel.histogram_data()[1].sum() == 100
    project.open_model(load_model(small_cnn(channels=3)))
    assert panel.tensor == "logits" and "not calibrated" in child(panel, QLabel, "histogramInfo").text()


def test_deleted_panel_stops_listening(qtbot, project, stack):
    panel = HistogramPanel(project, stack)
    panel.show_tensor("logits")
    shiboken6.delete(panel)
    stack.push(EditTensors(["logits"], bw=16))  # must not reach the deleted widget
    project.set_stats({})


def test_redraw_time_is_reported(qtbot, panel, project):
    """Selection change -> redraw of a 2048-bin histogram; printed, asserted by the benchmark."""
    names = ["conv2_out", "logits", "conv1.weight", "relu1_out", "sig_out"]
    assert all(project.stats[n].bins == 2048 for n in names if n in project.stats)
    for name in names:
        panel.show_tensor(name)
        QApplication.processEvents()
    times = []
    for _ in range(4):
        for name in names:
            start = time.perf_counter()
            panel.show_tensor(name)
            QApplication.processEvents()  # includes the repaint
            times.append((time.perf_counter() - start) * 1000)
    print(f"\nhistogram redraw (show_tensor + paint), 2048 bins: median {np.median(times):.1f} ms, "
          f"max {max(times):.1f} ms over {len(times)}")
    assert all(math.isfinite(t) for t in times)
