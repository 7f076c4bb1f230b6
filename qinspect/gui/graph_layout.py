"""Top-down layered layout of a model graph (no Qt), for `graph_view`.

igraph's Sugiyama layout does the work Netron's reader expects: layers by longest path (computed
here, in graph order: see `_layers`), crossings reduced by the barycentre heuristic,
nodes of a layer spread over columns. It is C code: a few milliseconds for thousands of nodes.
igraph is a dependency for this alone; a hand-written layering wrapped long graphs into rows
that read like a thin strip.

- `layered_layout`: (column, layer) per node, top to bottom;
- `place`: scene positions and bands of `BAND` consecutive layers, the unit in which the view
  creates scene items.
"""
from __future__ import annotations

import igraph

NODE_W, NODE_H = 140.0, 40.0
COL_GAP, ROW_GAP = 24.0, 34.0
BAND = 16  # layers per band: the unit of lazy item creation
CROSSING_PASSES = 20  # barycentre sweeps: more buys few fewer crossings on model graphs


def layered_layout(names, preds) -> dict[str, tuple[float, int]]:
    """(column, layer) of every node; layer 0 at the top. `names`: every node (graph inputs
    included, as pseudo-nodes); `preds`: node -> the nodes it reads from (unknown ones ignored)."""
    names = list(dict.fromkeys(names))
    idx = {n: i for i, n in enumerate(names)}
    edges = sorted({(idx[p], idx[n]) for n, ps in preds.items() if n in idx for p in ps if p in idx and p != n})
    if not names:
        return {}
    graph = igraph.Graph(n=len(names), edges=edges, directed=True)
    coords = graph.layout_sugiyama(layers=_layers(len(names), edges), maxiter=CROSSING_PASSES).coords[: len(names)]
    cells = {n: (float(x), int(round(y))) for n, (x, y) in zip(names, coords)}
    return _spread(cells)


def _layers(count: int, edges) -> list[int]:
    """Longest-path layers. igraph layers by itself otherwise, and that code (1.0.0) corrupts memory
    on some graphs: a random search of small DAGs crashed the process within 10,000 layouts, never
    with the layers given. Nodes are taken in topological order (Kahn); nodes on a cycle (an
    invalid model) follow in their given order, and an edge back along that order does not push
    its head down."""
    succ: list[list[int]] = [[] for _ in range(count)]
    indegree = [0] * count
    for a, b in edges:
        succ[a].append(b)
        indegree[b] += 1
    ready = [v for v in range(count) if indegree[v] == 0]
    order = []
    while ready:
        v = ready.pop()
        order.append(v)
        for w in succ[v]:
            indegree[w] -= 1
            if indegree[w] == 0:
                ready.append(w)
    seen = set(order)
    order += [v for v in range(count) if v not in seen]
    position = {v: i for i, v in enumerate(order)}
    layer = [0] * count
    for v in order:
        for w in succ[v]:
            if position[w] > position[v]:
                layer[w] = max(layer[w], layer[v] + 1)
    return layer


def _spread(cells: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
    """At least one column between the nodes of a layer, keeping their order: igraph (1.0) can put
    nodes of separate components, or a lone node, on the same spot (seen on YOLOv8's graph)."""
    layers: dict[int, list[str]] = {}
    for n, (_, layer) in cells.items():
        layers.setdefault(layer, []).append(n)
    out = {}
    for layer, members in layers.items():
        last = None
        for n in sorted(members, key=lambda m: cells[m][0]):
            x = cells[n][0] if last is None else max(cells[n][0], last + 1.0)
            out[n] = (x, layer)
            last = x
    return out


def place(cells: dict[str, tuple[float, int]]) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    """Scene position (top-left) and band of every node, from `layered_layout`'s cells."""
    pos = {n: (col * (NODE_W + COL_GAP), layer * (NODE_H + ROW_GAP)) for n, (col, layer) in cells.items()}
    band_of = {n: layer // BAND for n, (_, layer) in cells.items()}
    return pos, band_of
