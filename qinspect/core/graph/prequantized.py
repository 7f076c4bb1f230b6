"""The encodings an already quantized model has (design §3, "Models from other tools").

`PrequantizedMixin` is mixed into `ModelIndex`: it reads Q/DQ pairs, QOperator and integer ops,
dynamic quantization and integer weights dequantized by Cast -> (Sub) -> Mul into
`existing_encodings` and `prequantized`, and finds the float tensors that never get a quantizer.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..quant.encoding import Encoding
from .walk import DEFAULT_DOMAINS, _walk

# Ops of an already quantized model (QDQ, QOperator, dynamic quantization).
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
STORAGE_BITS = {  # ONNX integer storage -> (bits, signed)
    TensorProto.INT8: (8, True), TensorProto.UINT8: (8, False), TensorProto.INT16: (16, True),
    TensorProto.UINT16: (16, False), TensorProto.INT4: (4, True), TensorProto.UINT4: (4, False),
    TensorProto.INT32: (32, True),
}


class PrequantizedMixin:
    """Mixed into ModelIndex; uses its tensors, nodes, constants, `initializer` and `is_float`."""

    def _const_array(self, name: str) -> np.ndarray | None:
        if not name or name not in self._const:
            return None
        try:
            return np.asarray(self.initializer(name))
        except Exception:
            return None

    def _onnx_encoding(self, scale: str, zero_point: str, elem: int, data: str, axis: int | None) -> Encoding | None:
        """Our encoding of ONNX (scale, zero point) on storage `elem`; None if it is not a static
        integer encoding we can express (computed scales, float8, blocked quantization)."""
        if elem not in STORAGE_BITS:
            return None
        bw, signed = STORAGE_BITS[elem]
        s = self._const_array(scale)
        if s is None:
            return None
        z = self._const_array(zero_point) if zero_point else np.zeros(1, np.int64)
        if z is None:
            return None
        s = s.astype(np.float64).ravel()
        z = z.astype(np.int64).ravel()
        if z.size not in (1, s.size) or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            return None
        z = np.broadcast_to(z, s.shape)
        offsets = -z - 2 ** (bw - 1) if signed else -z
        if np.any(offsets > 0) or np.any(offsets < -(2**bw - 1)):
            return None
        if s.size > 1:
            rank = len(self._shapes.get(data) or ())
            if axis is None or not rank or not -rank <= axis < rank:
                return None
            axis = axis % rank
        else:
            axis = None
        return Encoding(bw=bw, scale=tuple(float(v) for v in s), offset=tuple(int(o) for o in offsets),
                        symmetric=bool(signed and np.all(z == 0)), axis=axis)

    def _mark(self, name: str, enc: Encoding | None, how: str) -> None:
        if not name:
            return
        self.quantized_model = True
        self.prequantized.setdefault(name, how)
        if enc is not None:
            self.existing_encodings.setdefault(name, enc)

    def _find_existing(self) -> None:
        """Read the quantization an already quantized model has: Q/DQ pairs, QOperator and integer
        ops, dynamic quantization, and integer weights dequantized by Cast -> (Sub) -> Mul."""
        cast_of: dict[str, str] = {}        # Cast output -> integer constant it converts
        minus_zp: dict[str, tuple] = {}     # Sub output -> (integer constant, zero point constant)
        accumulators: set[str] = set()      # int32 outputs of ConvInteger/MatMulInteger
        accumulators_f: set[str] = set()    # ... cast to float
        scale_values: set[str] = set()      # float scales computed at run time
        for _, _, _, node in _walk(self.model.graph):
            if node is None:
                continue
            op, dom = node.op_type, node.domain
            ins = list(node.input) + [""] * 9
            outs = list(node.output)
            if op in ("QuantizeLinear", "DequantizeLinear") and dom in DEFAULT_DOMAINS | {"com.microsoft"}:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                quantize = op == "QuantizeLinear"
                data, q = (ins[0], outs[0]) if quantize else (outs[0], ins[0])
                elem = self._elem.get(q, 0)
                if attrs.get("block_size"):
                    enc = None
                else:
                    enc = self._onnx_encoding(ins[1], ins[2], elem, data, attrs.get("axis", 1))
                label = f"{op} ({_storage_name(elem)})"
                self._mark(data, enc, label)
                self._mark(q, enc, label)
                self._qparams.update(n for n in ins[1:3] if n)
                if not quantize:
                    producer = self.tensors[q].producer if q in self.tensors else None
                    pnode = self.nodes.get(producer) if producer else None
                    if q in self._const and enc is not None and self.is_float(data):
                        self._folded[data] = ("dq", q, enc)
                    elif pnode is not None and pnode.op_type == "QuantizeLinear" and pnode.input:
                        self._pairs[data] = pnode.input[0]
            elif op == "DynamicQuantizeLinear" and dom in DEFAULT_DOMAINS:
                self._mark(ins[0], None, "quantized at run time by DynamicQuantizeLinear")
                self._dynamic.add(ins[0])
                scale_values.update(outs[1:2])
            elif op in ("QLinearConv", "QLinearMatMul") and dom in DEFAULT_DOMAINS:
                per_tensor = 0  # ignored: one scale
                self._mark(ins[0], self._onnx_encoding(ins[1], ins[2], self._elem.get(ins[0], 0), ins[0], per_tensor),
                           f"input of {op}")
                w_axis = 0 if op == "QLinearConv" else -1
                self._mark(ins[3], self._onnx_encoding(ins[4], ins[5], self._elem.get(ins[3], 0), ins[3], w_axis),
                           f"weight of {op}")
                y_enc = self._onnx_encoding(ins[6], ins[7], self._elem.get(outs[0], 0), outs[0], per_tensor)
                self._mark(outs[0], y_enc, f"output of {op}")
                if op == "QLinearConv" and ins[8]:
                    self._mark(ins[8], None, "int32 bias of QLinearConv")
            elif op in ("ConvInteger", "MatMulInteger") and dom in DEFAULT_DOMAINS:
                for name in ins[:2]:
                    self._mark(name, None, f"integer input of {op} (zero point only; scales are applied after it)")
                accumulators.update(outs[:1])
            elif op == "Cast" and outs and self.is_float(outs[0]):
                if ins[0] in accumulators:
                    self._skip.add(outs[0])
                    accumulators_f.add(outs[0])
                    self._mark(outs[0], None, "integer accumulator as float (dequantized by the next Mul)")
                elif ins[0] in self._const and self._elem.get(ins[0], 0) in STORAGE_BITS:
                    cast_of[outs[0]] = ins[0]
            elif op == "Sub" and ins[0] in cast_of and ins[1] in self._const:
                minus_zp[outs[0]] = (cast_of[ins[0]], ins[1])
            elif op == "Mul" and outs and self._fold_mul(node, cast_of, minus_zp):
                continue
            elif op in ("Mul", "Div") and any(n in accumulators_f for n in ins[:2]):
                self._qparams.update(n for n in ins[:2] if n in self._const)  # the dequantizing scale
            # Scales computed at run time (DynamicQuantizeLinear's scale times a weight scale): not data.
            data_ins = [n for n in node.input if n]
            if outs and data_ins and any(n in scale_values for n in data_ins) and all(
                    n in scale_values or n in self._const for n in data_ins):
                scale_values.update(outs)
                self._qparams.update(n for n in data_ins if n in self._const)
        self._skip |= scale_values

    def _fold_mul(self, node: onnx.NodeProto, cast_of: dict, minus_zp: dict) -> bool:
        """Cast(int const) [- zp] * scale: a float weight with an existing encoding (True if so)."""
        a, b = (list(node.input) + ["", ""])[:2]
        for chain, scale in ((a, b), (b, a)):
            if chain in cast_of:
                src, zp = cast_of[chain], ""
            elif chain in minus_zp:
                src, zp = minus_zp[chain]
            else:
                continue
            if scale not in self._const or not self.is_float(scale):
                continue
            q = self._const_array(src)
            s = self._const_array(scale)
            z = self._const_array(zp) if zp else np.zeros((), np.int64)
            if q is None or s is None or z is None:
                continue
            axis_s, axis_z = _broadcast_axis(s.shape, q.ndim), _broadcast_axis(z.shape, q.ndim)
            if axis_s is False or axis_z is False or (axis_s is not None and axis_z is not None and axis_s != axis_z):
                continue
            axis = axis_s if axis_s is not None else axis_z
            channels = q.shape[axis] if axis is not None else 1
            flat_s = np.broadcast_to(s.reshape(-1), (channels,)) if s.size in (1, channels) else None
            flat_z = np.broadcast_to(np.asarray(z).reshape(-1), (channels,)) if np.size(z) in (1, channels) else None
            if flat_s is None or flat_z is None or np.any(flat_z != np.round(flat_z)):
                continue
            bw, signed = STORAGE_BITS[self._elem[src]]
            zi = flat_z.astype(np.int64)
            offsets = -zi - 2 ** (bw - 1) if signed else -zi
            bad_scale = np.any(flat_s <= 0) or not np.all(np.isfinite(flat_s))
            if bad_scale or np.any(offsets > 0) or np.any(offsets < -(2**bw - 1)):
                continue
            enc = Encoding(bw=bw, scale=tuple(float(v) for v in flat_s), offset=tuple(int(o) for o in offsets),
                           symmetric=bool(signed and np.all(zi == 0)), axis=axis if channels > 1 else None)
            out = node.output[0]
            self._folded[out] = ("mul", src, zp, scale)
            self._mark(out, enc, f"{_storage_name(self._elem[src])} weight dequantized by Cast -> Mul")
            self._mark(src, enc, f"{_storage_name(self._elem[src])} weight dequantized by Cast -> Mul")
            self._skip.add(chain)
            self._skip.update(n for n in cast_of if cast_of[n] == src)
            self._qparams.update(n for n in (scale, zp) if n)
            return True
        return False

    def _fold(self, name: str) -> np.ndarray:
        """The float32 value of a folded constant, as the model computes it."""
        kind, src, *rest = self._folded[name]
        q = np.asarray(self.initializer(src)).astype(np.float64)
        if kind == "dq":
            enc = rest[0]
            scale, zp = np.asarray(enc.scale), -np.asarray(enc.offset, np.float64)
            if STORAGE_BITS[self._elem[src]][1]:
                zp = zp - 2 ** (enc.bw - 1)
            if enc.axis is not None:
                shape = [1] * q.ndim
                shape[enc.axis] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            else:
                scale, zp = scale.reshape(()), zp.reshape(())
            return ((q - zp) * scale).astype(np.float32)
        zp_name, scale_name = rest
        zp = np.asarray(self.initializer(zp_name)).astype(np.float64) if zp_name else 0.0
        scale = np.asarray(self.initializer(scale_name)).astype(np.float32)
        return ((q - zp).astype(np.float32) * scale).astype(np.float32)


def _storage_name(elem: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name if elem else "unknown type"
    except Exception:
        return TensorProto.DataType.Name(elem).lower() if elem in TensorProto.DataType.values() else "unknown type"


def _broadcast_axis(shape: tuple, rank: int):
    """The axis a parameter of `shape` varies along when broadcast against a tensor of `rank`
    (None: one value for all; False: along several axes, which no encoding holds)."""
    shape = tuple(shape)
    if len(shape) > rank:
        return False
    aligned = (1,) * (rank - len(shape)) + shape
    axes = [i for i, d in enumerate(aligned) if d != 1]
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else False
