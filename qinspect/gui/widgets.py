"""Small widgets the panels share."""
from __future__ import annotations

import html

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QLabel, QSizePolicy


def took(seconds: float) -> str:
    """A duration for a status message: "0.03 s" rather than "0.0 s" for quick jobs."""
    return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f} s"


class ElidedLabel(QLabel):
    """A one-line label that never makes its window wider: it shrinks to what is left and ends in "…",
    the whole text in its tooltip (a status bar's summary, a legend). Plain text only."""

    def __init__(self, text: str = "", parent=None, *, objectName: str = ""):
        super().__init__(text, parent)
        if objectName:
            self.setObjectName(objectName)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Preferred)  # its text when there is room
        self.setMinimumWidth(40)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(self.minimumWidth(), super().minimumSizeHint().height())

    def paintEvent(self, event) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.setPen(self.palette().color(self.foregroundRole()))
        rect = self.contentsRect()
        shown = self.fontMetrics().elidedText(self.text(), Qt.ElideRight, rect.width())
        painter.drawText(rect, int(self.alignment() | Qt.AlignVCenter), shown)


BREAKS = ("/", "_", ".", ",")  # where a long tensor name may wrap


def wrapped_tip(text: str) -> str:
    """Plain multi-line text as a tooltip that wraps: Qt wraps rich text tooltips only, and
    tensor names wrap only where a zero-width space allows it."""
    text = html.escape(text)
    for mark in BREAKS:
        text = text.replace(mark, mark + "\u200b")
    return "<qt>" + text.replace("\n", "<br>") + "</qt>"
