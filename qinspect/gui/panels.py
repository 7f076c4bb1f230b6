"""The window's bottom panels (graph, sensitivity, mixed precision, compare): built as docks tabbed
together, shown or toggled from the View menu, and given a share of the window's height until the
user drags their edge."""
from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QDockWidget

from .compare_panel import ComparePanel
from .graph_panel import GraphPanel
from .pareto_panel import ParetoPanel
from .sensitivity_panel import SensitivityPanel

DOCK_SHARE = 0.38  # of the window's height for the bottom panels
DOCK_MIN = 260     # px


class PanelsMixin:
    """Mixed into MainWindow; uses its project, stack, _start, live_error and _select_tensors."""

    def _build_panels(self) -> None:
        self.graph_panel = GraphPanel(self.project)
        self.graph = self.graph_panel.view
        self.sensitivity = SensitivityPanel(self.project, self.stack, self._start)
        self.pareto = ParetoPanel(self.project, self.stack, self._start)
        self.compare = ComparePanel(self.project, self._start)
        docks = []
        for widget, name, title in ((self.graph_panel, "graphDock", "Graph"),
                                    (self.sensitivity, "sensitivityPanel", "Sensitivity"),
                                    (self.pareto, "paretoPanel", "Mixed precision"),
                                    (self.compare, "comparePanel", "Compare")):
            dock = QDockWidget(title, self)
            dock.setObjectName(name)
            dock.setWidget(widget)
            dock.setAllowedAreas(Qt.AllDockWidgetAreas)
            self.addDockWidget(Qt.BottomDockWidgetArea, dock)
            docks.append(dock)
        self.bottom_docks = docks
        self.graph_dock, self.sensitivity_dock, self.pareto_dock, self.compare_dock = docks
        self.tabifyDockWidget(self.graph_dock, self.sensitivity_dock)
        self.tabifyDockWidget(self.sensitivity_dock, self.pareto_dock)
        self.tabifyDockWidget(self.pareto_dock, self.compare_dock)
        self.graph_dock.raise_()
        self._dock_height: int | None = None  # the bottom panels' height as `_size_docks` left it
        self._docks_user_sized = False
        self.live_error.updated.connect(self._on_error_updated)
        self.graph.tensorsSelected.connect(self._select_tensors)
        self.sensitivity.tensorsActivated.connect(self._select_tensors)

    def _show_dock(self, dock) -> None:
        dock.show()
        dock.raise_()

    def _toggle_dock(self, dock) -> None:
        """Show a closed panel, bring one behind a tab to the front, hide one in front."""
        if dock.isHidden() or dock.visibleRegion().isEmpty():  # closed, or behind another tab
            self._show_dock(dock)
        else:
            dock.hide()
        self._dock_actions[dock].setChecked(not dock.isHidden())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._size_docks()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        QTimer.singleShot(0, self._size_docks)  # docks are visible (measurable) from now on

    def _size_docks(self) -> None:
        """The bottom panels take a share of the window's height (more room for the graph on a big
        screen) until the user drags their edge; from then on their height is the user's."""
        dock = self._bottom_dock()
        if dock is None or self._docks_user_sized:
            return
        if self._dock_height is not None and abs(dock.height() - self._dock_height) > 4:
            self._docks_user_sized = True
            return
        self.resizeDocks([dock], [max(DOCK_MIN, int(self.height() * DOCK_SHARE))], Qt.Vertical)
        QTimer.singleShot(0, self._note_dock_height)  # the layout applies it later

    def _note_dock_height(self) -> None:
        dock = self._bottom_dock()
        self._dock_height = dock.height() if dock is not None else None

    def _bottom_dock(self):
        for dock in self.bottom_docks:
            if dock.isVisible() and not dock.isFloating() and self.dockWidgetArea(dock) == Qt.BottomDockWidgetArea:
                return dock
        return None
