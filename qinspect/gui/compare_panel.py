"""Two configurations side by side in the window: the project's encodings (A) against an encodings
file (B: a QAT run's, another session's, before a PTQ step), measured on the calibration data in a
worker (`core.analysis.diff`). A sortable table per tensor with both bitwidths, ranges, scales and
SQNRs, the cells that differ highlighted; both output SQNRs above it.

Object names: ``comparePanel`` (the dock, set by the window), ``compareTable``, ``compareStatus``,
``compareLoadButton``. Signal: ``compared(bool)`` when a run ends (True: new results shown).
"""
from __future__ import annotations

import math

from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QHBoxLayout, QLabel, QPushButton, QTableView,
                               QVBoxLayout, QWidget)

from . import messages

SAMPLES = 32
HEADERS = ("Tensor", "Kind", "A encoding", "B encoding", "A range", "B range", "A scale", "B scale",
           "A SQNR", "B SQNR", "Change dB")
CHANGED = QColor(255, 236, 179)
SORT_ROLE = Qt.UserRole + 1


def _num(value, digits: str = ".4g") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "exact" if value > 0 else "-inf"
    return format(value, digits)


def _range(side) -> str:
    return "" if side.min is None else f"[{side.min:.4g}, {side.max:.4g}]"


class ComparePanel(QWidget):
    compared = Signal(bool)

    def __init__(self, project, start, parent=None):
        super().__init__(parent)
        self.project, self._start = project, start
        self.result = None
        self.load_button = QPushButton("Compare with encodings file…", objectName="compareLoadButton")
        self.status = QLabel("A: the window's encodings; B: an encodings file (a QAT run's, another session's).",
                             objectName="compareStatus")
        self.status.setWordWrap(True)
        self.model = QStandardItemModel(0, len(HEADERS), self)
        self.model.setHorizontalHeaderLabels(HEADERS)
        proxy = QSortFilterProxyModel(self)
        proxy.setSourceModel(self.model)
        proxy.setSortRole(SORT_ROLE)
        self.table = QTableView(objectName="compareTable")
        self.table.setModel(proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        top = QHBoxLayout()
        top.addWidget(self.load_button)
        top.addWidget(self.status, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table)
        self.load_button.clicked.connect(self._ask)

    def _ask(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Compare with encodings", "", "Encodings JSON (*.json);;All files (*)")
        if path:
            self.compare_with(path)

    def compare_with(self, path, samples: int = SAMPLES) -> bool:
        """Measure the project's encodings (A) and the file's (B) on the calibration data in a worker."""
        from ..core.analysis.diff import diff
        from ..core.calib.data import open_data
        from ..core.errors import QInspectError
        from ..core.io.overrides import read_overrides
        from ..core.plan import encodings_for_target

        project = self.project
        if project.index is None or not project.stats or not project.data_spec:
            messages.notify(self, "warning", "Nothing to compare",
                            "Calibrate the model first: the comparison runs on the calibration data.")
            return False
        index, target = project.index, project.target
        try:
            b, _ = read_overrides(path, index)
            b = encodings_for_target(index, b, target)
        except (QInspectError, ValueError) as exc:
            messages.notify(self, "warning", "Not compared", f"{path}: {exc}")
            return False
        a, spec, options = dict(project.encodings), project.data_spec, dict(project.data_options)

        def job(progress):
            with open_data(spec, index.inputs, **options) as data:
                return diff(index, a, b, data, samples=samples, progress=progress)

        self.status.setText(f"comparing with {path}…")
        self._start(job, "comparison", lambda result: self._show(result, str(path)),
                    lambda: self.compared.emit(False))
        return True

    def _show(self, result, path: str) -> None:
        self.result = result
        outputs = "; ".join(f"{n}: A {_num(a, '.1f')} dB, B {_num(b, '.1f')} dB" for n, (a, b) in result.outputs.items())
        changed = sum(1 for t in result.tensors if t.changed)
        self.status.setText(f"B = {path} · {result.samples} samples · {outputs} · {changed} of "
                            f"{len(result.tensors)} tensors differ")
        self.model.setRowCount(0)
        for t in result.tensors:
            cells = [(t.name, t.name, ()), (t.kind, t.kind, ()),
                     (t.a.encoding, t.a.encoding, ("encoding",)), (t.b.encoding, t.b.encoding, ("encoding",)),
                     (_range(t.a), t.a.min, ("range",)), (_range(t.b), t.b.min, ("range",)),
                     (_num(t.a.scale), t.a.scale, ("scale",)), (_num(t.b.scale), t.b.scale, ("scale",)),
                     (_num(t.a.sqnr_db, ".1f"), t.a.sqnr_db, ("sqnr",)), (_num(t.b.sqnr_db, ".1f"), t.b.sqnr_db, ("sqnr",)),
                     (_num(t.sqnr_change, "+.1f"), t.sqnr_change, ("sqnr",))]
            row = []
            for text, key, fields in cells:
                item = QStandardItem(text)
                item.setData(math.inf if key is None else key, SORT_ROLE)  # no value: last
                if any(f in t.changed for f in fields):
                    item.setBackground(CHANGED)
                row.append(item)
            self.model.appendRow(row)
        self.table.sortByColumn(HEADERS.index("Change dB"), Qt.AscendingOrder)  # where B loses most first
        self.table.resizeColumnsToContents()
        self.compared.emit(True)
