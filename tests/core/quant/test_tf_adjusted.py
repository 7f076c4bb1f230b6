"""QNN's "TF Adjusted" weight mode against the quantization guide's description of it:

  "used only for quantizing weights to 8 bit fixed point ... uses adjusted min or max of the data
  being quantized other than true min/max or the min/max that exclude the long tail ... the max
  will be expanded or the min will be decreased if necessary. [It] still enforces a minimum range
  and ensures 0.0 is exactly quantizable."

The guide gives no formula; qinspect reads it as the smallest 8-bit grid with zero on it that keeps
both true ends (TF slides its grid by up to half a step and clips one of them). The exported
encodings carry the numbers, so the target runs exactly this grid whatever its own rule is.
"""
import json
from pathlib import Path

import numpy as np

from qinspect.cli import main
from tests.helpers import runs_as_simulated
from qinspect.cli.common import SCHEMES as CLI_SCHEMES
from qinspect.core.plan import Defaults, PrecisionPlan
from qinspect.core.quant.encoding import compute_encoding
from qinspect.core.quant.ranges import SCHEMES
from qinspect.core.quant.stats import TensorStats

RESOURCES = Path(__file__).resolve().parents[3] / "resources"
N = 255


def _ranges(seed=0, count=2000):
    rng = np.random.default_rng(seed)
    lo = -rng.lognormal(0, 2, count)
    hi = rng.lognormal(0, 2, count)
    return lo, hi


def test_both_true_ends_stay_on_the_grid_where_tf_clips_one():
    lo, hi = _ranges()
    adj = compute_encoding(lo, hi, 8, adjusted=True, axis=0)
    tf = compute_encoding(lo, hi, 8, axis=0)
    tol = 1e-12 * (hi - lo)
    assert (adj.min <= lo + tol).all() and (adj.max >= hi - tol).all()  # nothing clipped
    clipped = (tf.min > lo + tol) | (tf.max < hi - tol)
    assert clipped.mean() > 0.9  # TF's slide clips an end of nearly every mixed-sign range
    # "the max will be expanded or the min will be decreased": one end exact, the other moved out
    min_exact = np.isclose(adj.min, lo, rtol=1e-12, atol=0)
    max_exact = np.isclose(adj.max, hi, rtol=1e-12, atol=0)
    assert (min_exact | max_exact).all()
    assert (min_exact & (adj.max > hi)).any() and (max_exact & (adj.min < lo)).any()
    # "ensures 0.0 is exactly quantizable": an integer zero point inside the grid
    offsets = np.asarray(adj.offsets)
    assert ((offsets <= 0) & (offsets >= -N)).all()
    zero = np.zeros((lo.size, 1))  # channels on axis 0
    np.testing.assert_array_equal(adj.quantize_dequantize(zero), zero)


def test_the_grid_grows_as_little_as_it_can():
    """Every zero point 1..254 gives a grid that covers the range; none is finer than the chosen one."""
    lo, hi = _ranges(seed=1, count=300)
    adj = compute_encoding(lo, hi, 8, adjusted=True, axis=0)
    z = np.arange(1, N)[:, None]
    best = np.maximum(-lo / z, hi / (N - z)).min(axis=0)
    np.testing.assert_allclose(adj.scales, best, rtol=1e-12)
    width = (hi - lo) / N
    assert (adj.scales >= width * (1 - 1e-12)).all()
    # far less than a step more than TF's width: the stretch is a fraction of one step
    assert ((adj.scales - width) * N <= 2 * width).all()


def test_one_signed_ranges_and_the_minimum_range_are_tf_s():
    for lo, hi in [(0.0, 3.0), (-2.0, 0.0), (0.0, 0.0), (1.5, 1.5)]:
        adj = compute_encoding(lo, hi, 8, adjusted=True)
        tf = compute_encoding(lo, hi, 8)
        assert adj == tf, (lo, hi)
    for lo, hi in [(0.0, 0.0), (-1e-9, 1e-9)]:
        tiny = compute_encoding(lo, hi, 8, adjusted=True)
        assert tiny.max - tiny.min >= 1e-4 * (1 - 1e-9)  # QNN's minimum range (spec 1.3)


