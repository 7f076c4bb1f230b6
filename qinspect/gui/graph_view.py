"""The model graph, top down as Netron draws it: quantizer positions marked, nodes coloured by the
SQNR of what they compute on an absolute scale (red under 20 dB, amber to 35, green above; the
thresholds are the panel's spin boxes), a box to find a node by name.

Built to stay usable on graphs of thousands of nodes:

- the layout (`graph_layout`: igraph's Sugiyama layering, C code) is computed from the index's
  producers and consumers, without walking the protobuf;
- it is computed when the view is first shown (or asked for a node), and again after a new model
  is opened; scene items are created a band of `BAND` layers at a time: when the band comes into
  view, and in idle slices of a few ms (boxes only; labels when seen) so that fitting a big graph
  later only paints; SQNR updates only change the brushes of the items that exist;
- a graph too big to read when fitted opens at a readable zoom on its inputs; Fit (F) shows it all;
- each node is a QGraphicsRectItem with one QGraphicsSimpleTextItem (both painted in C++, cached);
  edges (with their target) and quantizer marks are one QGraphicsPathItem per band, so the BSP
  index culls what is off screen and nothing is done per frame;
- labels are hidden when zoomed out far enough that they would be unreadable.

Only the main graph is drawn: a control-flow node (If/Loop/Scan) is one box, which stands for
the quantizers inside its bodies too.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

import shiboken6
from PySide6.QtCore import QPoint, QPointF, QRectF, QStringListModel, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QKeySequence, QPainter, QPainterPath, QPen, QShortcut
from PySide6.QtWidgets import (
    QCompleter,
    QDoubleSpinBox,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .events import listen
from .widgets import ElidedLabel
from .graph_layout import COL_GAP, NODE_H, NODE_W, ROW_GAP, layered_layout, place

OPEN_SCALE = 1.0          # zoom a big graph opens at: labels at the font's size
READABLE_SCALE = 0.8      # a graph whose fit is smaller (labels under ~9 px) opens at OPEN_SCALE on its inputs
LABEL_MIN_SCALE = 0.35    # below this zoom, labels are hidden
RED_BELOW, GREEN_ABOVE = 20.0, 35.0  # dB: the default colour scale, the same for every model
MAX_FOLLOW = 3            # steps followed from a fused node to the tensor that carries its error
IDLE_SLICE = 0.008        # s of item creation per idle tick (a frame stays smooth)
IDLE_LIMIT = 20_000       # nodes: bigger graphs create items only when seen (memory)
INPUT_OP = "Input"
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
KEY = ("<span style='color:#ef6c00'>●</span> activation quantizer<br>"
       "<span style='color:#6a1b9a'>■</span> weight/bias quantizer")

NODE_BRUSH = QBrush(QColor("#eceff1"))
INPUT_BRUSH = QBrush(QColor("#e3f2fd"))
NODE_PEN = QPen(QColor("#78909c"), 1.0)
HIGHLIGHT_PEN = QPen(QColor("#1565c0"), 3.0)
EDGE_PEN = QPen(QColor(120, 130, 140, 170), 1.0)
WRAP_PEN = QPen(QColor(120, 130, 140, 70), 1.0, Qt.DashLine)
NO_PEN = QPen(Qt.NoPen)
ACT_MARK = QBrush(QColor("#ef6c00"))     # activation quantizer: dot on the output port
PARAM_MARK = QBrush(QColor("#6a1b9a"))   # weight/bias quantizer: square on the node's top edge
for _pen in (NODE_PEN, HIGHLIGHT_PEN, EDGE_PEN, WRAP_PEN):
    _pen.setCosmetic(True)


RED, AMBER, GREEN = QColor("#ef9a9a"), QColor("#ffcc80"), QColor("#a5d6a7")  # pastel: black labels read


def sqnr_color(db: float, red_below: float = RED_BELOW, green_above: float = GREEN_ABOVE) -> QColor:
    """Red under `red_below` dB, amber up to `green_above`, green above: an absolute scale, so a
    healthy model is green and a broken one red whatever the spread of its own numbers."""
    if math.isnan(db):
        return QColor("#b0bec5")
    db = round(db, 1)  # the value the table shows: 19.96 reads 20.0, and is amber
    if db < red_below:
        return RED
    return AMBER if db < green_above else GREEN


def _claim(node, top: str, owner: dict[str, str]) -> None:
    """Map every node inside `node`'s subgraphs (recursively) to the main-graph node `top`."""
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for sub in g.node:
                owner[sub.name] = top
                _claim(sub, top, owner)


