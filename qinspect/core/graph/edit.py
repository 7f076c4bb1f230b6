"""Graph surgery on ONNX models, shared by the QDQ exporter (`io/qdq.py`) and the simulation."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError
from .walk import _constant_tensor  # the same reading of Constant attributes as the index


def all_graphs(graph: onnx.GraphProto):
    """`graph` and every subgraph below it."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from all_graphs(g)


class NameMaker:
    """Fresh tensor names that collide with nothing in the model."""

    def __init__(self, model: onnx.ModelProto):
        self.taken: set[str] = set()
        for g in all_graphs(model.graph):
            self.taken.update(v.name for v in list(g.input) + list(g.output) + list(g.value_info))
            self.taken.update(t.name for t in g.initializer)
            for n in g.node:
                self.taken.update(n.input)
                self.taken.update(n.output)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


Block = Callable[[str, str], list]  # (source tensor, output tensor) -> nodes computing output


def insert_blocks(model: onnx.ModelProto, blocks: dict[str, Block], names: NameMaker) -> dict[str, str]:
    """Put `blocks[T]` between every tensor T and its consumers, in whichever graph produces T.

    A node output T is renamed at its producer and the block writes T, so consumers, graph outputs
    and subgraph references keep their names. A graph input cannot be renamed: its readers are
    pointed at the block's output instead; the returned dict maps such inputs to that output.
    """
    renames: dict[str, str] = {}
    for g in all_graphs(model.graph):
        for vi in g.input:
            if vi.name in blocks:
                renames[vi.name] = names(vi.name + "_qdq")
    if renames:
        for g in all_graphs(model.graph):
            for n in g.node:
                for i, x in enumerate(n.input):
                    if x in renames:
                        n.input[i] = renames[x]
            for o in g.output:
                # A subgraph output is positional: read the quantized value. A main-graph output
                # that passes an input through keeps its name (and the float value it passes).
                if o.name in renames and g is not model.graph:
                    o.name = renames[o.name]
    for g in all_graphs(model.graph):
        new_nodes = []
        for vi in g.input:
            if vi.name in blocks:
                new_nodes.extend(blocks[vi.name](vi.name, renames[vi.name]))
        for n in g.node:
            new_nodes.append(n)
            for i, out in enumerate(n.output):
                if out in blocks:
                    src = names(out + "_float")
                    n.output[i] = src
                    new_nodes.extend(blocks[out](src, out))
        del g.node[:]
        g.node.extend(new_nodes)
    return renames


def constants_to_initializers(model: onnx.ModelProto, wanted: set[str]) -> None:
    """Turn the Constant nodes that produce `wanted` tensors into initializers of their graph."""
    for g in all_graphs(model.graph):
        keep = []
        for n in g.node:
            if n.op_type == "Constant" and n.output and n.output[0] in wanted:
                t = TensorProto()
                t.CopyFrom(_constant_tensor(n))
                t.name = n.output[0]
                g.initializer.append(t)
            else:
                keep.append(n)
        if len(keep) != len(g.node):
            del g.node[:]
            g.node.extend(keep)


def elem_type(index, name: str) -> int:
    info = index.tensors.get(name)
    try:
        return helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype)) if info and info.dtype else TensorProto.FLOAT
    except Exception:
        return TensorProto.FLOAT


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def convert_opset(model: onnx.ModelProto, target: int, label: str) -> onnx.ModelProto:
    """`model` at default-domain opset `target` (converted with onnx.version_converter). A model
    that imports no default-domain opset (only ai.onnx.ml, say) has nothing to convert: it gets the import."""
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.opset_import.append(onnx.helper.make_opsetid("", target))
        return out
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, target)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{label}: cannot convert the model from opset {opset_of(model)} to {target} "
                         f"({first[:200]}); convert it yourself and export again") from exc
    return converted
