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

Module layout: ONNX quantization parameters and the rule on constants are in `quant/qparams.py`,
graph surgery in `graph/edit.py`, external data layout in `external.py`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant.encoding import Encoding
from ..errors import QInspectError
from ..progress import NullProgress, Progress, check_cancel
from .external import _external_input_files, _write_data
from .files import atomic_write, check_target, write_error
from ..graph.edit import Block, NameMaker, all_graphs, constants_to_initializers, convert_opset, elem_type, insert_blocks
from ..graph.edit import opset_of
from ..quant.qparams import _along, _int_tensor, _param_tensors, complete_encodings, onnx_qparams, quantize_constant
from ..targets.cpu import saturating_weights, saturation_message
from ..targets.profiles import get_target
from ..targets.rules import unsupported

OPSET_8BIT = 13
OPSET_WIDE = 21  # int16/uint16/int4/uint4 QuantizeLinear and DequantizeLinear
IR_FOR_OPSET = {OPSET_8BIT: 7, OPSET_WIDE: 10}
# Above this the model's tensors go to an external data file (protobuf's hard limit is 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30


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


def _opset_needed(used: list[tuple[str, Encoding]]) -> int:
    wide = [n for n, e in used if not e.is_float and e.bw in (4, 16)]
    return OPSET_WIDE if wide else OPSET_8BIT


def _summarize(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _build(index, encodings: dict[str, Encoding], target: str | None = None) -> tuple[onnx.ModelProto, ExportReport]:
    label = index.path or "the in-memory model"
    encodings = complete_encodings(index, encodings)
    report = ExportReport(None, 0, 0)
    target_name = get_target(target).name
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
        values = index.quantized_value(name)  # a PTQ step's value (AdaRound's rounding) where it has one
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
    _stamp(model, target_name)
    for problem in unsupported(get_target(target_name), index, encodings):
        report.warnings.append(problem)
    saturation = saturation_message(saturating_weights(index, encodings), target_name)
    if saturation:
        kind, text = saturation.split(": ", 1)
        (report.warnings if kind == "warning" else report.notes).append(text)

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


def _stamp(model: onnx.ModelProto, target: str) -> None:
    """Name the producer and the target in the model's metadata (Netron shows it)."""
    from ... import __version__

    model.producer_name, model.producer_version = "qinspect", __version__
    props = {p.key: p.value for p in model.metadata_props}
    props["qinspect.target"] = target
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


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


def build_qdq_model(index, encodings: dict[str, Encoding], target: str | None = None
                    ) -> tuple[onnx.ModelProto, list[str]]:
    """The QDQ model of `encodings` on `index`, and warnings and notes for the user."""
    model, report = _build(index, encodings, target)
    return model, report.warnings + report.notes


def export_qdq(index, encodings: dict[str, Encoding], path, *, protect=(), progress: Progress | None = None,
               external_data: bool | None = None, target: str | None = None) -> ExportReport:
    """Write the QDQ model atomically to `path`; the input model and `protect` are never overwritten.

    `external_data`: None decides by itself (when the input model had external data, or the model
    is over 1 GB), True/False force it. The data file is ``<path name>.data`` next to `path`. A model
    indexed lazily (its data left on disk, see `load_model`) is always written with external data:
    its unchanged tensors are copied from the input's files in chunks, never loaded whole.
    """
    progress = progress or NullProgress()
    progress.update(0, 3, "building the QDQ model")
    model, report = _build(index, encodings, target)
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


def save_model(index, path, *, protect=()) -> Path:
    """Write the model `index` holds (the float model as the target runs it: BatchNormalization
    folded, PTQ steps applied, the values AdaRound and bias correction chose in place of the float
    ones) atomically, with external data when the input had them or it is over 1 GB."""
    path = Path(path)
    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    _put_ptq_values(model, index)
    in_files = _external_input_files(index)
    protect = [p for p in (index.path, *in_files, *protect) if p]
    source_dir = getattr(index, "external_dir", None)
    if in_files or source_dir or model.ByteSize() > EXTERNAL_DATA_BYTES:
        _save_external(model, path, protect, source_dir, check_file=bool(source_dir))
    else:
        atomic_write(path, model.SerializeToString(), protect=protect)
    return path


def _put_ptq_values(model: onnx.ModelProto, index) -> None:
    """The values PTQ steps chose (AdaRound's weights, corrected biases) in place of the float
    ones: the model a converter quantizes with the frozen encodings to get what qinspect shows."""
    values = getattr(index, "ptq_values", {})
    for t in model.graph.initializer:
        if t.name in values:
            t.CopyFrom(onnx.numpy_helper.from_array(np.asarray(values[t.name], onnx.helper.tensor_dtype_to_np_dtype(t.data_type)), t.name))


def _check_output(model) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # our own output failing the checker is a bug: say so plainly
        raise QInspectError(f"the QDQ model fails the ONNX checker ({str(exc).splitlines()[0][:200]}); "
                            "please report this with the model") from exc


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
