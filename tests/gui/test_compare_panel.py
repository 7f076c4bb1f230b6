"""The Compare panel: the window's encodings (A) against an encodings file (B), per tensor, sortable,
with what differs highlighted, B's own model, and the selected row's values with both ranges."""
import json

import numpy as np
import onnx
from onnx import numpy_helper
from PySide6.QtCore import Qt

from qinspect.cli import main
from qinspect.core.quant.stats import TensorStats
from qinspect.gui.compare_panel import CHANGED, HEADERS
from qinspect.gui.histogram_display import rebin
from qinspect.gui.main_window import EXAMPLE_DATA, EXAMPLE_MODEL

WAIT = 60_000


def test_compare_with_a_file_shows_both_and_marks_the_differences(qtbot, window, tmp_path):
    b = tmp_path / "b.json"
    assert main(["calibrate", str(EXAMPLE_MODEL), "--data", str(EXAMPLE_DATA), "-o", str(b), "--act-bw", "16",
                 "-q"]) == 0
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT):
        assert window.calibrate(str(EXAMPLE_DATA))
    panel = window.compare
    assert window.findChild(object, "comparePanel") is not None
    with qtbot.waitSignal(panel.compared, timeout=WAIT) as done:
        assert panel.compare_with(b, samples=16)
    assert done.args == [True]
    rows = {t.name: t for t in panel.result.tensors}
    assert rows["conv1_relu_out"].a.bw == 8 and rows["conv1_relu_out"].b.bw == 16
    status = panel.findChild(object, "compareStatus").text()
    assert "differ" in status
    f, ta, tb = panel.result.accuracy  # the example's data have labels: both top-1s and the float one
    assert f"top-1 A {ta:.1%}, B {tb:.1%} (float {f:.1%})" in status and 0.5 < tb <= 1
    model = panel.model
    names = [model.item(r, 0).text() for r in range(model.rowCount())]
    r = names.index("conv1_relu_out")
    assert model.item(r, HEADERS.index("B encoding")).background().color() == CHANGED
    w = names.index("conv1.weight")  # weights are 8-bit in both: not marked
    assert model.item(w, HEADERS.index("B encoding")).background().color() != CHANGED
    table = panel.findChild(object, "compareTable")
    table.sortByColumn(HEADERS.index("Change dB"), Qt.DescendingOrder)
    assert table.model().rowCount() == len(names)


def test_compare_needs_a_calibration_and_a_readable_file(qtbot, window, messages, tmp_path):
    assert not window.compare.compare_with(tmp_path / "missing.json")
    assert messages and "Calibrate" in messages[-1][2]
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT):
        assert window.calibrate(str(EXAMPLE_DATA))
    (tmp_path / "bad.json").write_text("{}")
    assert not window.compare.compare_with(tmp_path / "bad.json")
    assert "bad.json" in messages[-1][2]


def test_the_compare_panel_alone_at_the_bottom_is_sized_like_the_others(qtbot, window):
    """The bottom panels' sizing takes whichever is open: the Compare panel too."""
    window.show()
    for dock in (window.graph_dock, window.sensitivity_dock, window.pareto_dock):
        dock.hide()
    window._show_dock(window.compare_dock)
    qtbot.waitUntil(window.compare_dock.isVisible, timeout=5000)
    assert window._bottom_dock() is window.compare_dock


# --- B's model and the selected row's plot -------------------------------------------------------
MOVED = "conv2.weight"


def _calibrated(qtbot, window):
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT):
        assert window.calibrate(str(EXAMPLE_DATA))


def _file(tmp_path, *extra, name="b.json", model=EXAMPLE_MODEL):
    path = tmp_path / name
    assert main(["calibrate", str(model), "--data", str(EXAMPLE_DATA), "-o", str(path), "-q", *extra]) == 0
    return path


def _compare(qtbot, panel, path, **kw):
    with qtbot.waitSignal(panel.compared, timeout=WAIT) as done:
        assert panel.compare_with(path, samples=16, **kw)
    return done.args == [True]


def _drawn(panel, side):
    x, y = panel.plot.curves[side].getData()  # (None, None) when empty
    return np.asarray(x if x is not None else []), np.asarray(y if y is not None else [])


