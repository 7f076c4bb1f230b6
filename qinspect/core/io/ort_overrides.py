"""The plan as onnxruntime's `TensorQuantOverrides` (the `extra_options` of `quantize_static`).

`ort_tensor_quant_overrides(index, encodings)` gives the dict onnxruntime takes: tensor name -> a
list with one dict (per tensor) or one dict per channel (the first carrying ``axis``), each with
``quant_type`` (a `QuantType`), ``scale`` (numpy float32) and ``zero_point`` (numpy, of the storage
type), mapped from qinspect's encodings as the QDQ exporter maps them (spec 4.2).

What onnxruntime's quantizer cannot be told this way:
- biases: onnxruntime derives int32 biases from input scale x weight scale itself (our rule too);
  `ort_quantize_kwargs` sets ``QDQDisableWeightAdjustForInt32Bias`` so it keeps our weight scales;
- float16/float32 tensors: there is no "keep float" override. `ort_quantize_kwargs` lists in
  ``nodes_to_exclude`` the nodes that make and read each float tensor (whole fused groups, so the
  quantizer adds nothing inside a Conv+Relu), which keeps it float and adds no quantizer qinspect
  does not have; the integer tensors those nodes had come out float too (whole nodes only), and
  `ort_overrides_dict` names them in ``left_float`` and its notes.

`write_ort_overrides` stores the same thing as JSON (types as names, numbers as numbers) and
`read_ort_overrides` turns such a file back into keyword arguments for `quantize_static`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import OverridesError
from ..graph.edit import opset_of
from ..quant.encoding import Encoding
from ..quant.qparams import QParams, complete_encodings, onnx_qparams
from .files import atomic_write, read_json

FORMAT = "onnxruntime-tensor-quant-overrides"
QUANT_TYPES = {  # (bits, signed) -> onnxruntime QuantType name
    (4, False): "QUInt4", (4, True): "QInt4", (8, False): "QUInt8", (8, True): "QInt8",
    (16, False): "QUInt16", (16, True): "QInt16",
    (7, True): "QInt8",  # a 7-bit weight grid in int8: onnxruntime quantizes the weight with our scale
}
_NP = {"QUInt4": np.uint8, "QInt4": np.int8, "QUInt8": np.uint8, "QInt8": np.int8,
       "QUInt16": np.uint16, "QInt16": np.int16}


def _entries(qp: QParams, axis: int | None) -> list[dict]:
    qtype = QUANT_TYPES[(qp.bw, qp.signed)]
    scales = np.atleast_1d(qp.scale)
    zps = np.atleast_1d(qp.zero_point)
    if axis is None:
        return [{"quant_type": qtype, "scale": float(scales[0]), "zero_point": int(zps[0])}]
    rows = [{"quant_type": qtype, "scale": float(s), "zero_point": int(z)} for s, z in zip(scales, zps)]
    rows[0]["axis"] = int(axis)
    return rows


def _group(index, node: str) -> list[str]:
    """`node` with the op it is fused with (Conv -> Relu): onnxruntime's quantizer must keep both
    float or neither, else it quantizes the tensor between them, which qinspect never does."""
    for head, out in index.fused_output.items():
        act = index.tensors[out].producer if out in index.tensors else None
        if act and act != head and node in (head, act):
            return [head, act]
    return [node]


def _float_nodes(index, encodings) -> tuple[list[str], list[str]]:
    """Nodes onnxruntime's quantizer must leave alone so that every float tensor of the plan stays
    float: the producer and the consumers of each float activation (aliases of one included), and
    the consumers of float weights; plus what that costs (integer tensors those nodes had)."""
    floats = [n for n, t in index.targets.items() if t.kind != "bias" and encodings.get(n) is not None
              and encodings[n].is_float]
    tensors = set(floats) | {a for a in index.aliases if index.encoding_source(a) in floats}
    exclude: list[str] = []
    for name in sorted(tensors, key=list(index.tensors).index):
        info = index.tensors.get(name)
        nodes = list(info.consumers) if info else []
        if index.targets.get(name) is None or index.targets[name].kind == "activation":
            nodes = ([info.producer] if info and info.producer else []) + nodes
        for node in nodes:
            exclude += [n for n in _group(index, node) if n not in exclude]
    lost = []
    for node in exclude:  # weights and biases of the excluded nodes stay float
        group = index.op_groups().get(node)
        for t in (group.weight, group.bias) if group else ():
            if t and t in encodings and not encodings[t].is_float and t not in lost:
                lost.append(t)
    excluded = set(exclude)
    ints = [n for n, t in index.targets.items() if t.kind == "activation" and encodings.get(n) is not None
            and not encodings[n].is_float]
    for name in ints:  # an activation no quantized node makes or reads gets no quantizer there either
        info = index.tensors.get(name)
        nodes = ([info.producer] if info.producer else []) + list(info.consumers) if info else []
        if nodes and all(n in excluded for n in nodes):
            lost.append(name)
    return exclude, lost


def _plain(index, encodings: dict[str, Encoding]) -> tuple[dict, list[str], list[str], list[str]]:
    """JSON-friendly overrides, nodes to exclude, notes, and the integer tensors they leave float."""
    encodings = complete_encodings(index, encodings)
    overrides: dict[str, list[dict]] = {}
    exclude, lost = _float_nodes(index, encodings)
    floats, unexpressible = [], []
    for name, target in index.targets.items():
        enc = encodings.get(name)
        if enc is None or target.kind == "bias":
            continue
        if enc.is_float:
            floats.append(name)
            continue
        qp = onnx_qparams(enc)
        if qp is None or (qp.bw, qp.signed) not in QUANT_TYPES:
            unexpressible.append(name)
            continue
        overrides[name] = _entries(qp, qp.axis)
    for alias in index.aliases:  # data-movement outputs: explicitly the source's parameters
        enc = encodings.get(index.encoding_source(alias))
        if alias not in overrides and enc is not None and not enc.is_float and not enc.per_channel:
            qp = onnx_qparams(enc)
            if qp is not None and (qp.bw, qp.signed) in QUANT_TYPES:
                overrides[alias] = _entries(qp, None)
    notes = []
    if floats:
        notes.append(f"{len(floats)} tensor(s) stay float: the nodes that make and read them are in "
                     f"nodes_to_exclude ({', '.join(exclude[:8])}{' ...' if len(exclude) > 8 else ''})")
    if lost:
        notes.append(f"onnxruntime's quantizer can keep a tensor float only by leaving whole nodes float, so these "
                     f"integer tensors of qinspect's plan come out float in its model (qinspect's own QDQ export "
                     f"keeps them): {', '.join(lost[:8])}{' ...' if len(lost) > 8 else ''}")
    if unexpressible:
        notes.append(f"no onnxruntime quant type for: {', '.join(unexpressible[:6])}")
    return overrides, exclude, notes, lost


def _to_ort(plain: dict) -> dict:
    from onnxruntime.quantization import QuantType

    out = {}
    for name, rows in plain.items():
        converted = []
        for row in rows:
            qtype = row["quant_type"]
            if qtype not in _NP:
                raise OverridesError(f"{name}: unknown quant_type {qtype!r}; use one of {sorted(_NP)}")
            r = {"quant_type": QuantType[qtype], "scale": np.array(row["scale"], np.float32),
                 "zero_point": np.array(row["zero_point"], _NP[qtype])}
            if "axis" in row:
                r["axis"] = int(row["axis"])
            converted.append(r)
        out[name] = converted
    return out


def ort_tensor_quant_overrides(index, encodings: dict[str, Encoding]) -> dict:
    """`TensorQuantOverrides` for onnxruntime's `quantize_static` (QuantType and numpy values)."""
    return _to_ort(_plain(index, encodings)[0])


