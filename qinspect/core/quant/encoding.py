"""Encodings on the AIMET/QNN grid and the math that computes them from a range.

Conventions (encodings_spec.md section 0): ``real = (q + offset) * scale`` with ``q`` in
``[0, 2**bw - 1]`` and ``offset <= 0`` an integer, so ``offset == -zero_point``. An encoding's
``min`` is ``offset * scale`` and its ``max`` is ``min + n * scale``: the end points of its grid,
which survive QNN's recomputation of scale and offset from (bw, min, max).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
# Minimum range rules (spec 1.3): QNN's 1e-4 is the default; AIMET legacy used 0.01; AIMET 2.x
# floors the scale at float32 eps instead.
MIN_RANGE_RULES = {"qnn": 1e-4, "aimet": 0.01, "eps": 0.0}
INT_BITWIDTHS = (4, 8, 16, 32)
# Grids an encoding may use: the bitwidths users choose, and the 7-bit grid a target keeps 8-bit
# weights on where integer kernels would saturate (stored as int8, see targets/profiles.py).
GRID_BITWIDTHS = INT_BITWIDTHS + (7,)
FLOAT_BITWIDTHS = (16, 32)
SYMMETRIC_VARIANTS = ("aimet", "qnn", "aimet_legacy")


def round_half_away(x):
    """Round ties away from zero, as C++ std::round (AIMET libpymo) does."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@dataclass(frozen=True)
