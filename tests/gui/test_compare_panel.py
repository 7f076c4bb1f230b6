"""The Compare panel: the window's encodings (A) against an encodings file (B), per tensor, sortable,
with what differs highlighted."""
from PySide6.QtCore import Qt

from qinspect.cli import main
from qinspect.gui.compare_panel import CHANGED, HEADERS
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
    assert "differ" in panel.findChild(object, "compareStatus").text()
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
