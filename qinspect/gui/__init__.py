"""PySide6 + pyqtgraph adapters over the Qt-free core."""


def create_main_window(model=None, encodings=None, session=None):
    """The main window (objectName ``MainWindow``) without starting an event loop; see gui.app."""
    from .app import create_main_window as create

    return create(model, encodings, session)
