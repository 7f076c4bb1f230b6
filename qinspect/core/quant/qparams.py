"""ONNX quantization parameters of our encodings, and the ONNX rule on constants.

`onnx_qparams` maps an encoding to ONNX (scale, zero point, storage type) as encodings_spec.md
section 4.2 says; `quantize_constant`, `dequantize_constant` and `fake_quantize` compute what
QuantizeLinear/DequantizeLinear do, shared by the QDQ exporter (`io/qdq.py`) and the simulation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .encoding import Encoding, derived_bias

STORAGE = {  # (bits, signed) -> ONNX element type
    (4, False): TensorProto.UINT4, (4, True): TensorProto.INT4,
    (8, False): TensorProto.UINT8, (8, True): TensorProto.INT8,
    (7, True): TensorProto.INT8,  # 8-bit weights a target keeps on a 7-bit grid
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
        storage = 8 if self.bw == 7 else self.bw
        label = f"{'int' if self.signed else 'uint'}{storage}" + ("/ch" if self.axis is not None else "")
        return label + (" (7-bit grid)" if self.bw == 7 else "")


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
        # asarray: on a 0-d array nan_to_num returns a numpy scalar, which clip cannot write into
        t = np.asarray(np.nan_to_num(t, posinf=qp.qmax, neginf=qp.qmin), dtype=t.dtype)
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


def complete_encodings(index, encodings: dict[str, Encoding]) -> dict[str, Encoding]:
    """`encodings` plus int32 encodings for biases that have none while their op's input and
    weight are integer (scale = input scale x weight scale, `derived_bias`), as the QNN converter
    derives them."""
    out = dict(encodings)
    for name in index.biases():
        t = index.targets[name]
        if name in out or not t.bias_inputs:
            continue
        act, weight = t.bias_inputs
        derived = derived_bias(out.get(index.encoding_source(act)), out.get(weight))
        if derived is not None:
            out[name] = derived
    return out
