"""Encoding math against the spec's golden values (encodings_spec.md sections 1, 5, 7) and properties."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qinspect.core.quant.encoding import Encoding, bias_encoding, compute_encoding, encoding_from_min_max

GOLDEN = json.loads((Path(__file__).parents[2] / "golden" / "tf_encoding.json").read_text())
CASES = GOLDEN["cases"]
REL, ABS = GOLDEN["rel_tol"], GOLDEN["abs_tol"]


def _encode(case) -> Encoding:
    x = np.asarray(case["x"], dtype=np.float64)
    return compute_encoding(
        x.min(),
        x.max(),
        case["bw"],
        symmetric=case.get("symmetric", False),
        strict=case.get("strict", False),
        variant=case.get("variant", "aimet"),
        min_range=case.get("min_range", "qnn"),
    )


def _close(actual, expected) -> bool:
    return math.isclose(float(actual), float(expected), rel_tol=REL, abs_tol=ABS)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_encoding(case):
    enc = _encode(case)
    exp = case["expected"]
    got = {"scale": enc.scale[0], "offset": enc.offset[0], "min": enc.min[0], "max": enc.max[0]}
    assert got["offset"] == exp["offset"], got
    for key in ("scale", "min", "max"):
        assert _close(got[key], exp[key]), (key, got[key], exp[key])
    if "q" in exp:
        assert enc.quantize(case["x"]).tolist() == exp["q"]
        np.testing.assert_allclose(enc.quantize_dequantize(case["x"]), exp["dq"], rtol=0, atol=5e-7)


@pytest.mark.parametrize("case", [c for c in CASES if not c.get("strict")], ids=lambda c: c["name"])
def test_golden_grid_round_trips_through_min_max(case):
    # QNN recomputes scale = (max - min) / n and offset = round(min / scale) from a 0.6.1 file.
    enc = _encode(case)
    back = encoding_from_min_max(enc.min, enc.max, enc.bw, symmetric=enc.symmetric)
    assert back.offset == enc.offset
    assert math.isclose(back.scale[0], enc.scale[0], rel_tol=1e-9)


def test_worked_example_onnx_zero_points():
    enc = compute_encoding(-1.8, 0.5, 8)
    assert -enc.offset[0] == 200  # uint8 zero point
    assert -enc.offset[0] - 128 == 72  # int8 zero point


def test_sixteen_bit_asym_clips_data_min_by_less_than_half_step():
    enc = compute_encoding(-1.8, 0.5, 16)
    assert -1.8 < enc.min[0] < -1.8 + enc.scale[0] / 2


# --- ties and ONNX parity -------------------------------------------------------------------

TIES = GOLDEN["ties"]


def _tie_encoding() -> Encoding:
    return Encoding(bw=TIES["bw"], scale=(TIES["scale"],), offset=(TIES["offset"],))


def test_tie_rounding_aimet_vs_onnx():
    enc = _tie_encoding()
    assert enc.quantize(TIES["x"]).tolist() == TIES["q_aimet"]
    assert enc.quantize_onnx(TIES["x"]).tolist() == TIES["q_onnx"]


def _ort_quantize(x: np.ndarray, enc: Encoding) -> np.ndarray:
    """Run x through a real onnxruntime QuantizeLinear (opset 13, uint8 zero point)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    scale = enc.scales.astype(np.float32)
    zp = (-enc.offsets).astype(np.uint8)
    if enc.axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    inits = [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(zp, "zp")]
    attrs = {} if enc.axis is None else {"axis": enc.axis}
    node = helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, list(x.shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # onnx 1.23's default IR version is refused by onnxruntime 1.31
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0].astype(np.int64)


def test_tie_example_matches_onnxruntime():
    x = np.asarray(TIES["x"], dtype=np.float32)
    assert _ort_quantize(x, _tie_encoding()).tolist() == TIES["q_onnx"]


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["bw"] == 8 and not c.get("strict")], ids=lambda c: c["name"]
)
def test_quantize_onnx_matches_onnxruntime_on_golden_encodings(case):
    enc = _encode(case)
    lo, hi = float(enc.min[0]), float(enc.max[0])
    s = float(np.float32(enc.scale[0]))
    rng = np.random.default_rng(0)
    # Random values, the data itself, values beyond the range, and every float32 half-step
    # point of the grid, where float64 and float32 division round differently.
    half_steps = (np.arange(-1, 2**case["bw"] + 1) + 0.5 + enc.offset[0]) * s
    x = np.concatenate([
        rng.uniform(lo - 2 * (hi - lo), hi + 2 * (hi - lo), 2000),
        np.asarray(case["x"]),
        half_steps,
    ]).astype(np.float32)
    np.testing.assert_array_equal(enc.quantize_onnx(x), _ort_quantize(x, enc))


