import pytest


@pytest.fixture
def window(qtbot, messages):
    """The main window on the bundled example; workers are stopped before the next test."""
    from qinspect.gui import create_main_window

    w = create_main_window()
    qtbot.addWidget(w)
    yield w
    w.cancel()
    w.wait_for_jobs(10_000)
