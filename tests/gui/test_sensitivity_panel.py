"""Sensitivity and mixed precision panels: run in workers, show results, apply as one undo step."""
import math

import pytest
from PySide6.QtCore import Qt

from qinspect.gui import create_main_window
from qinspect.gui.main_window import EXAMPLE_DATA
from qinspect.gui.sensitivity_panel import GROUP, SCORE

WAIT = 60_000


@pytest.fixture
def window(qtbot, messages):
    w = create_main_window()
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.errorUpdated, timeout=WAIT):
        assert w.calibrate(str(EXAMPLE_DATA))
    yield w
    w.cancel()
    w.wait_for_jobs(10_000)


def output_sqnr(window) -> float:
    return min(o.sqnr_db for o in window.live_error.comparison.outputs.values())


def ranked(qtbot, window):
    with qtbot.waitSignal(window.sensitivity.runFinished, timeout=WAIT) as done:
        window.actionRunSensitivity.trigger()
    assert done.args == [True]
    return window.sensitivity


def test_object_names_and_view_menu(qtbot, window):
    for name in ("sensitivityPanel", "sensitivityTable", "sensitivityPlot", "paretoPanel", "paretoPlot",
                 "graphView", "outputSqnrLabel", "actionShowGraph", "actionShowSensitivity", "actionShowPareto",
                 "actionRunSensitivity", "actionParetoSearch"):
        assert window.findChild(object, name) is not None, name
    window.show()
    qtbot.waitExposed(window)
    dock = window.findChild(object, "sensitivityPanel")
    action = window.findChild(object, "actionShowSensitivity")
    assert action.shortcut().toString() == "Ctrl+2"
    assert dock.visibleRegion().isEmpty()  # behind the graph's tab
    action.trigger()  # brings it to the front
    qtbot.waitUntil(lambda: not dock.visibleRegion().isEmpty(), timeout=5000)
    assert action.isChecked()
    action.trigger()  # hides it
    assert dock.isHidden() and not action.isChecked()
    action.trigger()
    assert dock.isVisible()


def test_ranking_table_plot_and_row_click(qtbot, window):
    panel = ranked(qtbot, window)
    entries = panel.entries
    assert entries and [e.score for e in entries] == sorted((e.score for e in entries), reverse=True)
    table = window.findChild(object, "sensitivityTable")
    model = table.model()
    assert model.rowCount() == len(entries)
    assert model.index(0, GROUP).data() == entries[0].group.name
    assert len(panel.bars.opts["width"]) == len(entries)
    # sortable: by score ascending puts the least sensitive first
    table.sortByColumn(SCORE, Qt.AscendingOrder)
    assert model.index(0, GROUP).data() == entries[-1].group.name
    # a click selects the group's tensors in the main table (and does not depend on the sort)
    table.clicked.emit(model.index(0, GROUP))
    assert set(window.table.selected_names()) == set(entries[-1].group.tensors)


def test_promote_top_k_is_one_undoable_edit_that_raises_the_output_sqnr(qtbot, window):
    panel = ranked(qtbot, window)
    before_sqnr = output_sqnr(window)
    before = dict(window.project.encodings)
    panel.k_spin.setValue(2)
    panel.precision_combo.setCurrentText("int16")
    top = [t for g in panel.top_groups() for t in g.tensors]
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        panel.promote_button.click()
    assert window.stack.undo_label == "promote top 2 to int16"
    assert all(window.project.encodings[t].bw in (16, 32) for t in top)
    assert output_sqnr(window) > before_sqnr + 1
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        window.actionUndo.trigger()  # one step takes all of it back
    assert window.project.encodings == before
    assert not window.stack.can_undo
    assert output_sqnr(window) == pytest.approx(before_sqnr)


def test_pareto_points_apply_as_undoable_plans(qtbot, window):
    panel = window.pareto
    with qtbot.waitSignal(panel.searchFinished, timeout=WAIT) as done:
        window.actionParetoSearch.trigger()
    assert done.args == [True]
    points = panel.points
    assert len(points) >= 2
    assert [p.cost for p in points] == sorted(p.cost for p in points)
    assert len(panel.scatter.points()) == len(points)
    assert panel._tip(0, 0, 1).startswith("<qt>" + points[1].label.replace(".", ".\u200b"))
    i = next(i for i, p in enumerate(points) if p.changes)
    before = dict(window.project.encodings)
    assert panel.apply_point(i)
    assert window.stack.undo_label.startswith("apply mixed precision")
    changed = [n for n in before if window.project.encodings[n] != before[n]]
    assert changed and set(changed) <= set(points[i].changes) | set(window.project.index.biases())
    window.actionUndo.trigger()
    assert window.project.encodings == before
    # the dearest point is the most accurate one, and clicking it on the plot applies it too
    last = len(points) - 1
    spot = panel.scatter.points()[last]
    panel.scatter.sigClicked.emit(panel.scatter, [spot], None)
    assert panel.applied == last
    with qtbot.waitSignal(window.errorUpdated, timeout=WAIT):
        pass
    finite = points[last].output_sqnr if math.isfinite(points[last].output_sqnr) else 1e9
    assert output_sqnr(window) >= min(finite, 200) - 3  # the live samples are the search's samples
    # the star marks the current plan: on the applied point
    x, y = panel.current.getData()
    assert x[0] == pytest.approx(points[last].cost) and y[0] == pytest.approx(output_sqnr(window))


def test_a_new_model_clears_stale_results(qtbot, window):
    panel = ranked(qtbot, window)
    assert panel.entries
    window.open_example()
    assert panel.entries == [] and not panel.promote_button.isEnabled()
    assert not panel.promote_top(1, "int16")


def test_a_long_pareto_tooltip_wraps_inside_the_window(qtbot, window):
    from dataclasses import replace

    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QApplication, QToolTip

    panel = window.pareto
    with qtbot.waitSignal(panel.searchFinished, timeout=WAIT):
        window.actionParetoSearch.trigger()
    long_names = ", ".join(f"/model/backbone/stage{i}/block_{i}/conv_{i}/Conv" for i in range(3))
    panel.points[0] = replace(panel.points[0], label=f"int8 + int16: {long_names} +12")
    window.resize(1000, 700)
    window.show()
    qtbot.waitExposed(window)
    QToolTip.showText(window.mapToGlobal(QPoint(900, 300)), panel._tip(0, 0, 0), window)
    tips = [w for w in QApplication.topLevelWidgets() if w.metaObject().className() == "QTipLabel" and w.isVisible()]
    assert tips
    one_line = tips[0].fontMetrics().horizontalAdvance(panel.points[0].label)
    # wrapped to a tooltip's width, not one line as wide as the window (Qt wraps plain text only at
    # the screen's width)
    assert tips[0].width() <= 360 < one_line / 2
    assert "stage2" in tips[0].text()
    QToolTip.hideText()
