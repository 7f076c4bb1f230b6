"""QDQ ONNX export of a plan's encodings (encodings_spec.md section 4).

`export_qdq(index, encodings, path)` writes a model that onnxruntime runs on the CPU:

- activations: ``T -> QuantizeLinear -> DequantizeLinear -> consumers``. The producer's output is
  renamed and the DequantizeLinear writes ``T``, so every tensor keeps its name (and graph outputs
  their names) while carrying its quantized value. Data-movement outputs (`index.aliases`) get a
  Q/DQ pair with their source's encoding, the standard QDQ form (a no-op on values that are already
  on that grid, a requantization for Concat of differently encoded inputs);
- weights: integer initializers (int8/int4/int16, or uint when asymmetric) feeding a
  DequantizeLinear, per axis when the encoding is per channel;
- biases: int32 initializers with scale = input scale x weight scale and zero point 0, clipped to
  the int32 range with a warning when a value overflows;
- float16 tensors: Cast to float16 and back (weights are stored as float16); float32 tensors and
  tensors without an encoding stay as they are.

Mapping (spec 4.2): asymmetric encodings use unsigned storage with zp = -offset; symmetric ones
signed storage with zp 0. ONNX has no narrow range, so strict symmetric encodings (-127..127) are
exported with zp 0 and may also produce -128 (noted in the report). The opset is 13 when every
tensor is 8-bit (32-bit biases), 21 (IR 10) when one is 4- or 16-bit; an older model is converted
with onnx.version_converter first. Constants are quantized here with the ONNX rule
``rint(x / scale) + zp`` in float32 (float64 for int32 biases, whose codes need more than float32's
24-bit mantissa); `quantize_constant` and `dequantize_constant` are shared with the simulation.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..encoding import Encoding, bias_encoding
from ..errors import ModelError, QInspectError
from ..progress import NullProgress, Progress, check_cancel
from .files import atomic_write, check_target, write_error

OPSET_8BIT = 13
OPSET_WIDE = 21  # int16/uint16/int4/uint4 QuantizeLinear and DequantizeLinear
IR_FOR_OPSET = {OPSET_8BIT: 7, OPSET_WIDE: 10}
# Above this the model's tensors go to an external data file (protobuf's hard limit is 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30
STORAGE = {  # (bits, signed) -> ONNX element type
    (4, False): TensorProto.UINT4, (4, True): TensorProto.INT4,
    (8, False): TensorProto.UINT8, (8, True): TensorProto.INT8,
    (16, False): TensorProto.UINT16, (16, True): TensorProto.INT16,
    (32, True): TensorProto.INT32,
}


@dataclass(frozen=True)
class QParams:
    """An encoding in ONNX terms: float32 scale, zero point, storage type and its integer range."""

    scale: np.ndarray        # float32, shape () or (C,)
    zero_point: np.ndarray   # int64, same shape
    bw: int
    signed: bool
    axis: int | None

    @property
    def elem(self) -> int:
        return STORAGE[(self.bw, self.signed)]

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bw - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bw - 1) - 1 if self.signed else 2**self.bw - 1

    def label(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bw}" + ("/ch" if self.axis is not None else "")


def onnx_qparams(enc: Encoding) -> QParams | None:
    """ONNX (scale, zero point, type) of an integer encoding, or None if ONNX cannot hold it.

    Symmetric encodings whose offsets are all -2**(bw-1) (or -(2**(bw-1) - 1) when strict) become
    signed with zp 0; everything else unsigned with zp = -offset. 32-bit only fits signed (biases).
    """
    if enc.is_float or not enc.scale:
        return None
    half = 2 ** (enc.bw - 1)
    offsets = enc.offsets
    signed = enc.symmetric and bool(np.all(offsets == (-(half - 1) if enc.strict else -half)))
    if (enc.bw, signed) not in STORAGE:
        return None
    zp = np.zeros_like(offsets) if signed else -offsets
    many = enc.axis is not None and len(enc.scale) > 1
    scale = np.asarray(enc.scale, np.float32)
    return QParams(
        scale=scale if many else scale.reshape(()),
        zero_point=zp if many else zp.reshape(()),
        bw=enc.bw,
        signed=signed,
        axis=enc.axis if many else None,
    )


def _along(qp: QParams, values: np.ndarray, ndim: int) -> np.ndarray:
    if qp.axis is None:
        return values
    shape = [1] * ndim
    shape[qp.axis] = values.size
    return values.reshape(shape)


def quantize_constant(x: np.ndarray, qp: QParams, dtype=np.int64) -> np.ndarray:
    """Integer codes of a constant with ONNX QuantizeLinear's rule, saturated to the type, as `dtype`
    (int64 by default; the exporter asks for the storage type, so a large weight costs one float32
    temporary and its codes, nothing more)."""
    x = np.asarray(x)
    if qp.bw == 32:  # float32 cannot hold 31-bit codes: divide in float64 by the float32 scale
        t = np.divide(x, _along(qp, qp.scale.astype(np.float64), x.ndim), dtype=np.float64)
    else:
        t = np.divide(x, _along(qp, qp.scale, x.ndim), dtype=np.float32)
    t = np.asarray(t).reshape(x.shape) if np.ndim(t) else np.array([t]).reshape(())  # 0-d: an array
    zp = _along(qp, qp.zero_point, x.ndim)
    with np.errstate(invalid="ignore"):
        np.rint(t, out=t)
        np.add(t, zp, out=t, casting="unsafe")
    if not np.isfinite(t).all():  # NaN becomes 0 (the zero point); +-Inf saturates
        t = np.where(np.isnan(t), np.broadcast_to(zp, t.shape), t)
        t = np.nan_to_num(t, posinf=qp.qmax, neginf=qp.qmin)
    np.clip(t, qp.qmin, qp.qmax, out=t)
    return t.astype(dtype)


def dequantize_constant(q: np.ndarray, qp: QParams) -> np.ndarray:
    """float32 values of codes, as DequantizeLinear computes them: float(q - zp) * scale."""
    q = np.asarray(q, np.int64)
    diff = (q - _along(qp, qp.zero_point, q.ndim)).astype(np.float32)
    return diff * _along(qp, qp.scale, q.ndim)


def fake_quantize(x: np.ndarray, enc: Encoding | None) -> np.ndarray:
    """What a float tensor becomes in the exported model (float32): Q/DQ, a float16 round trip, or
    unchanged. Activations and constants follow the same rule."""
    x = np.asarray(x)
    if enc is None or (enc.is_float and enc.bw == 32):
        return x.astype(np.float32)
    if enc.is_float:
        return x.astype(np.float16).astype(np.float32)
    qp = onnx_qparams(enc)
    if qp is None:
        return x.astype(np.float32)
    return dequantize_constant(quantize_constant(x, qp), qp)


def _int_tensor(name: str, q: np.ndarray, qp: QParams) -> TensorProto:
    if qp.bw != 4:
        dtype = helper.tensor_dtype_to_np_dtype(qp.elem)
        return numpy_helper.from_array(q.astype(dtype, copy=False), name)
    flat = (q.ravel() & 0xF).astype(np.uint8)  # two's complement nibbles, low nibble first
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, qp.elem, list(q.shape), packed.tobytes(), raw=True)


def _param_tensors(prefix: str, qp: QParams, names: Callable[[str], str]) -> tuple[TensorProto, TensorProto]:
    scale = numpy_helper.from_array(qp.scale, names(prefix + "_scale"))
    zp = _int_tensor(names(prefix + "_zero_point"), qp.zero_point, qp)
    return scale, zp


# --- graph surgery, shared with the simulation ----------------------------------------------------


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
    from ..model import _constant_tensor  # the same reading of Constant attributes as the index

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
    """`model` at default-domain opset `target` (converted with onnx.version_converter)."""
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, target)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{label}: cannot convert the model from opset {opset_of(model)} to {target} "
                         f"({first[:200]}); convert it yourself and export again") from exc
    return converted


# --- the exporter ------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What `export_qdq` wrote and what the user should know about it."""

    path: Path | None
    opset: int
    ir_version: int
    converted_from: int | None = None
    external_data: Path | None = None
    activations: int = 0           # Q/DQ pairs on activations (aliases included)
    weights: int = 0               # integer weights
    biases: int = 0                # integer biases
    float16: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)  # float32 by the plan
    missing: list[str] = field(default_factory=list)     # no encoding: stays float
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"wrote {self.path}: opset {self.opset}, IR {self.ir_version}, "
               f"{self.activations} activation Q/DQ, {self.weights} integer weights, {self.biases} integer biases, "
               f"{len(self.float16)} float16, {len(self.kept_float) + len(self.missing)} float32"]
        if self.external_data:
            out.append(f"tensor data in {self.external_data}")
        out += [f"note: {n}" for n in self.notes]
        out += [f"warning: {w}" for w in self.warnings]
        return out


