"""One place every user-facing message goes through, so tests can replace it and never hang on a
modal dialog."""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

# Tests set this to a function(level, title, text); the app leaves it None to show a dialog.
handler: Callable[[str, str, str], None] | None = None

_ICONS = {"info": QMessageBox.Information, "warning": QMessageBox.Warning, "error": QMessageBox.Critical}


def notify(parent, level: str, title: str, text: str) -> None:
    """Tell the user something: level is "info", "warning" or "error"."""
    if handler is not None:
        handler(level, title, text)
        return
    box = QMessageBox(_ICONS.get(level, QMessageBox.Critical), title, text, QMessageBox.Ok, parent)
    box.setAttribute(Qt.WA_DeleteOnClose)
    box.open()  # window-modal but not blocking: the event loop and the workers' signals keep running
