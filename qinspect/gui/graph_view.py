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

Scene items and colours (`GraphSceneMixin`, `sqnr_color`) are in `graph_scene`; the panel around
the view (`GraphPanel`) in `graph_panel`, which imports this module (not the other way round).

Only the main graph is drawn: a control-flow node (If/Loop/Scan) is one box, which stands for
the quantizers inside its bodies too.
"""
from __future__ import annotations

import time
from collections import defaultdict

import shiboken6
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QPainter
from PySide6.QtWidgets import (
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QLabel,
)

from .events import listen
from .graph_layout import NODE_W, layered_layout
from .graph_scene import AMBER, GREEN, GREEN_ABOVE, HIGHLIGHT_PEN, NO_PEN, RED, RED_BELOW, GraphSceneMixin, sqnr_color

__all__ = ["AMBER", "GREEN", "READABLE_SCALE", "RED", "GraphView", "sqnr_color"]

OPEN_SCALE = 1.0          # zoom a big graph opens at: labels at the font's size
READABLE_SCALE = 0.8      # a graph whose fit is smaller (labels under ~9 px) opens at OPEN_SCALE on its inputs
MAX_FOLLOW = 3            # steps followed from a fused node to the tensor that carries its error
IDLE_LIMIT = 20_000       # nodes: bigger graphs create items only when seen (memory)
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
KEY = ("<span style='color:#ef6c00'>●</span> activation quantizer<br>"
       "<span style='color:#6a1b9a'>■</span> weight/bias quantizer")


def _claim(node, top: str, owner: dict[str, str]) -> None:
    """Map every node inside `node`'s subgraphs (recursively) to the main-graph node `top`."""
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for sub in g.node:
                owner[sub.name] = top
                _claim(sub, top, owner)


class GraphView(GraphSceneMixin, QGraphicsView):
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