def complete_encodings(index, encodings: dict[str, Encoding]) -> dict[str, Encoding]:
    """`encodings` plus int32 encodings for biases that have none while their op's input and
    weight are integer (scale = input scale x weight scale), as the QNN converter derives them."""
    out = dict(encodings)
    for name in index.biases():
        t = index.targets[name]
        if name in out or not t.bias_inputs:
            continue
        act, weight = t.bias_inputs
        a, w = out.get(index.encoding_source(act)), out.get(weight)
        if a is None or w is None or a.is_float or w.is_float or len(a.scale) != 1:
            continue
        out[name] = bias_encoding(a.scale[0], w.scales, axis=0)
    return out


def _opset_needed(used: list[tuple[str, Encoding]]) -> int:
    wide = [n for n, e in used if not e.is_float and e.bw in (4, 16)]
    return OPSET_WIDE if wide else OPSET_8BIT


def _summarize(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _build(index, encodings: dict[str, Encoding]) -> tuple[onnx.ModelProto, ExportReport]:
    label = index.path or "the in-memory model"
    encodings = complete_encodings(index, encodings)
    report = ExportReport(None, 0, 0)
    unknown = [n for n in encodings if n not in index.targets]
    if unknown:
        report.warnings.append(f"{len(unknown)} encoding(s) name no quantizer position and were ignored: "
                               f"{_summarize(unknown)}")
    # Tensors the model already quantizes keep the model's own quantizer: never a second one.
    existing = {n for n, t in index.targets.items() if getattr(t, "existing", None) is not None}
    changed = [n for n in existing if n in encodings and encodings[n] != index.targets[n].existing]
    if existing:
        report.notes.append(f"{len(existing)} tensor(s) the model already quantizes keep its own quantizers")
    if changed:
        report.warnings.append(f"edits to tensors the model already quantizes are not exported (their quantizers "
                               f"stay as the model has them): {_summarize(changed)}")
    used = [(n, encodings[n]) for n in index.targets if n in encodings and n not in existing]
    report.missing = [n for n in index.targets if n not in encodings and n not in existing]
    opset_now = opset_of(index.model)
    need = _opset_needed(used)
    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    if opset_now < need:
        model = convert_opset(model, need, label)
        report.converted_from = opset_now
        report.notes.append(f"converted the model from opset {opset_now} to {need} "
                            f"({'4/16-bit tensors need opset 21' if need == OPSET_WIDE else 'per-axis Q/DQ needs opset 13'})")
    opset = max(opset_now, need)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    model.ir_version = max(model.ir_version, IR_FOR_OPSET[OPSET_WIDE if opset >= OPSET_WIDE else OPSET_8BIT])
    report.opset, report.ir_version = opset, model.ir_version

    names = NameMaker(model)
    constants = {n for n, _ in used if index.targets[n].kind != "activation"}
    constants_to_initializers(model, constants)
    strict, unexpressible, overflow, nonfinite = [], [], [], []
    blocks: dict[str, Block] = {}
    const_blocks: dict[str, tuple] = {}  # initializer name -> (new tensor, nodes)

    def act_block(name: str, enc: Encoding) -> Block | None:
        elem = elem_type(index, name)
        if enc.is_float:
            if enc.bw != 16 or elem == TensorProto.FLOAT16:
                return None

            def cast_block(src, dst):
                half = names(dst + "_fp16")
                return [helper.make_node("Cast", [src], [half], to=TensorProto.FLOAT16),
                        helper.make_node("Cast", [half], [dst], to=elem)]

            return cast_block
        qp = onnx_qparams(enc)
        if qp is None or qp.bw == 32:
            unexpressible.append(name)
            return None
        s, z = _param_tensors(name, qp, names)
        model.graph.initializer.extend([s, z])
        axis = {"axis": qp.axis} if qp.axis is not None else {}

        def block(src, dst):
            nodes = []
            x = src
            if elem != TensorProto.FLOAT:
                x = names(dst + "_f32")
                nodes.append(helper.make_node("Cast", [src], [x], to=TensorProto.FLOAT))
            q, d = names(dst + "_q"), (dst if elem == TensorProto.FLOAT else names(dst + "_dq"))
            nodes.append(helper.make_node("QuantizeLinear", [x, s.name, z.name], [q], name=names(dst + "_Q"), **axis))
            nodes.append(helper.make_node("DequantizeLinear", [q, s.name, z.name], [d], name=names(dst + "_DQ"), **axis))
            if elem != TensorProto.FLOAT:
                nodes.append(helper.make_node("Cast", [d], [dst], to=elem))
            return nodes

        return block

    for name, enc in used:
        target = index.targets[name]
        if not enc.is_float and enc.strict:
            strict.append(name)
        if target.kind == "activation":
            block = act_block(name, enc)
            if block is not None:
                blocks[name] = block
                report.activations += 1
            if enc.is_float:
                (report.float16 if enc.bw == 16 else report.kept_float).append(name)
            continue
        values = index.initializer(name)
        elem = elem_type(index, name)
        bad = values.size - int(np.count_nonzero(np.isfinite(values))) if values.dtype.kind == "f" else 0
        if bad and not (enc.is_float and enc.bw == 32):
            nonfinite.append(f"{name} ({bad})")
        if enc.is_float:
            if enc.bw == 16:
                report.float16.append(name)
                if elem != TensorProto.FLOAT16:
                    t = numpy_helper.from_array(values.astype(np.float16), names(name + "_fp16"))
                    const_blocks[name] = (t, [helper.make_node("Cast", [t.name], [name], to=elem)])
            else:
                report.kept_float.append(name)
            continue
        qp = onnx_qparams(enc)
        if qp is None or (qp.bw == 32 and not qp.signed):
            unexpressible.append(name)
            continue
        if qp.axis is not None and (values.ndim <= qp.axis or values.shape[qp.axis] != qp.scale.size):
            raise QInspectError(f"{name}: {qp.scale.size} channel scales on axis {qp.axis} do not fit its shape "
                                f"{values.shape}; fix the encodings file")
        storage = np.int8 if qp.bw == 4 else helper.tensor_dtype_to_np_dtype(qp.elem)
        q = quantize_constant(values, qp, storage)
        if qp.bw == 32:
            # Saturating by one step is rounding-sized (AIMET's fallback bias scale max|b|/2^31 puts
            # the largest positive value exactly one step above int32's top): warn beyond that.
            with np.errstate(invalid="ignore"):
                raw = np.rint(values.astype(np.float64) / _along(qp, qp.scale.astype(np.float64), values.ndim))
            bad = int(np.count_nonzero(~(np.abs(raw - q) <= 1)))
            if bad:
                overflow.append(f"{name} ({bad} value(s))")
        t = _int_tensor(names(name + "_quantized"), q, qp)
        s, z = _param_tensors(name, qp, names)
        axis = {"axis": qp.axis} if qp.axis is not None else {}
        out = name if elem == TensorProto.FLOAT else names(name + "_dq")
        nodes = [helper.make_node("DequantizeLinear", [t.name, s.name, z.name], [out], name=names(name + "_DQ"), **axis)]
        if elem != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [out], [name], to=elem))
        const_blocks[name] = (t, nodes, s, z)
        if target.kind == "bias":
            report.biases += 1
        else:
            report.weights += 1

    # Aliases: a Q/DQ with the source's encoding (per-tensor only: a reshape changes the channel axis).
    for alias in index.aliases:
        source = index.encoding_source(alias)
        enc = encodings.get(source)
        if enc is None or enc.is_float or enc.per_channel or alias in blocks or source in existing:
            continue
        block = act_block(alias, enc)
        if block is not None:
            blocks[alias] = block
            report.activations += 1

    insert_blocks(model, blocks, names)
    _replace_constants(model, const_blocks)

    if report.missing:
        report.notes.append(f"{len(report.missing)} tensor(s) have no encoding and stay float: {_summarize(report.missing)}")
    if strict:
        report.notes.append(f"ONNX has no narrow range: strict symmetric tensors are exported with zero point 0 and "
                            f"can also take -2^(bw-1): {_summarize(strict)}")
    if unexpressible:
        report.warnings.append(f"no ONNX integer type holds these encodings (32-bit activations or asymmetric "
                               f"32-bit constants); they stay float: {_summarize(unexpressible)}")
    if nonfinite:
        report.warnings.append(f"constants hold NaN/Inf values (exported as 0 and saturated to the range): "
                               f"{_summarize(nonfinite)}")
    if overflow:
        report.warnings.append(f"bias values overflow int32 and were clipped (input scale x weight scale is too "
                               f"small for them): {_summarize(overflow)}")
    return model, report