def ort_quantize_kwargs(index, encodings: dict[str, Encoding]) -> dict:
    """Keyword arguments for `quantize_static(model_in, model_out, reader, **kwargs)`."""
    plain, exclude, _, _ = _plain(index, encodings)
    return _kwargs(_to_ort(plain), exclude, _extra(index, plain))


def _extra(index, plain: dict) -> dict:
    """Options onnxruntime needs besides the overrides."""
    extra = {"QDQDisableWeightAdjustForInt32Bias": True}
    types = {row["quant_type"] for rows in plain.values() for row in rows}
    # 4-bit types before opset 21 need com.microsoft Q/DQ (16-bit ones make onnxruntime move the
    # model to opset 21 itself). onnxruntime 1.31 validates only the first tensor's overrides, so
    # it misses a 4-bit weight further down: say it explicitly.
    if types & {"QInt4", "QUInt4"} and not types & {"QInt16", "QUInt16"} and opset_of(index.model) < 21:
        extra["UseQDQContribOps"] = True
    return extra


def _kwargs(overrides: dict, exclude: list[str], extra: dict) -> dict:
    per_channel = any("axis" in rows[0] for rows in overrides.values())
    return {
        "extra_options": {"TensorQuantOverrides": overrides, **extra},
        "nodes_to_exclude": list(exclude),
        "per_channel": per_channel,
    }


def ort_overrides_dict(index, encodings: dict[str, Encoding]) -> dict:
    plain, exclude, notes, lost = _plain(index, encodings)
    return {
        "format": FORMAT,
        "producer": "qinspect",
        "TensorQuantOverrides": plain,
        "nodes_to_exclude": exclude,
        "extra_options": _extra(index, plain),
        "notes": notes,
        "left_float": lost,  # integer in qinspect's plan, float in the model quantize_static makes
    }


def call_lines(doc: dict, path) -> list[str]:
    """How the file goes to onnxruntime: quantize_static with the keyword arguments it becomes."""
    extra = dict(doc["extra_options"])
    overrides = doc["TensorQuantOverrides"]
    per_channel = any("axis" in rows[0] for rows in overrides.values())
    extras = ", ".join(f"{k!r}: {v!r}" for k, v in extra.items())
    return [
        "onnxruntime.quantization.quantize_static(model_in, model_out, calibration_reader,",
        "    quant_format=QuantFormat.QDQ,",
        f"    per_channel={per_channel},",
        f"    nodes_to_exclude={doc['nodes_to_exclude']!r},",
        f"    extra_options={{'TensorQuantOverrides': <{len(overrides)} tensors from the file>, {extras}}})",
        f"  # the same keyword arguments in Python: qinspect.core.io.ort_overrides.read_ort_overrides({str(path)!r})",
    ]


def write_ort_overrides(path, index, encodings: dict[str, Encoding], *, protect=()) -> Path:
    """Write the overrides as JSON, atomically."""
    doc = ort_overrides_dict(index, encodings)
    return atomic_write(path, json.dumps(doc, indent=2) + "\n", protect=protect)


def read_ort_overrides(path) -> dict:
    """Keyword arguments for `quantize_static` from a file `write_ort_overrides` wrote."""
    path = Path(path)
    doc = read_json(path, OverridesError)
    if not isinstance(doc, dict) or not isinstance(doc.get("TensorQuantOverrides"), dict):
        raise OverridesError(f"{path}: no TensorQuantOverrides object; write it with qinspect export --ort-overrides")
    extra = doc.get("extra_options", {})
    if not isinstance(extra, dict):
        raise OverridesError(f"{path}: extra_options must be an object")
    return _kwargs(_to_ort(doc["TensorQuantOverrides"]), list(doc.get("nodes_to_exclude", [])), extra)