def test_a_selected_row_shows_its_histogram_and_both_ranges_where_the_encodings_put_them(qtbot, window, tmp_path):
    b = _file(tmp_path, "--act-bw", "16", "--scheme", "percentile", "--percentile", "99.9")
    doc = json.loads(b.read_text())  # and one activation kept in float16 in B
    doc["activation_encodings"]["conv2_relu_out"] = [{"bitwidth": 16, "dtype": "float"}]
    b.write_text(json.dumps(doc))
    _calibrated(qtbot, window)
    panel = window.compare
    assert _compare(qtbot, panel, b)
    rows = {t.name: t for t in panel.result.tensors}
    plot = panel.plot
    assert window.findChild(object, "compareHistogram") is plot.plot

    assert panel.select("conv1_relu_out")
    row = rows["conv1_relu_out"]
    assert plot.tensor == "conv1_relu_out"
    assert plot.ranges() == {"A": (row.a.min, row.a.max), "B": (row.b.min, row.b.max)}
    assert row.a.max != row.b.max  # a percentile range in B: two spans, not one drawn twice
    for span in plot.spans.values():
        assert span in plot.plot.getPlotItem().items and span.isVisible()
    assert plot.legend_texts()[0].startswith("A [") and plot.legend_texts()[0].endswith("8-bit")
    assert plot.legend_texts()[1].endswith("16-bit")
    stats = window.project.stats["conv1_relu_out"]
    edges, counts = plot.histogram_data()["A"]
    np.testing.assert_array_equal(counts, stats.counts)
    np.testing.assert_array_equal(edges, stats.edges)
    x, y = _drawn(panel, "A")
    want = rebin(stats, x)
    np.testing.assert_allclose(y, np.log10(1 + want) if plot.log_check.isChecked() else want)
    assert len(_drawn(panel, "B")[1]) == 0  # one model: one histogram

    assert panel.select("conv2_relu_out")  # B keeps it in float16: no range, the legend says so
    assert plot.ranges()["B"] is None and plot.ranges()["A"] == (rows["conv2_relu_out"].a.min,
                                                                  rows["conv2_relu_out"].a.max)
    assert "float16" in plot.legend_texts()[1]

    assert panel.select(MOVED)  # a per-channel weight: its values, the envelope of the channels
    row = rows[MOVED]
    values = window.project.index.initializer(MOVED)
    assert plot.ranges()["A"] == (row.a.min, row.a.max) == (float(window.project.encoding(MOVED).min.min()),
                                                            float(window.project.encoding(MOVED).max.max()))
    assert "per channel" in plot.legend_texts()[0]
    np.testing.assert_array_equal(plot.histogram_data()["A"][1], TensorStats.of(values).counts)
    assert "B" not in plot.histogram_data()

    table = panel.findChild(object, "compareTable")  # a re-sort keeps the row and its plot
    for column, order in ((0, Qt.DescendingOrder), (HEADERS.index("B SQNR"), Qt.AscendingOrder)):
        table.sortByColumn(column, order)
        assert panel.selected() == plot.tensor == MOVED

    with qtbot.waitSignal(panel.compared, timeout=WAIT):  # a new comparison starts from an empty plot
        assert panel.compare_with(b, samples=16)
        assert plot.tensor is None and plot.ranges() == {"A": None, "B": None}
    assert panel.selected() is None


def _moved_model(tmp_path, factor=1.5):
    model = onnx.load(str(EXAMPLE_MODEL))
    for i, t in enumerate(model.graph.initializer):
        if t.name == MOVED:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, MOVED))
    path = tmp_path / "finetuned.onnx"
    onnx.save(model, str(path))
    return path, numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == MOVED))


def test_b_with_its_own_model_measures_and_draws_its_own_weights(qtbot, window, tmp_path):
    b = _file(tmp_path)  # A's ranges, as a QAT run that froze them would leave them
    b_model, moved = _moved_model(tmp_path)
    _calibrated(qtbot, window)
    panel = window.compare
    assert _compare(qtbot, panel, b)  # on A's model first: the weight's error is A's
    plain = {t.name: t for t in panel.result.tensors}[MOVED]
    assert abs(plain.b.sqnr_db - plain.a.sqnr_db) < 0.1

    assert _compare(qtbot, panel, b, model=b_model)
    row = {t.name: t for t in panel.result.tensors}[MOVED]
    assert row.b.sqnr_db < row.a.sqnr_db - 3 and "sqnr" in row.changed  # B's weights run past A's range
    names = [panel.model.item(r, 0).text() for r in range(panel.model.rowCount())]
    assert panel.model.item(names.index(MOVED), HEADERS.index("B SQNR")).background().color() == CHANGED
    assert "finetuned.onnx" in panel.status.text()
    assert "finetuned.onnx" in panel.findChild(object, "compareModelLabel").text()

    assert panel.select(MOVED)
    data = panel.plot.histogram_data()
    np.testing.assert_array_equal(data["B"][1], TensorStats.of(moved).counts)
    np.testing.assert_array_equal(data["A"][1], TensorStats.of(window.project.index.initializer(MOVED)).counts)
    (xa, ya), (xb, yb) = _drawn(panel, "A"), _drawn(panel, "B")
    assert len(yb) == len(ya) > 0 and np.array_equal(xa, xb)  # overlaid on one set of bins
    assert xb[-1] >= moved.max() and not np.allclose(ya, yb)
    assert panel.plot.ranges()["B"] == (row.b.min, row.b.max)

    assert panel.select("conv1.weight")  # a weight the fine-tuning left alone: one histogram
    assert "B" not in panel.plot.histogram_data() and "same values" in panel.plot.info.text()

    # after the moved weight, B's model's activations differ: histogrammed on the comparison's samples
    assert panel.select("conv2_relu_out")
    data = panel.plot.histogram_data()
    a_stats = window.project.stats["conv2_relu_out"]
    b_count = panel.result.samples * 32 * 8 * 8  # samples x the tensor's values per sample
    assert "B" in data and data["B"][1].sum() == b_count and data["A"][1].sum() == a_stats.count
    assert data["B"][0][-1] != data["A"][0][-1]  # the moved weight changed the activation's range
    if panel.plot.log_check.isChecked():
        panel.plot.log_check.click()  # linear counts, to add them up
    (_, ya), (_, yb) = _drawn(panel, "A"), _drawn(panel, "B")
    assert abs(yb.sum() - ya.sum()) < 1e-6 * ya.sum()  # B scaled to A's count: the shapes compare
    assert "B's model's outlined" in panel.plot.info.text()