def _replace_constants(model: onnx.ModelProto, const_blocks: dict[str, tuple]) -> None:
    """Swap each float initializer for its stored form plus the nodes that rebuild it."""
    if not const_blocks:
        return
    for g in all_graphs(model.graph):
        mine = [t.name for t in g.initializer if t.name in const_blocks]
        if not mine:
            continue
        kept = [t for t in g.initializer if t.name not in const_blocks]
        added, nodes = [], []
        for name in mine:
            stored, rebuild, *params = const_blocks[name]
            added.append(stored)
            added.extend(params)
            nodes.extend(rebuild)
        del g.initializer[:]
        g.initializer.extend(kept + added)
        # Old models list initializers as graph inputs too; a node output must not be one.
        inputs = [vi for vi in g.input if vi.name not in const_blocks]
        del g.input[:]
        g.input.extend(inputs)
        rest = list(g.node)
        del g.node[:]
        g.node.extend(nodes + rest)


def build_qdq_model(index, encodings: dict[str, Encoding]) -> tuple[onnx.ModelProto, list[str]]:
    """The QDQ model of `encodings` on `index`, and warnings and notes for the user."""
    model, report = _build(index, encodings)
    return model, report.warnings + report.notes


def _external_input_files(index) -> list[str]:
    """External data files of the input model, which an export must never overwrite."""
    if not index.path:
        return []
    base = os.path.dirname(os.path.abspath(index.path))
    try:
        if os.path.getsize(index.path) > 64 << 20:
            return []  # an inline model; a model with external data has a small .onnx file
        raw = onnx.load(index.path, load_external_data=False)
    except Exception:
        return []
    files = set()
    for g in all_graphs(raw.graph):
        for t in g.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), "")
                files.add(os.path.join(base, loc))
    return sorted(files)


