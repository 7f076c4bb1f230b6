import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QFontMetrics
from PySide6.QtWidgets import QApplication

from qinspect.core.commands import CommandStack, EditTensors
from qinspect.core.project import Project
from qinspect.core.quant.stats import TensorStats
from qinspect.gui.tensor_table import (
    BW,
    CLIPPED,
    COLUMNS,
    ENC_MIN,
    MIN,
    NAME,
    SORT_ROLE,
    SQNR,
    TensorTable,
    TensorTableModel,
)
from tests.helpers import cnn_project
from tests.models import finish, small_cnn

# Observed ranges whose text order differs from their numeric order.
SPREADS = {"input": 10.0, "relu1_out": 2.0, "conv2_out": 25.0, "sig_out": 0.5, "logits": 300.0}


@pytest.fixture
def project(tmp_path):
    return cnn_project(tmp_path, 500, lambda i, n: SPREADS[n])


@pytest.fixture
def table(qtbot, project):
    widget = TensorTable(project)
    qtbot.addWidget(widget)
    widget.resize(1000, 400)
    widget.show()
    return widget


def view_names(table):
    proxy = table.proxy
    return [proxy.data(proxy.index(r, NAME)) for r in range(proxy.rowCount())]


def cell(model, name, column, role=Qt.DisplayRole):
    return model.data(model.index(model.row_of(name), column), role)


def test_one_row_per_target_with_columns(table, project):
    model = table.model
    assert model.rowCount() == len(project.index.targets)
    assert model.names() == list(project.index.targets)
    assert model.columnCount() == len(COLUMNS)
    assert table.view.objectName() == "tensorTable"
    assert cell(model, "conv1.weight", COLUMNS.index("Op")) == "Conv"
    assert cell(model, "conv1.weight", COLUMNS.index("Kind")) == "weight"
    assert cell(model, "input", COLUMNS.index("Shape")) == "N\u00d73\u00d78\u00d78"
    assert cell(model, "logits", BW) == "8"
    assert cell(model, "conv1.bias", BW) == "32"
    # Per-channel weights show the outer range and say so.
    assert "per-channel (4)" in cell(model, "conv1.weight", ENC_MIN)
    enc = project.encodings["conv1.weight"]
    assert cell(model, "conv1.weight", ENC_MIN, SORT_ROLE) == pytest.approx(enc.min.min())
    # Observed min of a weight comes from its values.
    assert cell(model, "fc.weight", MIN, SORT_ROLE) == pytest.approx(project.index.initializer("fc.weight").min())
    assert cell(model, "logits", SQNR) == ""


def test_min_sorts_numerically(table, project):
    table.view.sortByColumn(MIN, Qt.AscendingOrder)
    proxy = table.proxy
    keys = [proxy.data(proxy.index(r, MIN), SORT_ROLE) for r in range(proxy.rowCount())]
    assert keys == sorted(keys)
    texts = [proxy.data(proxy.index(r, MIN)) for r in range(proxy.rowCount())]
    assert texts != sorted(texts)  # text order would be wrong here, so this checks numeric sorting
    assert view_names(table)[0] == "logits"


def test_sort_keeps_the_selection_and_survives_new_stats(table, project):
    table.select(["sig_out", "fc.weight"])
    table.view.sortByColumn(MIN, Qt.DescendingOrder)
    assert set(table.selected_names()) == {"sig_out", "fc.weight"}
    order = view_names(table)
    project.set_stats(dict(project.stats), 500)
    assert view_names(table) == order
    assert set(table.selected_names()) == {"sig_out", "fc.weight"}
    table.view.sortByColumn(-1, Qt.AscendingOrder)  # back to graph order
    assert view_names(table) == list(project.index.targets)


def test_sqnr_column_and_sorting_with_gaps(table):
    model = table.model
    changed = []
    model.dataChanged.connect(lambda a, b, roles: changed.append((a.column(), b.column())))
    table.set_sqnr({"logits": 12.5, "relu1_out": 40.25})
    assert changed == [(SQNR, SQNR)]
    assert cell(model, "logits", SQNR) == "12.5"
    assert cell(model, "input", SQNR) == ""
    table.view.sortByColumn(SQNR, Qt.DescendingOrder)
    assert view_names(table)[:2] == ["relu1_out", "logits"]
    table.view.sortByColumn(SQNR, Qt.AscendingOrder)  # tensors without SQNR stay last either way
    assert view_names(table)[:2] == ["logits", "relu1_out"]


def test_text_op_and_kind_filters(table, qtbot):
    table.filter_edit.setText("CONV2")
    assert sorted(view_names(table)) == ["conv2.bias", "conv2.weight", "conv2_out"]
    table.filter_edit.clear()
    combo = table.op_combo
    assert combo.objectName() == "opTypeFilter"
    assert combo.itemText(0) == "All ops"
    assert {combo.itemText(i) for i in range(1, combo.count())} == {"Input", "Conv", "Relu", "Sigmoid", "Gemm"}
    combo.setCurrentText("Gemm")
    assert view_names(table) == ["fc.weight", "fc.bias", "logits"]
    table.kind_combo.setCurrentText("weight")
    assert view_names(table) == ["fc.weight"]
    table.filter_edit.setText("bias")
    assert view_names(table) == []
    table.clear_filters()
    assert len(view_names(table)) == table.model.rowCount()