def test_per_channel_quantize_onnx_matches_onnxruntime():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3, 5)).astype(np.float32) * np.array([0.1, 1.0, 10.0])[None, :, None]
    moved = np.moveaxis(w, 1, 0).reshape(3, -1)
    enc = compute_encoding(moved.min(axis=1), moved.max(axis=1), 8, axis=1)
    np.testing.assert_array_equal(enc.quantize_onnx(w), _ort_quantize(w, enc))


# --- per channel ---------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("symmetric", [False, True])
def test_per_channel_quantizes_along_its_axis(axis, symmetric):
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 4, 5))
    # Very different channel ranges, so that using the wrong channel's scale shows.
    shape = [1, 1, 1]
    shape[axis] = w.shape[axis]
    w = w * np.geomspace(0.01, 100.0, w.shape[axis]).reshape(shape)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    enc = compute_encoding(moved.min(axis=1), moved.max(axis=1), 8, symmetric=symmetric, axis=axis)
    assert enc.per_channel and len(enc.scale) == w.shape[axis]
    q = enc.quantize(w)
    dq = enc.quantize_dequantize(w)
    for c in range(w.shape[axis]):
        one = compute_encoding(moved[c].min(), moved[c].max(), 8, symmetric=symmetric)
        sl = np.take(w, c, axis=axis)
        np.testing.assert_array_equal(np.take(q, c, axis=axis), one.quantize(sl))
        np.testing.assert_allclose(np.take(dq, c, axis=axis), one.quantize_dequantize(sl), rtol=0, atol=0)
        # Each channel's error stays within half of its own step.
        assert np.max(np.abs(np.take(dq, c, axis=axis) - sl)) <= one.scale[0] / 2 * (1 + 1e-9)


def test_per_tensor_needs_one_range():
    with pytest.raises(ValueError):
        compute_encoding(np.array([-1.0, -2.0]), np.array([1.0, 2.0]), 8)


def test_bias_encoding_is_int32_product_of_scales():
    enc = bias_encoding(0.5, [0.1, 0.2], axis=0)
    assert enc.bw == 32 and enc.offset == (-(2**31),) * 2
    np.testing.assert_allclose(enc.scales, [0.05, 0.1])


# --- properties -----------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=True)
MODES = [
    {"symmetric": False},
    {"symmetric": True, "variant": "aimet"},
    {"symmetric": True, "variant": "qnn"},
    {"symmetric": True, "variant": "aimet_legacy"},
    {"symmetric": True, "strict": True},
]


@settings(max_examples=150, deadline=None)
@given(
    a=finite,
    b=finite,
    bw=st.sampled_from((4, 8, 16)),
    mode=st.sampled_from(MODES),
    min_range=st.sampled_from(("qnn", "aimet", "eps")),
    u=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=16),
)
def test_encoding_properties(a, b, bw, mode, min_range, u):
    lo, hi = min(a, b), max(a, b)
    enc = compute_encoding(lo, hi, bw, min_range=min_range, **mode)
    scale, offset = enc.scale[0], enc.offset[0]
    emin, emax = float(enc.min[0]), float(enc.max[0])
    assert scale > 0 and math.isfinite(scale)
    assert isinstance(offset, int) and -enc.steps <= offset <= 0
    # Zero is exactly representable.
    assert enc.quantize_dequantize(0.0)[()] == 0.0
    assert emin <= 0.0 <= emax
    assert emin == offset * scale
    assert emax == emin + enc.steps * scale
    # The grid covers the zero-including range up to half a step (the TF shift, QNN symmetric).
    tol = 1e-9 * (abs(lo) + abs(hi) + scale)
    assert emin <= min(lo, 0.0) + scale / 2 + tol
    assert emax >= max(hi, 0.0) - scale / 2 - tol
    # Quantize-dequantize error inside [min, max] is at most half a step.
    x = emin + np.asarray(u) * (emax - emin)
    err = np.abs(enc.quantize_dequantize(x) - x)
    assert np.all(err <= scale / 2 + 1e-9 * (np.abs(x) + scale))


@settings(max_examples=100, deadline=None)
@given(a=finite, b=finite, bw=st.sampled_from((4, 8, 16)), symmetric=st.booleans())
def test_grid_round_trip_property(a, b, bw, symmetric):
    enc = compute_encoding(min(a, b), max(a, b), bw, symmetric=symmetric)
    back = encoding_from_min_max(enc.min, enc.max, bw, symmetric=symmetric)
    assert back.offset == enc.offset
    assert math.isclose(back.scale[0], enc.scale[0], rel_tol=1e-9)
