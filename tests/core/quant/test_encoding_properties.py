"""Property-based tests of the encoding math on random *data* (test_encoding.py covers random ranges for
4/8/16 bits): for every bitwidth including 32, both rounding rules (AIMET's and ONNX's, as exported),
per tensor and per channel: zero is exact, min <= 0 <= max, the encoding sits on its grid, and
quantize-dequantize moves a value inside the range by at most half a step."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qinspect.core.quant.encoding import INT_BITWIDTHS, compute_encoding, encoding_from_min_max
from qinspect.core.quant.qparams import dequantize_constant, fake_quantize, onnx_qparams, quantize_constant

values = st.floats(min_value=-1e5, max_value=1e5, allow_nan=False, allow_infinity=False, width=32)
data = arrays(np.float32, st.integers(1, 64), elements=values)
bitwidths = st.sampled_from(INT_BITWIDTHS)
modes = st.sampled_from([{}, {"symmetric": True}, {"symmetric": True, "variant": "qnn"},
                         {"symmetric": True, "strict": True}, {"symmetric": True, "unsigned": True}])


def check_grid(enc):
    scale, offset = enc.scales, enc.offsets
    assert np.all(scale > 0) and np.all(np.isfinite(scale))
    assert np.all((-enc.steps <= offset) & (offset <= 0))
    assert np.all(enc.min <= 0) and np.all(enc.max >= 0)
    np.testing.assert_array_equal(enc.min, offset * scale)
    np.testing.assert_array_equal(enc.max, enc.min + enc.steps * scale)


def half_step_inside(enc, x, got, rel):
    """|qdq(x) - x| <= step / 2 for x inside the grid; beyond it, the value saturates to an end."""
    x = np.asarray(x, np.float64)
    lo, hi, s = float(enc.min[0]), float(enc.max[0]), float(enc.scale[0])
    inside = (x >= lo) & (x <= hi)
    err = np.abs(np.asarray(got, np.float64) - x)
    tol = rel * (np.abs(x) + s)
    assert np.all(err[inside] <= s / 2 + tol[inside]), (x[inside], got[inside], s)
    outside = ~inside
    nearest = np.clip(x, lo, hi)
    assert np.all(np.abs(np.asarray(got, np.float64)[outside] - nearest[outside]) <= s / 2 + tol[outside])


@settings(max_examples=120, deadline=None)
@given(x=data, bw=bitwidths, mode=modes)
def test_encoding_of_data_aimet_rounding(x, bw, mode):
    enc = compute_encoding(x.min(), x.max(), bw, **mode)
    check_grid(enc)
    assert enc.quantize_dequantize(0.0)[()] == 0.0
    # The data range is covered up to the half-step shift that puts zero on the grid.
    s = enc.scale[0]
    assert enc.min[0] <= min(float(x.min()), 0.0) + s / 2 + 1e-12 * abs(float(x.min()))
    assert enc.max[0] >= max(float(x.max()), 0.0) - s / 2 - 1e-12 * abs(float(x.max()))
    half_step_inside(enc, x, enc.quantize_dequantize(x), 1e-12)
    codes = enc.quantize(x)
    assert codes.min() >= 0 and codes.max() <= enc.steps
    back = encoding_from_min_max(enc.min, enc.max, bw, symmetric=enc.symmetric)
    if not enc.strict:
        assert back.offset == enc.offset


@settings(max_examples=120, deadline=None)
@given(x=data, bw=st.sampled_from((4, 8, 16)), symmetric=st.booleans())
def test_exported_rounding_is_within_half_a_step(x, bw, symmetric):
    """What the QDQ model computes (float32 division, ties to even, ONNX zero points)."""
    enc = compute_encoding(x.min(), x.max(), bw, symmetric=symmetric)
    qp = onnx_qparams(enc)
    assert qp is not None and qp.qmin <= int(np.min(qp.zero_point)) <= qp.qmax
    assert fake_quantize(np.float32(0.0), enc) == 0.0
    half_step_inside(enc, x, fake_quantize(x, enc), 2e-7)  # float32 arithmetic


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float64, st.integers(1, 32), elements=st.floats(-1e6, 1e6)),
       input_scale=st.floats(1e-4, 1.0), weight_scale=st.floats(1e-4, 1.0))
def test_int32_bias_round_trip_is_within_half_a_step(x, input_scale, weight_scale):
    from qinspect.core.quant.encoding import bias_encoding

    enc = bias_encoding(input_scale, [weight_scale], axis=0)
    check_grid(enc)
    qp = onnx_qparams(enc)
    assert (qp.bw, qp.signed, int(qp.zero_point)) == (32, True, 0)
    got = dequantize_constant(quantize_constant(x, qp), qp).astype(np.float64)
    s = float(np.float32(enc.scale[0]))
    inside = np.abs(x) <= s * (2**31 - 1)
    assert np.all(np.abs(got - x)[inside] <= s / 2 + 1e-6 * (np.abs(x[inside]) + s))


@settings(max_examples=60, deadline=None)
@given(w=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=values),
       axis=st.sampled_from((0, 1)), bw=st.sampled_from((4, 8, 16)))
def test_per_channel_weights(w, axis, bw):
    others = 1 - axis
    enc = compute_encoding(w.min(axis=others), w.max(axis=others), bw, symmetric=True, axis=axis)
    check_grid(enc)
    assert len(enc.scale) == w.shape[axis]
    got = fake_quantize(w, enc)
    assert np.all(fake_quantize(np.zeros_like(w), enc) == 0)
    for c in range(w.shape[axis]):
        row = np.take(w, c, axis=axis).astype(np.float64)
        s = enc.scale[c]
        err = np.abs(np.take(got, c, axis=axis) - row)
        assert np.all(err <= s / 2 + 2e-7 * (np.abs(row) + s))  # every weight is inside its channel's range
