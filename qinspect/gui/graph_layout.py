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
    layers = _layers(len(names), edges)
    cells = {}
    left = 0.0
    for members, local_edges in _components(len(names), edges):
        xs = [0.0]  # a lone node: igraph has nothing to order
        if local_edges:
            graph = igraph.Graph(n=len(members), edges=local_edges, directed=True)
            xs = [x for x, _ in graph.layout_sugiyama(layers=[layers[v] for v in members],
                                                      maxiter=CROSSING_PASSES).coords[: len(members)]]
        for v, x in zip(members, xs):
            cells[names[v]] = (left + float(x), layers[v])
        left += max(xs) + 1.0
    return _spread(cells)


def _components(count: int, edges) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Weakly connected components, each as (its vertices in order, its edges renumbered), ordered by
    their first vertex as igraph orders them. igraph 1.0's Sugiyama layout must get one component at a
    time: with several, it looks up the edge of a dummy vertex (an edge spanning layers) at the wrong
    index and reads past its arrays (sugiyama.c sizes `new_vertex_id_to_edge_id` by the whole graph's
    vertex count but indexes it by the component's), which crashed the process now and then."""
    parent = list(range(count))

    def root(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for a, b in edges:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for v in range(count):
        groups.setdefault(root(v), []).append(v)
    local = {}
    for members in groups.values():
        local.update({v: i for i, v in enumerate(members)})
    inner: dict[int, list[tuple[int, int]]] = {r: [] for r in groups}
    for a, b in edges:
        inner[root(a)].append((local[a], local[b]))
    return [(members, inner[r]) for r, members in sorted(groups.items(), key=lambda item: item[1][0])]


def _layers(count: int, edges) -> list[int]:
    """Longest-path layers (igraph's own layering, 1.0.0, crashed on a random search of small DAGs
    within 10,000 layouts; with layers given it still did, more rarely: see `_components`). Nodes are taken in topological order (Kahn); nodes on a cycle (an
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
