"""Reading ONNX graphs: walks over nodes and subgraphs, declared types, Constant node values.

Shared by the model index (`model.py`), its placement rules (`placement.py`) and the reading of an
already quantized model's encodings (`prequantized.py`).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NOT_A_TENSOR = -1  # elem type marker for sequence/map/optional values: never quantized
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


def _np_dtype(elem: int) -> np.dtype | None:
    if elem in (0, NOT_A_TENSOR):
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:
        return None


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _all_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors
        for sub in _subgraphs(node):
            yield from _all_tensors(sub)


def _walk(graph: onnx.GraphProto, owner: onnx.NodeProto | None = None, counter: list | None = None):
    """Yield (graph, graph id, owner node, node) in execution order; node None marks a graph's entry.

    A control-flow node's subgraphs are yielded just before the node itself, since they run as part
    of it. Graph ids count graphs in this order, so they are the same on every walk.
    """
    counter = counter if counter is not None else [0]
    gid = counter[0]
    counter[0] += 1
    yield graph, gid, owner, None
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _walk(sub, node, counter)
        yield graph, gid, owner, node


def _dims(vtype: onnx.TypeProto) -> tuple | None:
    if not vtype.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in vtype.tensor_type.shape.dim)



def _constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The value of a Constant node as a TensorProto (dense attributes only)."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), np.int64))
    return None  # sparse_value and strings: not treated as constants


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    return numpy_helper.to_array(_constant_tensor(node))