def export_qdq(index, encodings: dict[str, Encoding], path, *, protect=(), progress: Progress | None = None,
               external_data: bool | None = None) -> ExportReport:
    """Write the QDQ model atomically to `path`; the input model and `protect` are never overwritten.

    `external_data`: None decides by itself (when the input model had external data, or the model
    is over 1 GB), True/False force it. The data file is ``<path name>.data`` next to `path`. A model
    indexed lazily (its data left on disk, see `load_model`) is always written with external data:
    its unchanged tensors are copied from the input's files in chunks, never loaded whole.
    """
    progress = progress or NullProgress()
    progress.update(0, 3, "building the QDQ model")
    model, report = _build(index, encodings)
    check_cancel(progress)
    path = Path(path)
    in_files = _external_input_files(index)
    protect = [p for p in (index.path, *in_files, *protect) if p]
    source_dir = getattr(index, "external_dir", None)
    check = model.ByteSize() < (2**31 - 1) and not source_dir
    if check:
        _check_output(model)
    if external_data is None:
        external_data = bool(in_files) or not check or model.ByteSize() > EXTERNAL_DATA_BYTES
    if source_dir and not external_data:
        external_data = True
        report.notes.append("written with external data: the input model's tensors stay in files")
    progress.update(1, 3, "writing")
    if external_data:
        report.external_data = _save_external(model, path, protect, source_dir, check_file=not check)
    else:
        atomic_write(path, model.SerializeToString(), protect=protect)
    report.path = path
    progress.update(3, 3, "done")
    return report


