"""The tensor table widget: a filter bar (name, op type, kind), `TensorFilterProxy` and the view.

The model, its column constants and cell styling live in `tensor_model`; the names other modules
import from here (the model, the column constants) are re-exported below.
"""
from __future__ import annotations

from PySide6.QtCore import QItemSelection, QItemSelectionModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from .tensor_model import (
    BW,
    CLIPPED,
    COLUMNS,
    DTYPE,
    ENC_MAX,
    ENC_MIN,
    KIND,
    MIN,
    NAME,
    OP,
    SORT_ROLE,
    SQNR,
    TensorTableModel,
)

__all__ = ["BW", "CLIPPED", "COLUMNS", "ENC_MIN", "MIN", "NAME", "SORT_ROLE", "SQNR", "TensorFilterProxy",
           "TensorTable", "TensorTableModel"]

FIT_ROWS = 50    # rows measured to size a column (each one derived: keep it lazy)
NAME_MAX = 320   # px: a longer name elides in the middle (its tooltip has it whole)


class TensorFilterProxy(QSortFilterProxyModel):
    """Filters by name text (case-insensitive), op type and kind, reading the source model's
    plain lists rather than data(), so filtering never computes cells."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self._op_type = ""
        self._kind = ""

    def set_filters(self, text: str | None = None, op_type: str | None = None, kind: str | None = None) -> None:
        if text is not None:
            self._text = text.strip().lower()
        if op_type is not None:
            self._op_type = op_type
        if kind is not None:
            self._kind = kind
        if hasattr(self, "endFilterChange"):  # Qt 6.10+; invalidateFilter is deprecated there
            self.beginFilterChange()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self.invalidateFilter()

    def sort(self, column: int, order=Qt.AscendingOrder) -> None:
        # The source model sorts itself with precomputed keys (see TensorTableModel.sort);
        # this proxy only filters, so its own sort column stays -1.
        self.sourceModel().sort(column, order)

    def filterAcceptsRow(self, source_row, source_parent) -> bool:
        model = self.sourceModel()
        if self._text and self._text not in model.name(source_row).lower():
            return False
        if self._op_type or self._kind:
            target = model.target(source_row)
            if self._op_type and target.op_type != self._op_type:
                return False
            if self._kind and target.kind != self._kind:
                return False
        return True


ALL_OPS = "All ops"
ALL_KINDS = "All kinds"


class TensorTable(QWidget):
    """Filter bar plus the table view. Emits `selectionChanged(names)` in view order."""

    selectionChanged = Signal(list)

    def __init__(self, project, parent=None):
        super().__init__(parent)
        self.model = TensorTableModel(project, self)
        self.proxy = TensorFilterProxy(self)
        self.proxy.setSourceModel(self.model)

        self.filter_edit = QLineEdit(objectName="tensorFilter", placeholderText="Filter tensors by name (Ctrl+F)")
        self.filter_edit.setClearButtonEnabled(True)
        self.op_combo = QComboBox(objectName="opTypeFilter")
        self.kind_combo = QComboBox(objectName="kindFilter")
        self.kind_combo.addItems([ALL_KINDS, "activation", "weight", "bias"])

        self.view = QTableView(objectName="tensorTable")
        self.view.setModel(self.proxy)
        self.view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.view.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.view.setWordWrap(False)
        self.view.setTextElideMode(Qt.ElideMiddle)  # long names keep their distinctive end
        self.view.setAlternatingRowColors(True)
        # Fixed row heights (QTableView's uniform rows): the view never measures every row.
        vheader = self.view.verticalHeader()
        vheader.setSectionResizeMode(QHeaderView.Fixed)
        vheader.setDefaultSectionSize(self.fontMetrics().height() + 6)
        vheader.hide()
        hheader = self.view.horizontalHeader()
        hheader.setSectionResizeMode(QHeaderView.Interactive)
        hheader.setStretchLastSection(True)
        hheader.resizeSection(NAME, 220)
        hheader.setSectionsMovable(True)
        # Column widths from a sample of rows (Qt's default measures 1000): cheap on big models.
        hheader.setResizeContentsPrecision(FIT_ROWS)
        self._user_sized: set[int] = set()
        self._fitting = False
        self._shown = False
        hheader.sectionResized.connect(self._on_section_resized)
        # Show what a user compares first (precision and error) before the raw numbers; the
        # model's column numbers stay as they are, only the visual order changes.
        for visual, column in enumerate((NAME, OP, KIND, BW, DTYPE, SQNR, CLIPPED, ENC_MIN, ENC_MAX)):
            hheader.moveSection(hheader.visualIndex(column), visual)
        # Start in graph order: sorting a big model by a column at startup would compute every row.
        hheader.setSortIndicator(-1, Qt.AscendingOrder)
        self.view.setSortingEnabled(True)

        bar = QHBoxLayout()
        bar.addWidget(self.filter_edit, 1)
        bar.addWidget(self.op_combo)
        bar.addWidget(self.kind_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.view)

        self.find_action = QAction("Find tensor", self, objectName="actionFindTensor")
        self.find_action.setShortcut(QKeySequence.Find)
        self.find_action.setShortcutContext(Qt.WindowShortcut)
        self.find_action.triggered.connect(self.focus_filter)
        self.addAction(self.find_action)

        self.filter_edit.textChanged.connect(lambda text: self.proxy.set_filters(text=text))
        self.op_combo.currentIndexChanged.connect(self._on_op_filter)
        self.kind_combo.currentIndexChanged.connect(self._on_kind_filter)
        self.view.selectionModel().selectionChanged.connect(self._emit_selection)
        self._kept: list[str] = []
        self.model.modelAboutToBeReset.connect(self._keep_selection)
        self.model.modelReset.connect(self._after_reset)
        self._fill_op_types()

    # --- public API -------------------------------------------------------------------------
    def set_project(self, project) -> None:
        self.model.set_project(project)

    def set_sqnr(self, sqnr: dict[str, float]) -> None:
        self.model.set_sqnr(sqnr)
        self.fit_columns()  # all: edited rows turn bold, and wider

    def fit_columns(self, columns=None) -> None:
        """Size columns to their header and (a sample of) their values, so nothing is cut off;
        a column the user resized keeps its width, the name column stops at `NAME_MAX` px."""
        hheader = self.view.horizontalHeader()
        self._fitting = True
        try:
            for col in range(len(COLUMNS)) if columns is None else columns:
                if col in self._user_sized or col == hheader.logicalIndex(hheader.count() - 1):
                    continue  # the last column stretches
                width = max(self.view.sizeHintForColumn(col), hheader.sectionSizeHint(col))
                hheader.resizeSection(col, min(width, NAME_MAX) if col == NAME else width)
        finally:
            self._fitting = False

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._shown:  # the first look: rows exist but no reset has fitted them yet
            self._shown = True
            self.fit_columns()

    def _on_section_resized(self, col: int, _old: int, _new: int) -> None:
        if not self._fitting:  # a user's drag (or the stretching last column, never fitted anyway)
            self._user_sized.add(col)

    def selected_names(self) -> list[str]:
        rows = sorted(i.row() for i in self.view.selectionModel().selectedRows())
        return [self.model.name(self.proxy.mapToSource(self.proxy.index(r, 0)).row()) for r in rows]

    def select(self, names: list[str]) -> None:
        """Select these tensors (clearing filters that hide them) and scroll to the first."""
        rows = [r for r in (self.model.row_of(n) for n in names) if r is not None]
        if any(not self.proxy.filterAcceptsRow(r, QModelIndex()) for r in rows):
            self.clear_filters()
        selection = QItemSelection()
        first = None
        for row in rows:
            index = self.proxy.mapFromSource(self.model.index(row, 0))
            if not index.isValid():
                continue
            if first is None:
                first = index
            selection.select(index, index)
        model = self.view.selectionModel()
        model.select(selection, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
        if first is not None:
            model.setCurrentIndex(first, QItemSelectionModel.NoUpdate)
            self.view.scrollTo(first)

    def clear_filters(self) -> None:
        for widget in (self.filter_edit, self.op_combo, self.kind_combo):
            widget.blockSignals(True)
        self.filter_edit.clear()
        self.op_combo.setCurrentIndex(0)
        self.kind_combo.setCurrentIndex(0)
        for widget in (self.filter_edit, self.op_combo, self.kind_combo):
            widget.blockSignals(False)
        self.proxy.set_filters(text="", op_type="", kind="")

    def focus_filter(self) -> None:
        self.filter_edit.setFocus(Qt.ShortcutFocusReason)
        self.filter_edit.selectAll()

    # --- internals --------------------------------------------------------------------------
    def _on_op_filter(self, i: int) -> None:
        self.proxy.set_filters(op_type="" if i <= 0 else self.op_combo.itemText(i))

    def _on_kind_filter(self, i: int) -> None:
        self.proxy.set_filters(kind="" if i <= 0 else self.kind_combo.itemText(i))

    def _fill_op_types(self) -> None:
        current = self.op_combo.currentText()
        self.op_combo.blockSignals(True)
        self.op_combo.clear()
        self.op_combo.addItem(ALL_OPS)
        self.op_combo.addItems(self.model.op_types())
        i = self.op_combo.findText(current)
        self.op_combo.setCurrentIndex(max(i, 0))
        self.op_combo.blockSignals(False)
        self._on_op_filter(self.op_combo.currentIndex())

    def _emit_selection(self, *_) -> None:
        self.selectionChanged.emit(self.selected_names())

    def _keep_selection(self) -> None:
        self._kept = self.selected_names()

    def _after_reset(self) -> None:
        # New statistics keep the user's selection; a new model drops names it does not have.
        self._fill_op_types()
        self.fit_columns()
        kept, self._kept = self._kept, []
        still = [n for n in kept if self.model.row_of(n) is not None]
        if still:
            self.select(still)
        elif kept:
            self.selectionChanged.emit([])