def test_long_tails_are_kept_unlike_tf_enhanced():
    """Not "the min/max that exclude the long tail": an outlier weight stays inside the grid."""
    rng = np.random.default_rng(3)
    w = np.concatenate([rng.normal(0, 0.05, 4000), [1.7, -0.02]]).astype(np.float32)
    plan = PrecisionPlan(Defaults(param_scheme="tf_adjusted", param_symmetric=False, per_channel=False))
    from qinspect.core.plan import _weight_encoding
    s = plan.settings("weight", "w")
    adj = _weight_encoding(s, w, None, plan.defaults)
    assert adj.min <= w.min() and adj.max >= w.max()
    enhanced = _weight_encoding(plan.settings("weight", "w").__class__(**{**s.__dict__, "scheme": "tf_enhanced"}),
                                w, None, plan.defaults)
    assert enhanced.max < w.max()  # the enhanced search drops the tail; adjusted does not


def test_only_8_bit_weights_are_adjusted():
    """At 16 bits, for activations and for symmetric weights the scheme is plain TF."""
    from qinspect.core.plan import _activation_encoding, _weight_encoding
    w = np.array([-0.37, 0.0, 1.0])
    d = Defaults(param_scheme="tf_adjusted", act_scheme="tf_adjusted", param_symmetric=False, per_channel=False)
    plan = PrecisionPlan(d)
    s8 = plan.settings("weight", "w")
    assert _weight_encoding(s8, w, None, d) == compute_encoding(-0.37, 1.0, 8, adjusted=True)
    assert _weight_encoding(s8, w, None, d) != compute_encoding(-0.37, 1.0, 8)
    plan.set("w16", bw=16)
    assert _weight_encoding(plan.settings("weight", "w16"), w, None, d) == compute_encoding(-0.37, 1.0, 16)
    act = _activation_encoding(plan.settings("activation", "a"), TensorStats.of(w), d)
    assert act == compute_encoding(-0.37, 1.0, 8)
    plan.set("ws", symmetric=True)
    assert _weight_encoding(plan.settings("weight", "ws"), w, None, d) == compute_encoding(-0.37, 1.0, 8,
                                                                                            symmetric=True)


def test_the_command_line_offers_the_same_schemes():
    assert CLI_SCHEMES == SCHEMES


def test_cli_tf_adjusted_weights_export_and_run_as_simulated(tmp_path, capsys):
    model = str(RESOURCES / "digits_cnn.onnx")
    enc, plain, qdq = tmp_path / "adj.json", tmp_path / "tf.json", tmp_path / "q.onnx"
    common = ["--data", str(RESOURCES / "digits_calib.npz"), "--asymmetric-weights", "--no-per-channel",
              "--format", "1.0.0", "--target", "ort-cpu", "-q"]
    assert main(["calibrate", model, "-o", str(enc), "--param-scheme", "tf_adjusted", *common]) == 0
    assert main(["calibrate", model, "-o", str(plain), *common]) == 0
    import onnx
    from onnx import numpy_helper
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(model).graph.initializer}
    adj = {e["name"]: e for e in json.loads(enc.read_text())["param_encodings"]}
    tf = {e["name"]: e for e in json.loads(plain.read_text())["param_encodings"]}
    moved = 0
    for name, e in adj.items():
        if e["bw"] != 8 or name not in weights or e.get("is_symmetric") == "True":
            continue
        w = weights[name]
        scale, offset = e["scale"][0], e["offset"][0]
        lo, hi = offset * scale, (offset + N) * scale
        tol = 1e-6 * (hi - lo)  # the file's scale is float32
        assert lo <= w.min() + tol and hi >= w.max() - tol, name
        moved += tf[name]["scale"][0] != scale
    assert moved >= 2  # the example's weights: TF clips them, adjusted grows the grid
    runs_as_simulated(capsys, model, enc, "ort-cpu", tmp_path)
