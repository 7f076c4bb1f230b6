"""Start the desktop app."""
from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication

from .main_window import MainWindow


def create_main_window(model=None, encodings=None, session=None) -> MainWindow:
    """The main window, with a model, encodings file or session loaded; no event loop is started.

    With none of them, the bundled example model is opened so a new user sees a real model at once.
    """
    window = MainWindow()
    if session:
        window.open_session(session)
    elif model:
        window.open_model(model)
    else:
        window.open_example()
    if encodings:
        window.import_encodings(encodings)
    return window


def run(model=None, encodings=None, session=None) -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("qinspect")
    app.setOrganizationName("qinspect")
    window = create_main_window(model, encodings, session)
    window.show()
    if window.project.index is not None and not window.project.stats and window.project.data_spec is None:
        window.statusBar().showMessage("Press Ctrl+R to calibrate", 10000)
    return app.exec()