def _check_output(model) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # our own output failing the checker is a bug: say so plainly
        raise QInspectError(f"the QDQ model fails the ONNX checker ({str(exc).splitlines()[0][:200]}); "
                            "please report this with the model") from exc


ALIGN = 4096  # data offsets on page boundaries, so onnxruntime can map tensors instead of copying
_CHUNK = 16 << 20


def _write_data(model: onnx.ModelProto, data_path: Path, location: str, source_dir: str | None,
                threshold: int = 1024) -> bool:
    """Move the tensor data of `model` into one file at `data_path`, recorded under `location`:
    tensors of `threshold` bytes or more held in the proto, and tensors still stored in the input
    model's external files under `source_dir` (copied in chunks). True if the file got any data."""
    from ..model import FIXED_SIZE_TYPES, _all_tensors, _external_info

    wrote = False
    with open(data_path, "wb") as out:
        for t in _all_tensors(model.graph):
            if t.data_location == TensorProto.EXTERNAL:
                info = _external_info(t)
                if source_dir is None:
                    raise QInspectError(f"tensor '{t.name}' refers to external data that was not loaded; "
                                        "please report this with the model")
                length = int(info.get("length", 0) or 0) or len(numpy_helper.to_array(t, source_dir).tobytes())
                pos = _pad(out)
                with open(os.path.join(source_dir, info.get("location", "")), "rb") as src:
                    src.seek(int(info.get("offset", 0) or 0))
                    left = length
                    while left:
                        chunk = src.read(min(left, _CHUNK))
                        if not chunk:
                            raise QInspectError(f"external data of tensor '{t.name}' is truncated; re-export the "
                                                "input model")
                        out.write(chunk)
                        left -= len(chunk)
            else:
                if not t.HasField("raw_data") and t.data_type in FIXED_SIZE_TYPES and t.ByteSize() >= threshold:
                    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))  # typed fields -> raw
                if not t.HasField("raw_data") or len(t.raw_data) < threshold:
                    continue
                length = len(t.raw_data)
                pos = _pad(out)
                out.write(t.raw_data)
                t.ClearField("raw_data")
            del t.external_data[:]
            for key, value in (("location", location), ("offset", str(pos)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            t.data_location = TensorProto.EXTERNAL
            wrote = True
    return wrote


def _pad(out) -> int:
    pos = out.tell()
    if pos % ALIGN:
        out.write(b"\0" * (ALIGN - pos % ALIGN))
    return out.tell()


def _save_external(model: onnx.ModelProto, path: Path, protect, source_dir: str | None = None,
                   check_file: bool = False) -> Path | None:
    """Write `path` and `path.data` through a temp folder beside them, then rename both.

    Two files cannot be replaced in one step: the old data file is moved aside first and put back
    if the model file cannot be replaced, so the previous export stays whole on any failure.
    """
    data = path.with_name(path.name + ".data")
    for target in (path, data):
        check_target(target, protect)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    except OSError as exc:
        raise write_error(path, exc, started=False) from exc
    backup, created = None, False
    try:
        wrote = _write_data(model, tmp / data.name, data.name, source_dir)
        with open(tmp / path.name, "wb") as f:
            f.write(model.SerializeToString())
        if check_file:
            _check_output(str(tmp / path.name))  # by path: it checks the data file next to it
        if wrote:
            if data.exists():
                backup = tmp / (data.name + ".previous")
                os.replace(data, backup)
            os.replace(tmp / data.name, data)
            created = backup is None
        os.replace(tmp / path.name, path)
        backup = None
    except OSError as exc:
        _undo_data(data, backup, created)
        raise write_error(path, exc) from exc
    except BaseException:
        _undo_data(data, backup, created)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data if wrote else None


def _undo_data(data: Path, backup: Path | None, created: bool) -> None:
    try:
        if backup is not None and backup.exists():
            os.replace(backup, data)
        elif created and data.exists():
            os.unlink(data)
    except OSError:
        pass