class GraphView(QGraphicsView):
    """The model graph of a `Project`. ``tensorsSelected(names, primary)`` when a node is clicked.

    The layout of every node is computed at once (plain Python); the scene items of a band of
    `BAND` layers are created when the band first comes into view (`materialized_bands`).
    """

    tensorsSelected = Signal(list, str)

    def __init__(self, project, parent=None):
        super().__init__(parent)
        self.setObjectName("graphView")
        self.project = project
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.Antialiasing, True)
        # Colour updates touch many nodes at once: repaint one bounding rect, not many small ones.
        self.setViewportUpdateMode(QGraphicsView.BoundingRectViewportUpdate)
        self.setOptimizationFlags(QGraphicsView.DontAdjustForAntialiasing | QGraphicsView.DontSavePainterState)
        self.setCacheMode(QGraphicsView.CacheBackground)
        self.setBackgroundBrush(QBrush(QColor("#fafafa")))
        self.setDragMode(QGraphicsView.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.setFocusPolicy(Qt.StrongFocus)
        self._font = QFont(self.font())
        self._font.setPointSizeF(max(7.0, self._font.pointSizeF() * 0.9))
        self._metrics = QFontMetrics(self._font)
        self._built = False
        self._placing = False
        self._sqnr: dict[str, float] = {}
        self.thresholds = (RED_BELOW, GREEN_ABOVE)
        self._reset_state()
        self._keep_highlight: list[str] = []  # nodes to highlight again once rebuilt
        self.build_seconds = 0.0
        # The key to the marks, over the view's corner: a child of the scroll area, not of the
        # viewport, so scrolling does not move it; clicks and drags go through to the graph.
        self.key = QLabel(KEY, self, objectName="graphKey")
        self.key.setStyleSheet("QLabel { background: rgba(255, 255, 255, 215); border: 1px solid #cfd8dc; "
                               "padding: 2px 5px; color: #37474f; }")
        self.key.setAttribute(Qt.WA_TransparentForMouseEvents)
        self.key.adjustSize()
        self._idle = QTimer(self, interval=0)
        self._idle.timeout.connect(self._fill_idle)
        listen(self, project, self._on_project)

    def _reset_state(self) -> None:
        self.activation_marks: set[str] = set()   # nodes (or inputs) whose output has a quantizer
        self.param_marks: dict[str, int] = {}     # node -> number of its weight/bias quantizers
        self.materialized_bands: set[int] = set()
        self.labelled_bands: set[int] = set()
        self._items: dict[str, QGraphicsRectItem] = {}
        self._labels: dict[str, QGraphicsSimpleTextItem] = {}
        self._band_labels: dict[int, QGraphicsRectItem] = {}   # band -> the (empty) parent of its labels
        self._band_outlines: dict[int, QGraphicsPathItem] = {}  # band -> its boxes' outlines, one path
        self._labels_shown = True
        self._names: list[str] = []               # every node, graph inputs first
        self._ops: dict[str, str] = {}
        self._feeds: set[str] = set()
        self._pos: dict[str, tuple[float, float]] = {}
        self._band_of: dict[str, int] = {}
        self._bands: dict[int, list[str]] = {}
        self._band_rects: dict[int, QRectF] = {}
        self._shapes: dict[str, str] = {}         # graph input -> its shape, for its label
        self._preds: dict[str, list[str]] = {}
        self._colour_of: dict[str, str] = {}      # node -> tensor whose SQNR colours it
        self._tensors_of: dict[str, list[str]] = {}
        self._node_of: dict[str, str] = {}        # quantized tensor -> node that shows it
        self._highlighted: list[str] = []

    # --- public API ---------------------------------------------------------------------------
    def node_names(self) -> list[str]:
        self.ensure_built()
        return list(self._names)

    def node_item(self, name: str) -> QGraphicsRectItem | None:
        """The node's box (its band is created if it was not yet)."""
        self.ensure_built()
        if name in self._band_of:
            self._materialize(self._band_of[name])
        return self._items.get(name)

    def tensors_of(self, node: str) -> list[str]:
        """The quantized tensors a node stands for: its output activation (or, for a node fused with
        the next, the group's output) first, then its weights and biases."""
        self.ensure_built()
        return list(self._tensors_of.get(node, ()))

    def select_node(self, name: str) -> list[str]:
        """Highlight a node and emit its tensors (what a click does); returns them."""
        self.ensure_built()
        if name not in self._pos:
            return []
        tensors = self.tensors_of(name)
        self.highlight_nodes([name])
        self.tensorsSelected.emit(tensors, tensors[0] if tensors else "")
        return tensors

    def highlight_tensors(self, names) -> None:
        """Highlight the nodes that show these tensors (the table's selection), scrolling to the first."""
        if not self._built:
            return
        nodes = list(dict.fromkeys(self._node_of[n] for n in names if n in self._node_of))
        self.highlight_nodes(nodes, reveal=True)

    def highlight_nodes(self, nodes, reveal: bool = False) -> None:
        for n in self._highlighted:
            item = self._items.get(n)
            if item is not None:
                item.setPen(NO_PEN)
                item.setZValue(1)
        self._highlighted = [n for n in nodes if n in self._pos]
        for n in self._highlighted:
            item = self.node_item(n)
            item.setPen(HIGHLIGHT_PEN)
            item.setZValue(2)
        if reveal and self._highlighted:
            item = self._items[self._highlighted[0]]
            if not self._visible_rect().contains(item.sceneBoundingRect()):
                self.centerOn(item)
                self._materialize_visible()

    def set_sqnr(self, sqnr: dict[str, float]) -> None:
        """Colour nodes by the SQNR (dB) of their tensor; nodes without one stay grey."""
        self._sqnr = dict(sqnr)
        self._recolour()

    def set_thresholds(self, red_below: float, green_above: float) -> None:
        """The colour scale: red under `red_below` dB, green above `green_above`."""
        self.thresholds = (float(red_below), float(max(green_above, red_below)))
        self._recolour()

    @property
    def legend(self) -> str:
        red, green = self.thresholds
        return (f"colour: SQNR of the node's output, red under {red:g} dB, amber {red:g}–{green:g}, "
                f"green above {green:g}; grey: not measured")

    def _recolour(self) -> None:
        if self._built:
            for n, item in self._items.items():
                self._colour(n, item)

    def find(self, text: str) -> str | None:
        """Select and show the node named `text` (or the first whose name contains it, case blind)."""
        self.ensure_built()
        text = text.strip()
        if not text:
            return None
        name = text if text in self._pos else next((n for n in self._names if text.lower() in n.lower()), None)
        if name is None:
            return None
        self.select_node(name)
        self.centerOn(self._items[name])
        self._materialize_visible()
        return name

    def fit(self) -> None:
        """Show the whole graph."""
        self.ensure_built()
        self.fitInView(self.scene().sceneRect(), Qt.KeepAspectRatio)
        self._after_zoom()

    def ensure_built(self) -> None:
        if not self._built:
            self._build()

    # --- layout -------------------------------------------------------------------------------
    def _on_project(self, event: str, names) -> None:
        if not shiboken6.isValid(self):
            return
        if event in ("model", "index"):
            # the same model rewritten (a PTQ step): its nodes stay, and so does what was highlighted
            keep = list(self._highlighted) if event == "index" else []
            self._clear()
            self._sqnr = {}
            self._keep_highlight = keep
            if self.isVisible():
                self._build()

    def _clear(self) -> None:
        self._idle.stop()
        self.scene().clear()
        self._reset_state()
        self._built = False

    def _build(self) -> None:
        started = time.perf_counter()
        self._clear()
        self._built = True
        index = self.project.index
        if index is None:
            self.scene().setSceneRect(QRectF(0, 0, 10, 10))
            return
        graph = index.model.graph
        ops = self._ops = {n.name: n.op_type for n in graph.node}
        # Graph inputs are pseudo-nodes named after the tensor (unless a node has that name).
        feeds = [i.name for i in index.inputs if i.name not in ops]
        self._feeds = set(feeds)
        self._names = feeds + list(ops)
        # Edges from the index's producers and consumers: plain Python, no protobuf walk.
        # A node inside a control-flow body counts as its main-graph node (the box drawn).
        owner = {n: n for n in ops}
        for node in graph.node:
            if node.op_type in CONTROL_FLOW:
                _claim(node, node.name, owner)
        outputs: dict[str, list[str]] = defaultdict(list)  # a node's own outputs
        inner: dict[str, list[str]] = defaultdict(list)    # tensors computed inside its bodies
        preds: dict[str, list[str]] = defaultdict(list)
        for name, info in index.tensors.items():
            src = owner.get(info.producer) if info.producer else (name if name in self._feeds else None)
            if src is None:
                continue
            (outputs if info.producer == src else inner)[src].append(name)
            for c in info.consumers:
                top = owner.get(c)
                if top is not None and top != src:
                    preds[top].append(src)
        for f in feeds:
            outputs[f] = [f]
        preds = {n: list(dict.fromkeys(ps)) for n, ps in preds.items()}  # Mul(x, x): one edge
        cells = layered_layout(self._names, preds)
        self._preds = preds
        self._shapes = {i.name: "×".join(str(d) if d else "?" for d in i.shape) for i in index.inputs}
        self._map_tensors(index, ops, outputs, inner, owner)
        targets = index.targets
        for n in self._names:
            if any(o in targets and targets[o].kind == "activation" for o in outputs.get(n, ())):
                self.activation_marks.add(n)
        view_w, view_h = self._view_size()
        rect = self._place(cells)
        # A graph that reads when fitted is fitted; a bigger one opens at its inputs, readable.
        if min(view_w / rect.width(), view_h / rect.height()) >= READABLE_SCALE:
            self.fit()
        else:
            self.resetTransform()
            self.scale(OPEN_SCALE, OPEN_SCALE)
            top = min(self._names, key=lambda n: (self._pos[n][1], self._pos[n][0]))
            x, y = self._pos[top]
            self.centerOn(QPointF(x + NODE_W / 2, y + view_h / 2 / OPEN_SCALE - 40))
            self._after_zoom()
        keep, self._keep_highlight = self._keep_highlight, []
        if keep:
            self.highlight_nodes(keep, reveal=True)
        self.build_seconds = time.perf_counter() - started
        if len(self._names) <= IDLE_LIMIT:
            self._idle.start()

    def _view_size(self) -> tuple[float, float]:
        """The viewport's size, or a typical panel's before the view is first shown."""
        if not self.isVisible():
            return 900.0, 260.0
        return float(max(self.viewport().width(), 200)), float(max(self.viewport().height(), 120))

    def _place(self, cells) -> QRectF:
        """Position every node; scene items are created lazily, a band at a time."""
        self.scene().clear()
        self._items, self._labels, self._band_labels, self._band_outlines = {}, {}, {}, {}
        self.materialized_bands, self.labelled_bands = set(), set()
        self._pos, self._band_of = place(cells)
        bands: dict[int, list[str]] = defaultdict(list)
        for n in self._names:
            bands[self._band_of[n]].append(n)
        self._bands = dict(bands)
        self._band_rects = {}
        for band, members in self._bands.items():
            bx = [self._pos[n][0] for n in members]
            by = [self._pos[n][1] for n in members]
            # margins: marks stick out, and edges come down from the band above
            self._band_rects[band] = QRectF(min(bx) - COL_GAP, min(by) - ROW_GAP,
                                            max(bx) - min(bx) + NODE_W + 2 * COL_GAP, max(by) - min(by) + NODE_H + 2 * ROW_GAP)
        xs = [p[0] for p in self._pos.values()] or [0.0]
        ys = [p[1] for p in self._pos.values()] or [0.0]
        rect = QRectF(min(xs) - 40, min(ys) - 40, max(xs) - min(xs) + NODE_W + 80, max(ys) - min(ys) + NODE_H + 80)
        # The new rect scrolls the view to its middle; items are made once the view is placed.
        self._placing = True
        try:
            self.scene().setSceneRect(rect)
        finally:
            self._placing = False
        return rect

    def _map_tensors(self, index, ops, outputs, inner, owner) -> None:
        """Which tensors a node stands for, and which tensor colours it."""
        targets = index.targets

        def carried(tensor: str) -> str | None:
            """The measured tensor that carries the error of `tensor`: itself, or for the inner
            output of a fused group (no quantizer, not an alias) the group's output."""
            for _ in range(MAX_FOLLOW + 1):
                if tensor in targets and targets[tensor].kind == "activation":
                    return tensor
                info = index.tensors.get(tensor)
                if info is None or tensor in index.aliases or not index.is_float(tensor):
                    return None
                nexts = [c for c in info.consumers if c in ops]
                if len(nexts) != 1 or not outputs.get(nexts[0]):
                    return None
                tensor = outputs[nexts[0]][0]
            return None

        params: dict[str, list[str]] = defaultdict(list)
        for name, t in targets.items():
            if t.kind != "activation" and t.node in owner:
                params[owner[t.node]].append(name)
        for n in self._names:
            shown = []
            for o in outputs.get(n, ()):
                c = carried(o)
                if c is not None and c not in shown:
                    shown.append(c)
            if shown:
                self._colour_of[n] = shown[0]
            shown += [t for t in inner.get(n, ()) if t in targets and targets[t].kind == "activation"]
            self._tensors_of[n] = shown + params.get(n, [])
            if params.get(n):
                self.param_marks[n] = len(params[n])
            for t in self._tensors_of[n]:
                self._node_of.setdefault(t, n)
        for n in self._names:  # an activation is shown on the node that computes it
            for o in outputs.get(n, ()):
                if o in targets:
                    self._node_of[o] = n

    # --- scene items, created a band at a time -------------------------------------------------
    def _visible_rect(self) -> QRectF:
        return self.mapToScene(self.viewport().rect()).boundingRect()

    def _materialize_visible(self) -> None:
        if not self._built or not self._bands:
            return
        rect = self._visible_rect()
        for band, box in self._band_rects.items():
            if box.intersects(rect):
                self._materialize(band)
                if self._labels_shown:
                    self._label(band)

    def _fill_idle(self) -> None:
        """Create the remaining bands' boxes (no labels) a few milliseconds at a time while the user
        is idle, nearest the view first, so zooming out or fitting later only paints."""
        if not self._built or len(self.materialized_bands) == len(self._bands):
            self._idle.stop()
            return
        centre = self.mapToScene(self.viewport().rect().center()).y()
        todo = sorted((b for b in self._bands if b not in self.materialized_bands),
                      key=lambda b: abs(self._band_rects[b].center().y() - centre))
        deadline = time.perf_counter() + IDLE_SLICE
        for band in todo:
            self._materialize(band, label=False)
            if time.perf_counter() > deadline:
                return

    def _materialize(self, band: int, label: bool = True) -> None:
        if band in self.materialized_bands or band not in self._bands:
            return
        self.materialized_bands.add(band)
        scene = self.scene()
        edges, wraps, acts, params, outlines = (QPainterPath() for _ in range(5))
        for n in self._bands[band]:
            x, y = self._pos[n]
            item = QGraphicsRectItem(0, 0, NODE_W, NODE_H)
            item.setPos(x, y)
            item.setPen(HIGHLIGHT_PEN if n in self._highlighted else NO_PEN)
            outlines.addRect(QRectF(x, y, NODE_W, NODE_H))
            item.setZValue(2 if n in self._highlighted else 1)
            item.setData(0, n)
            scene.addItem(item)
            self._items[n] = item
            self._colour(n, item)
            centre = x + NODE_W / 2
            if n in self.activation_marks:  # the output port, under the node
                acts.addEllipse(QPointF(centre, y + NODE_H), 4.5, 4.5)
            for k in range(self.param_marks.get(n, 0)):  # weights and biases come in from the left
                params.addRect(QRectF(x - 4, y + 6 + 11 * k, 8, 8))
            for q in self._preds.get(n, ()):  # incoming edges live with their target's band
                sx, sy = self._pos[q]
                sx, sy = sx + NODE_W / 2, sy + NODE_H
                if sy > y:  # against the flow (a cycle of an invalid model): a faint straight line
                    wraps.moveTo(sx, sy)
                    wraps.lineTo(centre, y)
                    continue
                bend = max(ROW_GAP * 0.6, (y - sy) * 0.4)
                edges.moveTo(sx, sy)
                edges.cubicTo(sx, sy + bend, centre, y - bend, centre, y)
        scene.addPath(edges, EDGE_PEN).setZValue(0)
        scene.addPath(wraps, WRAP_PEN).setZValue(0)
        scene.addPath(acts, QPen(Qt.NoPen), ACT_MARK).setZValue(3)
        scene.addPath(params, QPen(Qt.NoPen), PARAM_MARK).setZValue(3)
        # Outlines of the whole band as one item: hidden with the labels when zoomed out (they would
        # hide the colour of tiny boxes) by one call per band, not one per node.
        outline = scene.addPath(outlines, NODE_PEN)
        outline.setZValue(1.5)
        outline.setVisible(self._labels_shown)
        self._band_outlines[band] = outline
        if label and self._labels_shown:
            self._label(band)

    def _label(self, band: int) -> None:
        """Labels are created only for bands seen at a zoom where they can be read; a band's labels
        share one parent, so hiding them is one call."""
        if band in self.labelled_bands:
            return
        self.labelled_bands.add(band)
        holder = QGraphicsRectItem(QRectF())
        holder.setPen(NO_PEN)
        holder.setZValue(2.5)
        holder.setVisible(self._labels_shown)
        self.scene().addItem(holder)
        self._band_labels[band] = holder
        for n in self._bands[band]:
            name = self._metrics.elidedText(n, Qt.ElideMiddle, int(NODE_W - 10))
            if n in self._feeds:  # a graph input: its name once, and its shape
                text = f"{name}\n{self._shapes.get(n, '')}"
            else:
                text = f"{self._ops.get(n, INPUT_OP)}\n{name}"
            label = QGraphicsSimpleTextItem(text, holder)
            label.setFont(self._font)
            x, y = self._pos[n]
            label.setPos(x + 5, y + 4)
            label.setCacheMode(QGraphicsItem.DeviceCoordinateCache)
            self._labels[n] = label

    def label_text(self, node: str) -> str | None:
        """The text drawn in a node's box (None until its band has been seen close enough)."""
        label = self._labels.get(node)
        return label.text() if label is not None else None

    def _colour(self, n: str, item: QGraphicsRectItem) -> None:
        t = self._colour_of.get(n)
        tip = self._tooltip(n)
        if t is None or t not in self._sqnr:
            item.setBrush(INPUT_BRUSH if n in self._feeds else NODE_BRUSH)
        else:
            db = self._sqnr[t]
            item.setBrush(QBrush(sqnr_color(db, *self.thresholds)))
            tip += f"\nSQNR of {t}: {db:.1f} dB"
        item.setToolTip(tip)

    def _tooltip(self, node: str) -> str:
        tensors = self._tensors_of.get(node, [])
        lines = [f"{node} (graph input)" if node in self._feeds else f"{node} ({self._ops.get(node, INPUT_OP)})"]
        if tensors:
            lines.append("quantized: " + ", ".join(tensors[:6]) + (" …" if len(tensors) > 6 else ""))
        return "\n".join(lines)

    def _after_zoom(self) -> None:
        if self._placing:
            return
        show = self.transform().m11() >= LABEL_MIN_SCALE
        if show != self._labels_shown:  # labels, and outlines that would hide the colour of tiny boxes
            self._labels_shown = show
            for item in (*self._band_labels.values(), *self._band_outlines.values()):
                item.setVisible(show)
        self._materialize_visible()

    # --- interaction --------------------------------------------------------------------------
    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._built:
            self._build()
        self._after_zoom()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.key.move(self.viewport().geometry().topLeft() + QPoint(6, 6))
        self.key.raise_()
        self._after_zoom()

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        self._after_zoom()  # fitInView scrolls before it returns: check the zoom here too

    def wheelEvent(self, event) -> None:
        factor = 1.0015 ** event.angleDelta().y()
        scale = self.transform().m11() * factor
        if 0.02 <= scale <= 4.0:
            self.scale(factor, factor)
            self._after_zoom()
        event.accept()

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key_F:
            self.fit()
            return
        if event.key() in (Qt.Key_Plus, Qt.Key_Equal, Qt.Key_Minus):
            factor = 1.25 if event.key() != Qt.Key_Minus else 0.8
            self.scale(factor, factor)
            self._after_zoom()
            return
        super().keyPressEvent(event)

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.LeftButton:
            # the node's box under its label and its band's outline (items without a name)
            names = (item.data(0) for item in self.items(event.position().toPoint()))
            name = next((n for n in names if n in self._items), None)
            if name is not None:
                self.select_node(name)
                event.accept()
                return
        super().mousePressEvent(event)


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
