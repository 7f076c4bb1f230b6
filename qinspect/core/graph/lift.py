"""Read tensors of control-flow subgraphs from outside: carry them out to main-graph outputs.

A value computed inside an If branch or a Loop/Scan body is invisible outside its subgraph. To
calibrate it, `lift` adds it as an output of its subgraph and carries it out through the node that
owns the subgraph, graph by graph, up to a new main-graph output:

- If: an extra output of both branches. The branch that does not compute the tensor returns an
  empty tensor of the same type and rank, so the main-graph output is empty whenever that branch
  ran (statistics then simply see no values).
- Loop and Scan: an extra scan output of the body, which the node stacks over its iterations, so
  the main-graph output holds every iteration's values (memory grows with the iteration count). A
  tensor whose shape changes from one iteration to the next cannot be stacked: onnxruntime then
  fails at run time and calibration reports that tensor instead of failing.
- Other ops with subgraphs (SequenceMap, custom ops) cannot carry values out: those tensors are
  refused with a reason.

The model is changed in place; call it on a copy.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .edit import NameMaker

CARRIERS = frozenset({"If", "Loop", "Scan"})


def _subgraph_attrs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g


def _scopes(graph: onnx.GraphProto, parent=None, out=None) -> dict:
    """Tensor name -> (graph, parent) for every value produced in or fed to each graph; parent is
    (owner node, attribute name, owner's graph) or None for the main graph."""
    out = {} if out is None else out
    for vi in graph.input:
        out.setdefault(vi.name, (graph, parent))
    for node in graph.node:
        for name in node.output:
            if name:
                out.setdefault(name, (graph, parent))
        for attr, sub in _subgraph_attrs(node):
            _scopes(sub, (node, attr, graph), out)
    return out


def _empty(name: str, elem: int, rank: int) -> onnx.NodeProto:
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    value = numpy_helper.from_array(np.zeros((0,) * max(rank, 1), dtype=dtype))
    return helper.make_node("Constant", [], [name], value=value)


def lift(model: onnx.ModelProto, names: Iterable[str], elem: dict[str, int],
         rank: dict[str, int] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Make each subgraph tensor of `names` readable as a main-graph output.

    `elem` gives each tensor's ONNX element type, `rank` its rank when known (for the empty value
    of the other If branch). Returns (main-graph output name by tensor, reason by refused tensor).
    Tensors of the main graph map to themselves and are not added as outputs here.
    """
    rank = rank or {}
    scopes = _scopes(model.graph)
    fresh = NameMaker(model)
    exposed: dict[str, str] = {}
    refused: dict[str, str] = {}
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in scopes:
            refused[name] = "not produced by any graph of the model"
            continue
        graph, parent = scopes[name]
        if parent is None:
            exposed[name] = name
            continue
        owners = []
        p = parent
        while p is not None:
            owners.append(p)
            p = scopes.get(p[0].output[0], (None, None))[1] if p[0].output else None
        bad = next((node for node, _, _ in owners if node.op_type not in CARRIERS), None)
        if bad is not None:
            refused[name] = f"inside {bad.op_type} '{bad.name}', whose subgraph cannot pass values out"
            continue
        current, current_graph, current_parent = name, graph, parent
        e = elem.get(name, TensorProto.FLOAT)
        r = rank.get(name, 1)
        while current_parent is not None:
            node, attr, outer = current_parent
            inner = fresh(f"{current}__lift")
            current_graph.node.append(helper.make_node("Identity", [current], [inner]))
            current_graph.output.append(helper.make_tensor_value_info(inner, e, None))
            if node.op_type == "If":
                other = next(g for a, g in _subgraph_attrs(node) if a != attr)
                blank = fresh(f"{current}__empty")
                other.node.append(_empty(blank, e, r))
                other.output.append(helper.make_tensor_value_info(blank, e, None))
            else:  # Loop/Scan: a new scan output, stacked over iterations on axis 0
                r += 1
                if node.op_type == "Scan":
                    for a in node.attribute:
                        if a.name in ("scan_output_axes", "scan_output_directions"):
                            a.ints.append(0)
            carried = fresh(f"{current}__out")
            node.output.append(carried)
            current, current_graph = carried, outer
            current_parent = scopes.get(node.output[0], (None, None))[1]
        exposed[name] = current
        if current not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(current, e, None))
            outputs.add(current)
    return exposed, refused
