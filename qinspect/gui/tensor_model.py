"""The tensor table's Qt model: `TensorTableModel`, its column constants and cell formatting.

`TensorTableModel` is a Qt model over a core `Project`. Cells are computed lazily in `data()` and
cached per row, so opening a model with thousands of tensors only computes the rows on screen.
Project events invalidate the cache: "model"/"stats" reset the table, "plan" refreshes only the
rows whose encodings changed (the edited tensors and the biases derived from them).

Bitwidth, Dtype and Scheme show what the target runs. Where a target rule set them (QNN's float
rule, a 7-bit weight grid, a fixed output encoding) they are in blue italics and the tooltip says
which rule and why; the user's own edits are bold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from ..core.plan import resolve
from ..core.quant.encoding import clip_bounds
from ..core.targets.rules import precision

COLUMNS = ("Name", "Op", "Kind", "Shape", "Min", "Max", "Enc min", "Enc max", "Bitwidth", "Dtype", "Scheme",
           "Clipped", "SQNR")
NAME, OP, KIND, SHAPE, MIN, MAX, ENC_MIN, ENC_MAX, BW, DTYPE, SCHEME, CLIPPED, SQNR = range(len(COLUMNS))
NUMERIC = frozenset({MIN, MAX, ENC_MIN, ENC_MAX, BW, CLIPPED, SQNR})
SORT_ROLE = Qt.ItemDataRole.UserRole  # raw numbers (None when unknown) so numeric columns sort as numbers
HEADER_TIPS = {
    CLIPPED: "Share of calibration values the encoding clips: beyond half a step past its ends (the "
             "preview under the histogram uses the same definition)",
    SQNR: "SQNR at this tensor in the quantized model, all upstream error included (live, on the first "
          "calibration samples). The preview under the histogram is this tensor's own quantizer alone.",
}
# Roles looked up once: PySide6 resolves an old-style name such as Qt.DisplayRole in ~7 us, and
# data() runs for every visible cell and role on each repaint (a few hundred calls).
_DISPLAY = Qt.ItemDataRole.DisplayRole
_TOOLTIP = Qt.ItemDataRole.ToolTipRole
_FONT = Qt.ItemDataRole.FontRole
_ALIGNMENT = Qt.ItemDataRole.TextAlignmentRole
_BACKGROUND = Qt.ItemDataRole.BackgroundRole
_FOREGROUND = Qt.ItemDataRole.ForegroundRole
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
CLIPPED_WARN = 0.01  # flag tensors losing more than 1% of their calibration values to clipping
FLOAT16_MAX = 65504.0

_WARN_BG, _WARN_FG = QBrush(QColor("#ffe0b2")), QBrush(QColor("#8a4b00"))  # amber: clipping
_BAD_BG, _BAD_FG = QBrush(QColor("#ffcdd2")), QBrush(QColor("#8b0000"))    # red: NaN/Inf seen
_BOLD = QFont()
_BOLD.setBold(True)
_RULE_FG = QBrush(QColor("#1a4f8b"))  # blue: set by a target rule
_ITALIC, _BOLD_ITALIC = QFont(), QFont()
_ITALIC.setItalic(True)
_BOLD_ITALIC.setBold(True)
_BOLD_ITALIC.setItalic(True)
RULE_COLUMNS = {"float-group": (BW, DTYPE), "weight-grid": (BW,), "fixed-output": (SCHEME,),
                "per-tensor": (ENC_MIN, ENC_MAX)}  # the cells each rule sets


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _shape(shape) -> str:
    if shape is None:
        return "?"
    if len(shape) == 0:
        return "scalar"
    return "\u00d7".join("?" if d is None else str(d) for d in shape)


@dataclass
class _Row:
    """Derived values of one row; recomputed only after the tensor (or what it depends on) changes."""

    texts: list[str]
    keys: list
    nonfinite: str  # "" or e.g. "3 NaN, 1 +Inf"
    clipped: float | None
    channels: int  # > 0 for per-channel encodings
    axis: int | None  # their channel axis


class TensorTableModel(QAbstractTableModel):
    """One row per `project.index.targets` entry (graph order until sorted); see COLUMNS."""

    def __init__(self, project, parent=None):
        super().__init__(parent)
        self._project = None
        self._names: list[str] = []  # display order (graph order unless sorted)
        self._rows: dict[str, int] = {}
        self._cache: dict[str, _Row] = {}
        self._sort_column, self._sort_order = -1, Qt.AscendingOrder
        self._sqnr: dict[str, float] = {}
        self._dependents: dict[str, list[str]] = {}
        # The project outlives views: stop listening when Qt deletes this model.
        self._subscribed: list = [None]
        subscribed = self._subscribed
        self.destroyed.connect(lambda *_: subscribed[0] and subscribed[0][0].unsubscribe(subscribed[0][1]))
        self.set_project(project)

    # --- public API -------------------------------------------------------------------------
    @property
    def project(self):
        return self._project

    def set_project(self, project) -> None:
        """Show another project (for example one reopened from a session)."""
        if self._subscribed[0] is not None:
            old, listener = self._subscribed[0]
            old.unsubscribe(listener)
        self._project = project
        self._subscribed[0] = None
        if project is not None:
            listener = self._on_event
            project.subscribe(listener)
            self._subscribed[0] = (project, listener)
        self._sqnr = {}
        self._reset()

    def names(self) -> list[str]:
        return list(self._names)

    def name(self, row: int) -> str:
        return self._names[row]

    def row_of(self, name: str) -> int | None:
        return self._rows.get(name)

    def _graph_order(self) -> list[str]:
        index = self._project.index if self._project is not None else None
        return list(index.targets) if index is not None else []

    def target(self, row: int):
        return self._project.index.targets[self._names[row]]

    def op_types(self) -> list[str]:
        index = self._project.index if self._project is not None else None
        return sorted({t.op_type for t in index.targets.values()}) if index is not None else []

    def set_sqnr(self, sqnr: dict[str, float]) -> None:
        """Fill the SQNR column (dB); tensors missing from `sqnr` show an empty cell."""
        self._sqnr = {k: float(v) for k, v in sqnr.items()}
        if self._names:
            self.dataChanged.emit(self.index(0, SQNR), self.index(len(self._names) - 1, SQNR))

    # --- Qt model interface ------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._names)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=_DISPLAY):
        if orientation == Qt.Horizontal and role == _DISPLAY:
            return COLUMNS[section]
        if orientation == Qt.Horizontal and role == _TOOLTIP:
            return HEADER_TIPS.get(section)
        return None

    def data(self, index, role=_DISPLAY):
        if not index.isValid():
            return None
        row, col = index.row(), index.column()
        name = self._names[row]
        if role == _DISPLAY:
            if col == SQNR:
                db = self._sqnr.get(name)
                return "" if db is None else f"{db:.1f}"
            return name if col == NAME else self._row(row).texts[col]
        if role == SORT_ROLE:
            return self.sort_key(row, col)
        if role == _TOOLTIP:
            return self._tooltip(row)
        if role == _FONT:
            edited = name in self._project.plan.edits
            if self._ruled(name, col):
                return _BOLD_ITALIC if edited else _ITALIC
            return _BOLD if edited else None
        if role == _ALIGNMENT:
            return _RIGHT if col in NUMERIC else None
        if role == _BACKGROUND or role == _FOREGROUND:
            return self._flag(row, col, role == _BACKGROUND)
        return None

    def sort(self, column: int, order=Qt.AscendingOrder) -> None:
        """Sort rows by `sort_key` (column -1: graph order). Unknown values go last either way.

        Sorting here takes one Python key per row; letting QSortFilterProxyModel sort would call
        back into Python for every comparison (about 1 s for 5,000 rows). Rows are not re-sorted
        when their values change afterwards, so an edited row does not jump away from the cursor.
        """
        self.layoutAboutToBeChanged.emit()
        old = self._names
        self._sort_column, self._sort_order = column, Qt.SortOrder(order)
        self._set_names(self._graph_order())  # ties keep graph order
        persistent = self.persistentIndexList()
        moved = [self.index(self._rows[old[i.row()]], i.column()) for i in persistent]
        self.changePersistentIndexList(persistent, moved)
        self.layoutChanged.emit()

    def _set_names(self, names: list[str]) -> None:
        """Put `names` in the current sort order and index them."""
        column = self._sort_column
        if column >= 0:
            keys = {n: self._key(n, column) for n in names}
            known = sorted((n for n in names if keys[n] is not None), key=keys.__getitem__,
                           reverse=self._sort_order == Qt.DescendingOrder)
            names = known + [n for n in names if keys[n] is None]
        self._names = list(names)
        self._rows = {n: i for i, n in enumerate(self._names)}

    def sort_key(self, row: int, col: int):
        """The raw value a column sorts by: a number, a string, or None when unknown."""
        return self._key(self._names[row], col)

    def _key(self, name: str, col: int):
        if col == NAME:
            return name
        if col == SQNR:
            db = self._sqnr.get(name)
            return None if db is None or math.isnan(db) else db
        return self._derived(name).keys[col]

    # --- derived values ----------------------------------------------------------------------
    def _row(self, row: int) -> _Row:
        return self._derived(self._names[row])

    def _derived(self, name: str) -> _Row:
        cached = self._cache.get(name)
        if cached is None:
            cached = self._cache[name] = self._derive(name)
        return cached

    def _derive(self, name: str) -> _Row:
        project = self._project
        target = project.index.targets[name]
        settings, effect = resolve(project.index, project.plan, name)  # what the target runs
        stats = project.stats.get(name)
        values = project.index.initializer(name) if target.kind != "activation" else None
        lo = hi = None
        nonfinite = ""
        if stats is not None:
            if stats.count:
                lo, hi = float(stats.min), float(stats.max)
            parts = [f"{n} {what}" for n, what in
                     ((stats.nan_count, "NaN"), (stats.posinf_count, "+Inf"), (stats.neginf_count, "-Inf")) if n]
            nonfinite = ", ".join(parts)
        elif values is not None and values.size:
            finite = values[np.isfinite(values)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
            if finite.size != values.size:
                nonfinite = f"{values.size - finite.size} NaN/Inf"
        enc = project.encodings.get(name)
        enc_lo = enc_hi = clipped = None
        enc_lo_text = enc_hi_text = ""
        channels = 0
        if enc is not None and enc.is_float:
            enc_lo_text = enc_hi_text = f"float{enc.bw}"
            limit = FLOAT16_MAX if enc.bw == 16 else math.inf
            enc_lo, enc_hi = -limit, limit
            clipped = self._clipped(stats, values, None, -limit, limit) if enc.bw == 16 else 0.0
        elif enc is not None:
            mins, maxs = enc.min, enc.max
            enc_lo, enc_hi = float(mins.min()), float(maxs.max())
            enc_lo_text, enc_hi_text = _num(enc_lo), _num(enc_hi)
            if enc.per_channel and mins.size > 1:
                channels = int(mins.size)
                enc_lo_text += f"  per-channel ({channels})"
                enc_hi_text += f"  per-channel ({channels})"
            lo_clip, hi_clip = clip_bounds(enc)  # the definition the editor's preview uses too
            clipped = self._clipped(stats, values, enc, lo_clip, hi_clip)
        dtype, bw = precision(settings)
        if effect is not None and effect.rule == "fixed-output":
            scheme = "fixed"
        elif settings.encoding is not None and name in project.plan.edits:
            scheme = "imported"
        else:
            scheme = settings.scheme
        texts = ["", target.op_type, target.kind, _shape(target.shape), _num(lo), _num(hi), enc_lo_text,
                 enc_hi_text, "8 (7-bit grid)" if bw == 7 else str(bw), dtype, scheme,
                 "" if clipped is None else f"{100 * clipped:.2f}%", ""]
        keys = [None, target.op_type, target.kind, texts[SHAPE], lo, hi, enc_lo, enc_hi, bw,
                dtype, texts[SCHEME], clipped, None]
        return _Row(texts, keys, nonfinite, clipped, channels, enc.axis if channels else None)

    @staticmethod
    def _clipped(stats, values, enc, lo, hi) -> float | None:
        """Share of values outside [lo, hi]: exact for constants, from the histogram otherwise."""
        if values is not None and values.size:
            v = np.asarray(values, dtype=np.float64)
            if enc is not None and enc.per_channel and np.size(lo) > 1 and v.ndim > enc.axis:
                v = np.moveaxis(v, enc.axis, 0).reshape(np.size(lo), -1)
                lo, hi = np.reshape(lo, (-1, 1)), np.reshape(hi, (-1, 1))
            finite = np.isfinite(v)
            outside = finite & ((v < lo) | (v > hi))
            n = int(finite.sum())
            return float(outside.sum()) / n if n else None
        if stats is None or not stats.count:
            return None
        return stats.clipped_fraction(float(np.min(lo)), float(np.max(hi)))

    def _tooltip(self, row: int) -> str:
        name = self._names[row]
        target = self._project.index.targets[name]
        derived = self._row(row)
        where = f"output of {target.node}" if target.kind == "activation" and target.node else \
            ("graph input" if target.kind == "activation" else f"{target.kind} of {target.node}")
        lines = [name, f"{target.kind}, {where} ({target.op_type})"]
        if derived.channels:
            lines.append(f"per-channel encoding: {derived.channels} channels on axis {derived.axis}; "
                         "Enc min/max are the smallest min and the largest max")
        if derived.nonfinite:
            lines.append(f"\u26a0 calibration saw {derived.nonfinite}: these values are not in min/max")
        if derived.clipped is not None and derived.clipped > CLIPPED_WARN:
            lines.append(f"\u26a0 {100 * derived.clipped:.2f}% of the values fall outside the encoding")
        if name in self._project.plan.edits:
            lines.append("edited in the precision plan")
        enc = self._project.encodings.get(name)
        if target.kind == "bias" and enc is not None and not enc.is_float and enc.bw == 32:
            values = np.abs(self._project.index.initializer(name)).reshape(-1)
            steps = enc.scales if enc.per_channel and values.size == enc.scales.size else enc.scales[0]
            if values.size and np.all(values < steps / 2):
                lines.append("its values are below half a step of its int32 scale (input scale x weight scale), "
                             "so they round to 0 (0 dB), on the target too")
        effect = self._project.rule_effects.get(name)
        if effect is not None:
            lines.append(f"set by the target: {effect.message}")
        return "\n".join(lines)

    def _ruled(self, name: str, col: int) -> bool:
        effect = self._project.rule_effects.get(name)
        return effect is not None and col in RULE_COLUMNS.get(effect.rule, ())

    def _flag(self, row: int, col: int, background: bool):
        if not background and self._ruled(self._names[row], col):
            return _RULE_FG
        derived = self._row(row)
        if derived.nonfinite and col in (NAME, MIN, MAX):
            return _BAD_BG if background else _BAD_FG
        if col == CLIPPED and derived.clipped is not None and derived.clipped > CLIPPED_WARN:
            return _WARN_BG if background else _WARN_FG
        return None

    # --- project events ----------------------------------------------------------------------
    def _reset(self) -> None:
        self.beginResetModel()
        index = self._project.index if self._project is not None else None
        self._cache.clear()
        self._set_names(self._graph_order())  # keeps the user's sort
        self._dependents = {}
        if index is not None:
            # A bias encoding is derived from its op's input and weight encodings, so editing
            # either changes the bias row too (the same set derive_encodings recomputes).
            for name, target in index.targets.items():
                if target.kind == "bias" and target.bias_inputs:
                    act, weight = target.bias_inputs
                    for source in {index.encoding_source(act), weight}:
                        self._dependents.setdefault(source, []).append(name)
        self.endResetModel()

    def _on_event(self, event: str, names) -> None:
        if event in ("model", "index", "stats"):
            if event in ("model", "index"):
                self._sqnr = {}  # SQNR of another model
            self._reset()
            return
        if event != "plan":
            return
        if names is None:
            self._refresh_all()
            return
        rows = set()
        for name in names:
            for changed in [name, *self._dependents.get(name, ())]:
                row = self._rows.get(changed)
                if row is not None:
                    rows.add(row)
                    self._cache.pop(changed, None)
        # One signal per run of adjacent rows (row - position is constant along a run).
        for _, run in groupby(enumerate(sorted(rows)), lambda pair: pair[1] - pair[0]):
            run = [row for _, row in run]
            self.dataChanged.emit(self.index(run[0], 0), self.index(run[-1], len(COLUMNS) - 1))

    def _refresh_all(self) -> None:
        self._cache.clear()
        if self._names:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._names) - 1, len(COLUMNS) - 1))
