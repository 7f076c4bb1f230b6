"""One place every user-facing message goes through, so tests can replace it and never hang on a
modal dialog."""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

# Tests set this to a function(level, title, text); the app leaves it None to show a dialog.
handler: Callable[[str, str, str], None] | None = None
# Tests set this to a function(title, text, choices) -> one of choices; the app asks with a dialog.
answerer: Callable[[str, str, tuple], str] | None = None

_ICONS = {"info": QMessageBox.Information, "warning": QMessageBox.Warning, "error": QMessageBox.Critical}


def notify(parent, level: str, title: str, text: str) -> None:
    """Tell the user something: level is "info", "warning" or "error"."""
    if handler is not None:
        handler(level, title, text)
        return
    box = QMessageBox(_ICONS.get(level, QMessageBox.Critical), title, text, QMessageBox.Ok, parent)
    box.setAttribute(Qt.WA_DeleteOnClose)
    box.open()  # window-modal but not blocking: the event loop and the workers' signals keep running


def ask(parent, title: str, text: str, choices=("Save", "Discard", "Cancel")) -> str:
    """Ask the user to choose; returns one of `choices` (the last one when the dialog is closed)."""
    choices = tuple(choices)
    if answerer is not None:
        return answerer(title, text, choices)
    roles = {"Save": QMessageBox.Save, "Discard": QMessageBox.Discard, "Cancel": QMessageBox.Cancel}
    box = QMessageBox(QMessageBox.Question, title, text, QMessageBox.NoButton, parent)
    buttons = {box.addButton(roles[c]) if c in roles else box.addButton(c, QMessageBox.AcceptRole): c
               for c in choices}
    box.exec()  # modal on purpose: the answer decides whether work is lost
    return buttons.get(box.clickedButton(), choices[-1])