def test_select_emits_names_in_view_order_and_scrolls(table, qtbot):
    table.view.sortByColumn(NAME, Qt.DescendingOrder)
    with qtbot.waitSignal(table.selectionChanged, timeout=2000) as blocker:
        table.select(["conv1.weight", "logits"])
    assert blocker.args == [["logits", "conv1.weight"]]
    assert table.selected_names() == ["logits", "conv1.weight"]
    current = table.view.currentIndex()  # the first name asked for
    assert table.proxy.data(table.proxy.index(current.row(), NAME)) == "conv1.weight"


def test_select_clears_a_filter_that_hides_the_tensor(table, qtbot):
    table.filter_edit.setText("conv")
    with qtbot.waitSignal(table.selectionChanged, timeout=2000):
        table.select(["logits"])
    assert table.filter_edit.text() == ""
    assert table.selected_names() == ["logits"]


def test_user_selection_emits_signal(table, qtbot):
    row = table.proxy.mapFromSource(table.model.index(table.model.row_of("sig_out"), 0)).row()
    with qtbot.waitSignal(table.selectionChanged, timeout=2000) as blocker:
        table.view.selectRow(row)
    assert blocker.args == [["sig_out"]]


def test_plan_edit_updates_only_its_rows(table, project):
    model = table.model
    stack = CommandStack(project)
    changed = []
    model.dataChanged.connect(lambda a, b, roles: changed.append((a.row(), b.row())))
    resets = []
    model.modelReset.connect(lambda: resets.append(1))
    stack.push(EditTensors(["logits"], bw=16))
    row = model.row_of("logits")
    assert changed == [(row, row)] and not resets
    assert cell(model, "logits", BW) == "16"
    assert cell(model, "logits", NAME, Qt.FontRole).bold()  # edited marker
    assert cell(model, "sig_out", NAME, Qt.FontRole) is None
    # An activation feeding a biased op also changes that op's bias (scale = input x weight).
    changed.clear()
    stack.push(EditTensors(["relu1_out"], bw=16))
    rows = {r for first, last in changed for r in range(first, last + 1)}
    assert rows == {model.row_of("relu1_out"), model.row_of("conv2.bias")}
    stack.undo()
    stack.undo()
    assert cell(model, "logits", BW) == "8"
    assert cell(model, "logits", NAME, Qt.FontRole) is None


def test_new_stats_reset_the_model_and_keep_the_selection(table, project, qtbot):
    table.select(["sig_out"])
    before = cell(table.model, "sig_out", MIN)
    stats = dict(project.stats)
    stats["sig_out"] = TensorStats.of(np.linspace(-7, 3, 100))
    with qtbot.waitSignal(table.model.modelReset, timeout=2000):
        project.set_stats(stats, 100)
    assert cell(table.model, "sig_out", MIN) == "-7" != before
    assert table.selected_names() == ["sig_out"]


def test_flags_clipping_and_nonfinite_values(table, project):
    model = table.model
    stats = dict(project.stats)
    bad = TensorStats.of(np.array([1.0, 2.0, np.nan, np.inf, 3.0]))
    stats["sig_out"] = bad
    project.set_stats(stats, 5)
    tip = cell(model, "sig_out", NAME, Qt.ToolTipRole)
    assert "sig_out" in tip and "1 NaN" in tip and "1 +Inf" in tip
    assert cell(model, "sig_out", NAME, Qt.BackgroundRole) is not None
    assert cell(model, "logits", NAME, Qt.BackgroundRole) is None
    assert cell(model, "logits", CLIPPED, Qt.BackgroundRole) is None
    CommandStack(project).push(EditTensors(["logits"], range=(-1.0, 1.0)))  # logits spread ~300
    assert cell(model, "logits", CLIPPED, SORT_ROLE) > 0.5
    assert cell(model, "logits", CLIPPED, Qt.BackgroundRole) is not None
    assert cell(model, "logits", CLIPPED, Qt.ForegroundRole) is not None
    assert "outside the encoding" in cell(model, "logits", NAME, Qt.ToolTipRole)


def test_float_dtype_shows_in_columns(table, project):
    CommandStack(project).push(EditTensors(["conv2_out"], dtype="float"))
    model = table.model
    assert cell(model, "conv2_out", COLUMNS.index("Dtype")) == "float"
    assert cell(model, "conv2_out", BW) == "16"
    assert cell(model, "conv2_out", ENC_MIN) == "float16"


def test_ctrl_f_focuses_the_filter(table, qtbot):
    table.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is table, timeout=2000)
    table.view.setFocus()
    qtbot.keyClick(table.view, Qt.Key_F, Qt.ControlModifier)
    qtbot.waitUntil(table.filter_edit.hasFocus, timeout=2000)


