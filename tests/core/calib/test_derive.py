"""Statistics derived from another tensor's (core/derive.py) equal those read from onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qinspect.core.calib.calibrate as calibrate_module
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.calib.derive import scalar_affine
from qinspect.core.graph.model import load_model
from tests.models import finish


def _gelu_model():
    """x[N,64,96] -> MatMul -> attention-like scaling, an Erf-GELU, c - x, x * -c and x + c chains."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((96, 96)) / 10).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(0.125, np.float32), "scale"),
        numpy_helper.from_array(np.array([1.4142135], np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array([[[3.0]]], np.float32), "three"),   # rank 3, broadcasts
        numpy_helper.from_array(np.array(-0.3, np.float32), "neg"),
        numpy_helper.from_array(np.array(3e38, np.float32), "huge"),
        numpy_helper.from_array(np.full((96,), 0.1, np.float32), "vector"),  # not a scalar: read
    ]
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w"], ["mm"], name="mm"),
        n("Mul", ["mm", "scale"], ["scaled"], name="scaled"),
        n("Div", ["mm", "sqrt2"], ["g_div"], name="g_div"),
        n("Erf", ["g_div"], ["g_erf"], name="g_erf"),
        n("Add", ["one", "g_erf"], ["g_add"], name="g_add"),
        n("Mul", ["mm", "g_add"], ["g_mul"], name="g_mul"),
        n("Mul", ["g_mul", "half"], ["gelu"], name="gelu"),
        n("Sub", ["three", "gelu"], ["flip"], name="flip"),
        n("Mul", ["flip", "neg"], ["negated"], name="negated"),
        n("Mul", ["negated", "huge"], ["blown"], name="blown"),
        n("Add", ["negated", "vector"], ["biased"], name="biased"),
        n("Add", ["blown", "biased"], ["out"], name="out"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64, 96])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 64, 96])], inits)
    return finish(graph)


def _data(tmp_path, x):
    np.save(tmp_path / "x.npy", x)
    return str(tmp_path / "x.npy")


def _both(index, data, **kwargs):
    derived = calibrate(index, data, **kwargs)
    original = calibrate_module._derivable
    calibrate_module._derivable = lambda *a: {}
    try:
        read = calibrate(index, data, **kwargs)
    finally:
        calibrate_module._derivable = original
    return derived, read


def _assert_same(a, b, names):
    for name in names:
        x, y = a.stats[name], b.stats[name]
        assert (x.count, x.min, x.max, x.nan_count, x.posinf_count, x.neginf_count, x.lo, x.hi) == \
               (y.count, y.min, y.max, y.nan_count, y.posinf_count, y.neginf_count, y.lo, y.hi), name
        np.testing.assert_array_equal(x.counts, y.counts, err_msg=name)


def test_rules_cover_scalar_ops_and_nothing_else():
    index = load_model(_gelu_model())
    names = [t for t in index.activations() if t != "x"]
    rules = scalar_affine(index, names)
    assert {k: v.source for k, v in rules.items()} == {
        "scaled": "mm", "g_div": "mm", "g_add": "g_erf", "gelu": "g_mul", "flip": "gelu",
        "negated": "flip", "blown": "negated"}
    assert rules["flip"].decreasing and rules["negated"].decreasing and not rules["scaled"].decreasing


def test_derived_statistics_equal_onnxruntime_values(tmp_path):
    """Every derived tensor's min, max and histogram are bit-identical to reading what onnxruntime
    computed (so its float32 ops round exactly like numpy's), over several subsampled batches."""
    index = load_model(_gelu_model())
    x = np.random.default_rng(1).standard_normal((40, 64, 96)).astype(np.float32) * 3
    derived, read = _both(index, open_data(_data(tmp_path, x), index.inputs), batch_size=8, histogram_sample=1024)
    assert derived.stats["gelu"].sampled
    _assert_same(derived, read, [t for t in index.activations() if t != "x"])
    # "blown" overflows (values * 3e38): it was read, so its infinities are counted
    assert derived.stats["blown"].posinf_count + derived.stats["blown"].neginf_count > 0


def test_a_batch_with_nan_is_read_not_derived(tmp_path):
    index = load_model(_gelu_model())
    x = np.random.default_rng(2).standard_normal((24, 64, 96)).astype(np.float32)
    x[9, 3, 5] = np.nan
    x[17, 0, 0] = np.inf
    derived, read = _both(index, open_data(_data(tmp_path, x), index.inputs), batch_size=8, histogram_sample=1024)
    assert derived.stats["scaled"].nan_count > 0
    _assert_same(derived, read, [t for t in index.activations() if t != "x"])


@pytest.mark.parametrize("sample", [None, 10**7])
def test_exact_or_unsampled_histograms_read_everything(sample, tmp_path):
    index = load_model(_gelu_model())
    x = np.random.default_rng(3).standard_normal((16, 64, 96)).astype(np.float32)
    derived, read = _both(index, open_data(_data(tmp_path, x), index.inputs), batch_size=8, histogram_sample=sample)
    _assert_same(derived, read, [t for t in index.activations() if t != "x"])
