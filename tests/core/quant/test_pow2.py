"""Power-of-two scales (NNabla's pow2 with ROUND, CEIL and FLOOR, zero point 0): on their grid, with
the rounding's promise about the range, from the plan's default or a tensor's edit, and through the
command line into a QDQ model onnxruntime runs as simulated."""
import json
from pathlib import Path

import numpy as np
import pytest

from qinspect.cli import main
from tests.helpers import runs_as_simulated
from qinspect.core.plan import Defaults, PrecisionPlan, TensorEdit, check_edit
from qinspect.core.quant.encoding import compute_encoding

RESOURCES = Path(__file__).resolve().parents[3] / "resources"


@pytest.mark.parametrize("rounding", ["round", "ceil", "floor"])
@pytest.mark.parametrize("bw", [4, 8, 16])
def test_pow2_encodings_are_on_their_grid(rounding, bw):
    rng = np.random.default_rng(bw)
    lo = -rng.uniform(0, 5, 64) * (rng.random(64) < 0.8)  # some ranges never negative
    hi = rng.uniform(1e-3, 7, 64)
    enc = compute_encoding(lo, hi, bw, pow2=rounding, unsigned=True, axis=0)
    plain = compute_encoding(lo, hi, bw, symmetric=True, unsigned=True, axis=0)  # the scale it rounds
    scale, s0 = enc.scales, plain.scales
    exponent = np.log2(scale)
    np.testing.assert_array_equal(exponent, np.round(exponent))  # exactly powers of two
    assert set(enc.offsets) <= {0, -(2 ** (bw - 1))}               # zero point 0, signed or unsigned
    np.testing.assert_array_equal(enc.offsets, plain.offsets)
    np.testing.assert_allclose(enc.min, enc.offsets * scale)       # the grid's ends (spec 1.1)
    np.testing.assert_allclose(enc.max, enc.min + (2**bw - 1) * scale)
    if rounding == "ceil":   # the next power up: the grid covers the range
        assert (scale >= s0).all() and (scale < 2 * s0).all()
        assert (enc.min <= lo + 1e-12).all() and (enc.max >= hi - 1e-12).all()
    elif rounding == "floor":  # the next one down: finer, clips the ends
        assert (scale <= s0).all() and (scale > s0 / 2).all()
    else:
        assert (np.abs(exponent - np.log2(s0)) <= 0.5 + 1e-12).all()


def test_the_plan_gives_pow2_by_default_and_an_edit_turns_it_off():
    plan = PrecisionPlan(Defaults(pow2="ceil"))
    plan.edits["b"] = TensorEdit(pow2="off")
    assert plan.settings("activation", "a").pow2 == "ceil" and plan.settings("activation", "a").symmetric
    assert plan.settings("activation", "b").pow2 is None
    assert plan.settings("bias", "c").pow2 is None  # int32 biases follow input x weight scale
    assert PrecisionPlan.from_dict(plan.to_dict()).settings("weight", "a").pow2 == "ceil"
    assert check_edit("t", TensorEdit(pow2="up")) and not check_edit("t", TensorEdit(pow2="floor"))


def test_cli_pow2_encodings_export_and_run_as_simulated(tmp_path, capsys):
    model = str(RESOURCES / "digits_cnn.onnx")
    enc, qdq = tmp_path / "enc.json", tmp_path / "q.onnx"
    assert main(["calibrate", model, "--data", str(RESOURCES / "digits_calib.npz"), "-o", str(enc), "--pow2", "ceil",
                 "--format", "1.0.0", "--target", "ort-cpu", "-q"]) == 0
    doc = json.loads(enc.read_text())
    scales = [s for e in doc["activation_encodings"] + doc["param_encodings"] if e.get("bw", 32) <= 16
              for s in e["scale"]]
    assert scales and all(np.log2(s) == round(np.log2(s)) for s in scales)
    runs_as_simulated(capsys, model, enc, "ort-cpu", tmp_path)
