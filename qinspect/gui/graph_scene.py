"""Scene items of `GraphView` and the colours they are drawn with: `GraphSceneMixin` places the
layout and creates a band's boxes, edges, quantizer marks and labels when it is seen; `sqnr_color`.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsRectItem, QGraphicsSimpleTextItem

from .graph_layout import COL_GAP, NODE_H, NODE_W, ROW_GAP, place

LABEL_MIN_SCALE = 0.35    # below this zoom, labels are hidden
RED_BELOW, GREEN_ABOVE = 20.0, 35.0  # dB: the default colour scale, the same for every model
IDLE_SLICE = 0.008        # s of item creation per idle tick (a frame stays smooth)
INPUT_OP = "Input"

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


class GraphSceneMixin:
    """Mixed into `GraphView` (a QGraphicsView): the scene side. Reads the layout state that
    `GraphView._reset_state` and `_build` set (`_names`, `_pos`, `_bands`, `_preds`, `_sqnr`,
    `thresholds`, ...) and fills `materialized_bands`, `labelled_bands` and the item dicts."""

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
