"""Layered layout of a model graph in plain Python (no Qt), for `graph_view`.

- `layered_layout`: Kahn's order gives each node its depth (its layer, left to right); one
  barycentre pass orders each layer by its predecessors' rows. O(nodes + edges) plus a sort per layer.
- `strips_for` / `place`: a deep graph wraps into strips (rows of layers, like lines of text) so
  that it fills a wide view instead of becoming a line; nodes are grouped in bands of `BAND`
  consecutive layers of a strip, the unit in which the view creates scene items.
"""
from __future__ import annotations

import math
from collections import defaultdict, deque

NODE_W, NODE_H = 128.0, 38.0
COL_GAP, ROW_GAP = 56.0, 18.0
BAND = 16                 # layers per band: the unit of lazy item creation
MAX_STRIPS = 400          # the most rows a long graph wraps into (see strips_for)
STRIP_GAP = 60.0


def layered_layout(names, preds) -> tuple[dict[str, int], dict[int, list[str]]]:
    """Depth (layer) per node and the nodes of each layer in row order.

    `names`: every node in graph order (graph inputs included, as pseudo-nodes); `preds`: node ->
    the nodes it reads from. O(nodes + edges) plus one sort per layer. Cycles (invalid ONNX) are
    broken in graph order.
    """
    names = list(dict.fromkeys(names))
    known = set(names)
    preds = {n: [p for p in dict.fromkeys(preds.get(n, ())) if p in known and p != n] for n in names}
    succs: dict[str, list[str]] = defaultdict(list)
    for n, ps in preds.items():
        for p in ps:
            succs[p].append(n)
    missing = {n: len(preds[n]) for n in names}
    queue = deque(n for n in names if missing[n] == 0)
    depth: dict[str, int] = {}
    done: list[str] = []
    rest = iter(names)
    while len(done) < len(names):
        if not queue:  # a cycle: take the first node not yet placed
            queue.append(next(n for n in rest if n not in depth))
        n = queue.popleft()
        if n in depth:
            continue
        depth[n] = 1 + max((depth[p] for p in preds[n] if p in depth), default=-1)
        done.append(n)
        for s in succs[n]:
            missing[s] -= 1
            if missing[s] == 0:
                queue.append(s)
    layers: dict[int, list[str]] = defaultdict(list)
    for n in done:
        layers[depth[n]].append(n)
    row: dict[str, float] = {}
    for d in sorted(layers):  # barycentre of the predecessors' rows, graph order on ties
        members = layers[d]
        if d > 0 and len(members) > 1:
            def key(n):
                rows = [row[p] for p in preds[n] if p in row]
                return sum(rows) / len(rows) if rows else 0.0
            members.sort(key=key)
        for i, n in enumerate(members):
            row[n] = i - (len(members) - 1) / 2
    return depth, dict(layers)


def strips_for(depth: int, tallest: int, view_w: float, view_h: float) -> int:
    """How many strips (rows of layers, like lines of text) show `depth` layers largest in a
    `view_w` x `view_h` view; ties (within 5%) go to fewer strips, and a graph that fits at
    full size is not wrapped."""
    col, row = NODE_W + COL_GAP, NODE_H + ROW_GAP
    best, best_scale = 1, -1.0
    for s in range(1, min(depth, MAX_STRIPS) + 1):
        per = math.ceil(depth / s)
        used = math.ceil(depth / per)
        w = per * col - COL_GAP + 80
        h = used * tallest * row + (used - 1) * STRIP_GAP + 80
        scale = min(view_w / w, view_h / h, 1.0)
        if scale > best_scale * 1.05:
            best, best_scale = s, scale
    return best


def place(layers: dict[int, list[str]], strips: int = 1) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    """Scene position (top-left) and band of every node, from the layers of `layered_layout`.

    Layers go left to right, a layer's nodes top to bottom, centred; the layers wrap into
    `strips` strips one under the other (see `strips_for`). A band is up to `BAND` consecutive
    layers of one strip.
    """
    col, row = NODE_W + COL_GAP, NODE_H + ROW_GAP
    depth = max(layers, default=-1) + 1
    per_strip = max(1, math.ceil(depth / max(1, strips)))
    pos: dict[str, tuple[float, float]] = {}
    band_of: dict[str, int] = {}
    top = 0.0
    bands_per_strip = math.ceil(per_strip / BAND)
    for strip in range(math.ceil(depth / per_strip) if depth else 0):
        ds = range(strip * per_strip, min(depth, (strip + 1) * per_strip))
        rows = max(len(layers.get(d, ())) for d in ds)
        for d in ds:
            members = layers.get(d, ())
            x = (d - strip * per_strip) * col
            offset = (rows - len(members)) / 2
            band = strip * bands_per_strip + (d - strip * per_strip) // BAND
            for i, n in enumerate(members):
                pos[n] = (x, top + (i + offset) * row)
                band_of[n] = band
        top += rows * row + STRIP_GAP
    return pos, band_of