class Encoding:
    """One tensor's encoding: per tensor (one scale) or per channel (one scale per channel on `axis`).

    ``dtype == "float"`` means the tensor stays in floating point at `bw` bits (16 or 32) and has
    no scale or offset.
    """

    bw: int
    dtype: str = "int"
    scale: tuple[float, ...] = ()
    offset: tuple[int, ...] = ()
    symmetric: bool = False
    axis: int | None = None
    strict: bool = False  # strict symmetric: q in [1, 2**bw - 1], i.e. -127..127 at 8 bit

    @property
    def is_float(self) -> bool:
        return self.dtype == "float"

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def steps(self) -> int:
        """Number of grid steps between min and max (2**bw - 1, one less when strict)."""
        return 2**self.bw - (2 if self.strict else 1)

    @property
    def scales(self) -> np.ndarray:
        return np.asarray(self.scale, dtype=np.float64)

    @property
    def offsets(self) -> np.ndarray:
        return np.asarray(self.offset, dtype=np.int64)

    @property
    def min(self) -> np.ndarray:
        return self.offsets * self.scales

    @property
    def max(self) -> np.ndarray:
        return self.min + self.steps * self.scales

    def _broadcast(self, x: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self.axis is None or values.size == 1:
            return values.reshape(())
        shape = [1] * x.ndim
        shape[self.axis] = values.size
        return values.reshape(shape)

    def quantize(self, x) -> np.ndarray:
        """Unsigned integer codes with AIMET's rounding (ties away from zero after the offset)."""
        x = np.asarray(x, dtype=np.float64)
        s = self._broadcast(x, self.scales)
        o = self._broadcast(x, self.offsets)
        q = round_half_away(x / s - o)
        return np.clip(q, 0, self.steps).astype(np.int64)

    def dequantize(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        return (q + self._broadcast(q, self.offsets)) * self._broadcast(q, self.scales)

    def quantize_dequantize(self, x) -> np.ndarray:
        """The value a float tensor takes after quantization; float encodings cast instead."""
        if self.is_float:
            dtype = np.float16 if self.bw == 16 else np.float32
            return np.asarray(x).astype(dtype).astype(np.float64)
        return self.dequantize(self.quantize(x))

    def quantize_onnx(self, x) -> np.ndarray:
        """Unsigned codes with ONNX QuantizeLinear rounding: rint(x / scale) (ties to even) + zp."""
        # float32 throughout, as onnxruntime divides: a float64 quotient rounds differently
        # near ties (about 100 of the 255 float32 half-step points of a typical 8-bit grid).
        x = np.asarray(x, dtype=np.float32)
        s = self._broadcast(x, self.scales.astype(np.float32))
        zp = -self._broadcast(x, self.offsets)
        return np.clip(np.rint(x / s).astype(np.float64) + zp, 0, self.steps).astype(np.int64)

    def with_changes(self, **changes) -> Encoding:
        return replace(self, **changes)


def float_encoding(bw: int = 16) -> Encoding:
    if bw not in FLOAT_BITWIDTHS:
        raise ValueError(f"float bitwidth must be one of {FLOAT_BITWIDTHS}, not {bw}")
    return Encoding(bw=bw, dtype="float")


def _prepare_range(lo, hi, min_range: float):
    """Include zero, then enforce the minimum range (zero first, as libpymo and ORT do)."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("an encoding range must be finite")
    if np.any(lo > hi):
        raise ValueError("an encoding range needs min <= max")
    return lo, np.maximum(hi, lo + min_range)


TINY32 = float(np.finfo(np.float32).tiny)


def _floor_scale(scale: np.ndarray, min_range: float = 0.0) -> np.ndarray:
    # The "eps" rule floors the scale (AIMET 2.x); every rule keeps it above zero so nothing
    # downstream divides by zero.
    return np.maximum(scale, EPS32 if min_range == 0.0 else TINY32)


def _tf(lo, hi, bw: int, min_range: float):
    lo, hi = _prepare_range(lo, hi, min_range)
    n = 2**bw - 1
    scale = _floor_scale((hi - lo) / n, min_range)
    mixed = (lo < 0) & (hi > 0)
    zp = np.clip(round_half_away(-lo / scale), 0, n)
    # One-signed ranges already have zero on the grid: offset 0, or -n when the range ends at 0.
    one_signed = np.where(lo >= 0, 0, -n)
    offset = np.where(mixed, -zp, one_signed)
    return scale, offset.astype(np.int64)


def _tf_adjusted(lo, hi, bw: int, min_range: float):
    """QNN's "TF Adjusted" weight grid: TF, except that a mixed-sign range keeps both true ends on the grid.

    TF slides the grid by up to half a step to put zero on it, which clips one end. Here one end
    stays exact and the other is stretched just enough ("the max will be expanded or the min will
    be decreased"): zero point z gives scale max(-lo/z, hi/(n-z)); the zero points either side of
    TF's ideal one keep the min or the max exact, and the smaller scale wins.
    """
    lo, hi = _prepare_range(lo, hi, min_range)
    n = 2**bw - 1
    width = (hi - lo) / n
    mixed = (lo < 0) & (hi > 0)
    ideal = np.where(mixed, -lo / np.where(mixed, width, 1.0), 0.0)
    z_min = np.clip(np.floor(ideal), 1, n - 1)  # the min exact, the max expanded
    z_max = np.clip(np.ceil(ideal), 1, n - 1)   # the max exact, the min decreased
    s_min = np.maximum(-lo / z_min, hi / (n - z_min))
    s_max = np.maximum(-lo / z_max, hi / (n - z_max))
    first = s_min <= s_max
    scale = _floor_scale(np.where(mixed, np.where(first, s_min, s_max), width), min_range)
    one_signed = np.where(lo >= 0, 0, -n)
    offset = np.where(mixed, -np.where(first, z_min, z_max), one_signed)
    return scale, offset.astype(np.int64)


def _symmetric(lo, hi, bw: int, min_range: float, variant: str, strict: bool, unsigned: bool):
    lo, hi = _prepare_range(lo, hi, min_range)
    half = 2 ** (bw - 1)
    m = np.maximum(np.abs(lo), np.abs(hi))
    if strict:
        scale = m / (half - 1)
        offset = np.full(scale.shape, -(half - 1))
    elif variant == "aimet":
        scale = np.maximum(hi / (half - 1), -lo / half)
        offset = np.full(scale.shape, -half)
    elif variant == "qnn":
        scale = 2 * m / (2**bw - 1)
        offset = np.full(scale.shape, -half)
    elif variant == "aimet_legacy":
        scale = m / (half - 1)
        offset = np.full(scale.shape, -half)
    else:
        raise ValueError(f"unknown symmetric variant {variant!r}; use one of {SYMMETRIC_VARIANTS}")
    if unsigned:
        # Unsigned symmetric: a range that is all >= 0 uses the whole unsigned grid from zero.
        positive = lo >= 0
        scale = np.where(positive, hi / (2**bw - 1), scale)
        offset = np.where(positive, 0, offset)
    return _floor_scale(scale, min_range), offset.astype(np.int64)


POW2_ROUNDINGS = ("round", "ceil", "floor")


def compute_encoding(
    lo,
    hi,
    bw: int = 8,
    *,
    symmetric: bool = False,
    strict: bool = False,
    unsigned: bool = False,
    variant: str = "aimet",
    min_range: str | float = "qnn",
    axis: int | None = None,
    pow2: str | None = None,
    adjusted: bool = False,
) -> Encoding:
    """The integer encoding of the range [lo, hi] (scalars, or arrays with one value per channel).

    Asymmetric encodings follow QNN/AIMET "TF" (spec 1.2): zero is included, the minimum range is
    enforced, and a mixed-sign range slides by less than half a step so that zero is on the grid.
    Symmetric encodings use `variant` (spec 1.7); `strict` and `unsigned` select AIMET's strict and
    unsigned symmetric modes.

    `pow2` ("round", "ceil" or "floor", NNabla's pow2 scales for shift-only hardware) makes the
    encoding symmetric (zero point 0) and its scale the power of two nearest to the symmetric
    scale, the next one up (the grid covers the range) or the next one down (a finer grid that
    clips the range's ends).

    `adjusted` selects QNN's "TF Adjusted" asymmetric grid (8-bit weights): instead of sliding,
    the grid grows so that both ends of the range stay on it (`_tf_adjusted`).
    """
    if pow2 is not None:
        if pow2 not in POW2_ROUNDINGS:
            raise ValueError(f"unknown power-of-two rounding {pow2!r}; use one of {POW2_ROUNDINGS}")
        symmetric = True
    if bw not in GRID_BITWIDTHS:
        raise ValueError(f"integer bitwidth must be one of {INT_BITWIDTHS}, not {bw}")
    if isinstance(min_range, str):
        if min_range not in MIN_RANGE_RULES:
            raise ValueError(f"unknown minimum range rule {min_range!r}; use one of {list(MIN_RANGE_RULES)}")
        min_range = MIN_RANGE_RULES[min_range]
    if symmetric or strict:
        scale, offset = _symmetric(lo, hi, bw, min_range, variant, strict, unsigned)
    elif adjusted:
        scale, offset = _tf_adjusted(lo, hi, bw, min_range)
    else:
        scale, offset = _tf(lo, hi, bw, min_range)
    scale = np.atleast_1d(scale)
    offset = np.atleast_1d(offset)
    if pow2 is not None:
        rounding = {"round": np.round, "ceil": np.ceil, "floor": np.floor}[pow2]
        scale = np.exp2(rounding(np.log2(scale)))
    if axis is None and scale.size != 1:
        raise ValueError("a per-tensor encoding takes one range; pass axis for per-channel ranges")
    return Encoding(
        bw=bw,
        dtype="int",
        scale=tuple(float(s) for s in scale),
        offset=tuple(int(o) for o in offset),
        symmetric=bool(symmetric or strict),
        axis=axis,
        strict=strict,
    )


def encoding_from_min_max(lo, hi, bw: int, *, symmetric: bool = False, axis: int | None = None) -> Encoding:
    """Recompute (scale, offset) from grid end points the way QNN does for a 0.6.1 overrides file."""
    lo = np.atleast_1d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_1d(np.asarray(hi, dtype=np.float64))
    n = 2**bw - 1
    scale = _floor_scale((hi - lo) / n, min_range=1.0)
    offset = np.rint(lo / scale).astype(np.int64)
    return Encoding(
        bw=bw,
        scale=tuple(float(s) for s in scale),
        offset=tuple(int(o) for o in offset),
        symmetric=symmetric,
        axis=axis,
    )


def bias_encoding(input_scale: float, weight_scale, axis: int | None = 0) -> Encoding:
    """int32 bias encoding: scale = input scale x weight scale (per channel), zero point 0."""
    scale = np.atleast_1d(float(input_scale) * np.asarray(weight_scale, dtype=np.float64))
    return Encoding(
        bw=32,
        scale=tuple(float(s) for s in scale),
        offset=(-(2**31),) * scale.size,
        symmetric=True,
        axis=axis if scale.size > 1 else None,
    )


def derived_bias(input_enc: Encoding | None, weight_enc: Encoding | None) -> Encoding | None:
    """The int32 bias encoding a target derives from the op's input and weight encodings, or None when
    it cannot: a float (or missing) input or weight, a per-channel input, or an input wider than 16
    bits, whose tiny scale would leave no room for the bias values (they would clip)."""
    if input_enc is None or weight_enc is None or input_enc.is_float or weight_enc.is_float:
        return None
    if len(input_enc.scale) != 1 or input_enc.bw > 16:
        return None
    return bias_encoding(input_enc.scale[0], weight_enc.scales, axis=0)


def clip_bounds(enc: Encoding) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the values beyond which a quantizer clips rather than rounds: half a step past
    the grid's ends (one and a half for 32-bit biases, whose top is 2^31 - 1 steps: AIMET's fallback
    scale max|b| / 2^31 puts the largest value one step above it, an error of 2^-31)."""
    slack = (1.5 if enc.bw == 32 else 0.5) * enc.scales
    return enc.min - slack, enc.max + slack
