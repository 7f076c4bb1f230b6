"""`GraphPanel`: the graph view with its find box, colour thresholds, legend and Fit button."""
from __future__ import annotations

import shiboken6
from PySide6.QtCore import QStringListModel, Qt
from PySide6.QtGui import QColor, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCompleter,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .events import listen
from .graph_scene import AMBER, GREEN, GREEN_ABOVE, RED, RED_BELOW
from .graph_view import GraphView
from .widgets import ElidedLabel


def _swatch(colour: QColor, text: str) -> QLabel:
    return QLabel(f"<span style='color:{colour.darker(130).name()}'>■</span> {text}")


class GraphPanel(QWidget):
    """The graph view with a find box, the colour scale's thresholds, a one-line legend and a Fit
    button (objectName ``graphPanel``)."""

    def __init__(self, project, parent=None):
        super().__init__(parent)
        self.setObjectName("graphPanel")

        self.view = GraphView(project, self)
        self.find_edit = QLineEdit(objectName="graphFind", placeholderText="Find node…", clearButtonEnabled=True)
        self.find_edit.setToolTip("Type part of a node's name and press Enter (Ctrl+F in the graph)")
        self.find_edit.setMaximumWidth(220)
        self._names = QStringListModel(self)
        completer = QCompleter(self._names, self)
        completer.setCaseSensitivity(Qt.CaseInsensitive)
        completer.setFilterMode(Qt.MatchContains)
        completer.activated.connect(self._find)
        self.find_edit.setCompleter(completer)
        self.find_edit.returnPressed.connect(lambda: self._find(self.find_edit.text()))
        self.red_below = self._threshold("graphRedBelow", RED_BELOW, "Red under this SQNR (dB)")
        self.green_above = self._threshold("graphGreenAbove", GREEN_ABOVE, "Green from this SQNR (dB) up")
        # The scale reads as one line: ■ red < [20 dB] ≤ ■ amber < [35 dB] ≤ ■ green
        self.legend = ElidedLabel(objectName="graphLegend")  # grey nodes; a failed find
        fit = QPushButton("Fit (F)", objectName="graphFitButton")
        fit.clicked.connect(self.view.fit)
        bar = QHBoxLayout()
        bar.addWidget(self.find_edit)
        bar.addSpacing(8)
        bar.addWidget(_swatch(RED, "red &lt;"))
        bar.addWidget(self.red_below)
        bar.addWidget(_swatch(AMBER, "≤ amber &lt;"))
        bar.addWidget(self.green_above)
        bar.addWidget(_swatch(GREEN, "≤ green"))
        bar.addSpacing(8)
        bar.addWidget(self.legend, 1)
        bar.addWidget(fit)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.view, 1)
        layout.addLayout(bar)
        shortcut = QShortcut(QKeySequence.Find, self, context=Qt.WidgetWithChildrenShortcut)
        shortcut.activated.connect(self.find_edit.setFocus)
        listen(self, project, self._on_project)
        self.update_legend()

    def _threshold(self, name: str, value: float, tip: str) -> QDoubleSpinBox:
        box = QDoubleSpinBox(objectName=name, suffix=" dB", decimals=0, minimum=0.0, maximum=200.0, value=value)
        box.setToolTip(tip)
        box.valueChanged.connect(self._thresholds_changed)
        return box

    def _thresholds_changed(self) -> None:
        self.view.set_thresholds(self.red_below.value(), self.green_above.value())
        self.update_legend()

    def _find(self, text: str) -> None:
        if self.view.find(text) is None and text.strip():
            self.legend.setText(f"no node named like '{text.strip()}'")

    def _on_project(self, event: str, names) -> None:
        if event in ("model", "index") and shiboken6.isValid(self):
            self._names.setStringList([])
            self.find_edit.clear()
            self.update_legend()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.view.ensure_built()
        self._names.setStringList(self.view.node_names())

    def set_sqnr(self, sqnr: dict[str, float]) -> None:
        self.view.set_sqnr(sqnr)
        self.update_legend()

    def update_legend(self) -> None:
        self.legend.setText("grey: not measured")
        self.legend.setToolTip(self.view.legend)