def test_a_deleted_table_stops_listening(qtbot, project):
    widget = TensorTable(project)
    widget.deleteLater()
    qtbot.waitUntil(lambda: not project._listeners, timeout=2000)
    CommandStack(project).push(EditTensors(["logits"], bw=16))  # must not touch the deleted model


def test_set_project_switches_models(table, tmp_path):
    other = Project()
    other.open_model(small_cnn(channels=2))
    table.set_project(other)
    assert table.model.rowCount() == len(other.index.targets)
    assert cell(table.model, "logits", MIN) == ""  # not calibrated yet
    assert cell(table.model, "logits", ENC_MIN) == ""


def big_model(layers: int) -> onnx.ModelProto:
    """A chain of `layers` Conv(1x1, bias) + Add(constant): five quantizer targets per layer."""
    nodes, inits = [], []
    x = "x"
    w = np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)
    for i in range(layers):
        inits += [numpy_helper.from_array(w * (1 + i % 7), f"w{i}"),
                  numpy_helper.from_array(np.full(2, 0.1 * (i % 5), np.float32), f"b{i}"),
                  numpy_helper.from_array(np.full((1, 2, 1, 1), i % 3, np.float32), f"c{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}"], name=f"conv{i}"),
                  helper.make_node("Add", [f"conv{i}", f"c{i}"], [f"add{i}"], name=f"add{i}")]
        x = f"add{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 2, 4, 4])], initializer=inits)
    return finish(graph)


def test_thousands_of_rows_are_computed_lazily(qtbot):
    p = Project()
    p.open_model(big_model(1000))
    assert len(p.index.targets) >= 5000
    rng = np.random.default_rng(1)
    base = rng.standard_normal(200)
    p.set_stats({n: TensorStats.of(base * (1 + i % 13)) for i, n in enumerate(p.index.activations())}, 200)
    widget = TensorTable(p)
    qtbot.addWidget(widget)
    widget.resize(900, 500)
    widget.show()
    model = widget.model
    assert model.rowCount() == len(p.index.targets)
    # Only the rows on screen are derived (when painted), not one per tensor.
    qtbot.waitUntil(lambda: len(model._cache) > 0, timeout=2000)
    assert len(model._cache) < 200
    p.set_stats(dict(p.stats), 200)  # a reset drops the cache and again derives only what is shown
    QApplication.processEvents()
    assert len(model._cache) < 200
    widget.filter_edit.setText("add99")
    assert {view_names(widget)[0], *view_names(widget)} >= {"add99", "add999"}
    widget.filter_edit.clear()
    widget.view.sortByColumn(MIN, Qt.DescendingOrder)
    keys = [widget.proxy.data(widget.proxy.index(r, MIN), SORT_ROLE) for r in range(0, widget.proxy.rowCount(), 97)]
    assert keys == sorted(keys, reverse=True)
    changed = []
    model.dataChanged.connect(lambda a, b, roles: changed.append((a.row(), b.row())))
    CommandStack(p).push(EditTensors(["add500"], bw=16))
    # Its row and the bias of the Conv it feeds (the table is sorted, so rows are anywhere).
    assert sorted(changed) == sorted((model.row_of(n), model.row_of(n)) for n in ("add500", "b501"))
    assert math.isfinite(cell(model, "add500", ENC_MIN, SORT_ROLE))


def test_model_without_project_is_empty(qtbot):
    model = TensorTableModel(None)
    assert model.rowCount() == 0 and model.op_types() == []


def test_columns_fit_their_values_and_keep_a_users_width(table, project, qtbot):
    header = table.view.horizontalHeader()
    metrics = table.view.fontMetrics()
    last = header.logicalIndex(header.count() - 1)  # stretches to the edge
    model = table.model
    for col in range(len(COLUMNS)):
        if col == last:
            continue
        texts = [COLUMNS[col]] + [model.data(model.index(r, col)) or "" for r in range(model.rowCount())]
        widest = max(metrics.horizontalAdvance(t) for t in texts)
        assert header.sectionSize(col) >= widest + 6, COLUMNS[col]  # never cut off ("…")
    # live SQNR arrives later: its column grows to fit
    table.set_sqnr({n: -123456.789 for n in project.index.targets})
    assert header.sectionSize(SQNR) >= metrics.horizontalAdvance(cell(model, "logits", SQNR)) + 6
    # an edit makes rows bold (wider): the name column grows to fit them when the error follows
    widest = {col: max(project.index.targets, key=lambda n: metrics.horizontalAdvance(cell(model, n, col) or ""))
              for col in (NAME, MIN)}
    EditTensors(sorted(set(widest.values())), symmetric=False).do(project)
    table.set_sqnr({n: 1.0 for n in project.index.targets})
    bold = QFont(table.view.font())
    bold.setBold(True)
    for col, name in widest.items():
        text = cell(model, name, col)
        assert header.sectionSize(col) >= QFontMetrics(bold).horizontalAdvance(text) + 6, COLUMNS[col]
    # a width the user chose survives new statistics
    header.resizeSection(ENC_MIN, 300)
    project.set_stats(dict(project.stats), 500)
    assert header.sectionSize(ENC_MIN) == 300
