import numpy as np
import pytest

from qinspect.core.quant.encoding import compute_encoding
from qinspect.core.graph.model import load_model
from qinspect.core.plan import Defaults, PrecisionPlan, TensorEdit, derive_encodings
from qinspect.core.quant.stats import TensorStats
from tests.models import small_cnn


@pytest.fixture
def index():
    return load_model(small_cnn())


@pytest.fixture
def stats(index):
    rng = np.random.default_rng(3)
    return {name: TensorStats.of(rng.standard_normal(1000) * 2 + 0.5) for name in index.activations()}


def test_defaults_give_tf_activations_and_per_channel_symmetric_weights(index, stats):
    enc = derive_encodings(index, stats, PrecisionPlan())
    for name in index.activations():
        s = stats[name]
        if index.targets[name].op_type == "Sigmoid":  # qnn-htp fixes its range (AIMET's HTP config)
            assert enc[name] == compute_encoding(0.0, 1.0, 8)
        else:
            assert enc[name] == compute_encoding(s.min, s.max, 8)
    on_cpu = derive_encodings(index, stats, PrecisionPlan(target="ort-cpu"))
    assert on_cpu["sig_out"] == compute_encoding(stats["sig_out"].min, stats["sig_out"].max, 8)
    w = index.initializer("conv1.weight")
    e = enc["conv1.weight"]
    assert e.axis == 0 and e.symmetric and len(e.scale) == w.shape[0]
    expected = compute_encoding(w.min(axis=(1, 2, 3)), w.max(axis=(1, 2, 3)), 8, symmetric=True, axis=0)
    assert e == expected
    assert set(e.offset) == {-128}


def test_bias_scale_is_input_times_weight_scale(index, stats):
    enc = derive_encodings(index, stats, PrecisionPlan())
    bias = enc["conv2.bias"]
    act = enc[index.encoding_source("pool_out")]
    np.testing.assert_allclose(bias.scale, act.scale[0] * np.array(enc["conv2.weight"].scale))
    assert bias.bw == 32 and set(bias.offset) == {-(2**31)}


def test_edit_needs_no_new_calibration_and_undo_restores(index, stats):
    plan = PrecisionPlan()
    before = derive_encodings(index, stats, plan)
    previous = plan.set("conv2_out", bw=16)
    after = derive_encodings(index, stats, plan)
    assert after["conv2_out"].bw == 16
    assert after["input"] == before["input"]
    plan.restore("conv2_out", previous)
    assert derive_encodings(index, stats, plan) == before
    assert plan.edited() == []


def test_fixed_range_is_snapped_to_the_grid(index, stats):
    plan = PrecisionPlan()
    plan.set("logits", range=(-1.8, 0.5))
    e = derive_encodings(index, stats, plan)["logits"]
    assert e.offset == (-200,)
    assert e.min[0] == pytest.approx(-1.803922, abs=1e-6)


def test_per_tensor_weights_and_float(index, stats):
    plan = PrecisionPlan(Defaults(per_channel=False))
    plan.set("fc.weight", dtype="float")
    enc = derive_encodings(index, stats, plan)
    assert enc["conv1.weight"].axis is None and len(enc["conv1.weight"].scale) == 1
    assert enc["fc.weight"].is_float and enc["fc.weight"].bw == 16
    assert enc["fc.bias"].is_float  # QNN: a float weight makes the op float


def test_bad_edits_are_refused(index):
    plan = PrecisionPlan()
    with pytest.raises(ValueError, match="bitwidth 7"):
        plan.set("input", bw=7)
    with pytest.raises(ValueError, match="min 2 is above max 1"):
        plan.set("input", range=(2, 1))
    with pytest.raises(ValueError, match="float"):
        plan.set("input", dtype="float", bw=8)
    assert plan.edited() == []


def test_schemes_change_ranges(index):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100000), [60.0]])
    stats = {name: TensorStats.of(x) for name in index.activations()}
    plan = PrecisionPlan()
    tf = derive_encodings(index, stats, plan)["logits"]
    plan.set("logits", scheme="percentile", percentile=99.9)
    pct = derive_encodings(index, stats, plan)["logits"]
    assert pct.max[0] < tf.max[0] / 5


def test_plan_dict_round_trip():
    plan = PrecisionPlan(Defaults(act_bw=16))
    plan.set("a", bw=4, scheme="mse")
    plan.set("b", range=(-1.0, 2.0))
    plan.set("c", encoding=compute_encoding([-1, -2], [1, 2], 8, symmetric=True, axis=0))
    back = PrecisionPlan.from_dict(plan.to_dict())
    assert back.defaults == plan.defaults
    assert back.edits == plan.edits
    assert isinstance(back.edits["b"], TensorEdit)