def test_a_b_model_that_cannot_be_used_is_said_and_the_panel_keeps_working(qtbot, window, messages, tmp_path):
    b = _file(tmp_path)
    _calibrated(qtbot, window)
    panel = window.compare

    assert not panel.compare_with(b, model=tmp_path / "missing.onnx")
    assert "missing.onnx" in messages[-1][2] and "B model" in messages[-1][2]

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model at all" * 10)
    assert not _compare(qtbot, panel, b, model=garbage)  # read in the worker: its error comes back as a message
    level, title, text = messages[-1]
    assert "garbage.onnx" in text and "re-export" in text and "\n" not in text
    assert "garbage.onnx" in panel.status.text()

    other = EXAMPLE_MODEL.with_name("digits_mobile.onnx")  # reads, but names none of the file's tensors
    assert not _compare(qtbot, panel, b, model=other)
    text = messages[-1][2]
    assert "digits_mobile.onnx" in text and "b.json" in text and "not in the model" in text
    assert "Error:" not in text  # a user's mistake, said as one; not an exception's name

    count = len(messages)
    assert _compare(qtbot, panel, b)  # and without a model it works as before
    assert len(messages) == count
    assert panel.b_model is None and "window" in panel.findChild(object, "compareModelLabel").text()
    assert panel.select("conv1_relu_out") and panel.plot.ranges()["A"] is not None


def test_b_can_be_a_saved_session_with_its_own_ptq_model(qtbot, window, messages, tmp_path):
    """Two sessions side by side: B = a session whose CLE step rescaled its weights."""
    session = tmp_path / "cle.qinspect"
    assert main(["calibrate", str(EXAMPLE_MODEL), "--data", str(EXAMPLE_DATA), "--ptq", "cle", "--session",
                 str(session), "-o", str(tmp_path / "cle.json"), "-q"]) == 0
    with qtbot.waitSignal(window.calibrationFinished, timeout=WAIT):
        assert window.calibrate(str(EXAMPLE_DATA))
    panel = window.compare
    with qtbot.waitSignal(panel.compared, timeout=WAIT) as done:
        assert panel.compare_with(session, samples=16)
    assert done.args == [True]
    rows = {t.name: t for t in panel.result.tensors}
    assert {"range", "scale"} & set(rows["conv1.weight"].changed)  # CLE's weights, from B's own model
    assert not rows["conv1_relu_out"].changed or rows["conv1_relu_out"].b.sqnr_db is not None
    assert not panel.compare_with(session, model=str(EXAMPLE_MODEL))
    assert "a session brings its own model" in messages[-1][2]
    other = tmp_path / "cpu.qinspect"
    assert main(["calibrate", str(EXAMPLE_MODEL), "--data", str(EXAMPLE_DATA), "--target", "ort-cpu",
                 "--session", str(other), "-q"]) == 0
    with qtbot.waitSignal(panel.compared, timeout=WAIT) as done:
        assert panel.compare_with(other, samples=16)
    assert done.args == [False] and "for target ort-cpu" in messages[-1][2]


def test_b_can_be_the_model_before_the_last_ptq_step(qtbot, window, messages):
    """Before/after a PTQ step, without saving anything: B is the model before CLE, its statistics, the
    current plan."""
    _calibrated(qtbot, window)
    panel = window.compare
    button = panel.findChild(object, "compareBeforeButton")
    assert not button.isEnabled() and not panel.compare_with_before()
    assert "No PTQ step applied yet" in messages[-1][2]
    before_index = window.project.index
    with qtbot.waitSignal(window.ptqFinished, timeout=WAIT) as done:
        assert window.run_ptq_step("cle")
    assert done.args == [True] and button.isEnabled()
    with qtbot.waitSignal(panel.compared, timeout=WAIT) as done:
        button.click()
    assert done.args == [True]
    assert "B = before cross-layer equalization" in panel.status.text()
    rows = {t.name: t for t in panel.result.tensors}
    assert {"range", "scale"} & set(rows["conv1.weight"].changed)  # CLE rescaled conv1's weights
    assert panel.select("conv1.weight")
    data = panel.plot.histogram_data()
    np.testing.assert_array_equal(data["B"][1], TensorStats.of(before_index.initializer("conv1.weight")).counts)
    assert panel.select("conv1_relu_out") and "B" in panel.plot.histogram_data()  # before's statistics
    window.stack.undo()
    assert not button.isEnabled()
