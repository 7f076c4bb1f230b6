"""AdaRound and SeqMSE on the trained digits CNN at W4A8: lower output error than nearest rounding,
and the exported QDQ model gives the same error in onnxruntime (default session options)."""
import numpy as np
import pytest

from qinspect.core.analysis.compare import compare
from qinspect.core.analysis.layer_data import LayerData
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.plan import Defaults, PrecisionPlan, derive_encodings
from qinspect.core.ptq.adaround import AdaroundOptions, adaround, round_layer, Statistics
from qinspect.core.ptq.layers import model_layers
from qinspect.core.ptq.prepare import prepare_model
from qinspect.core.ptq.seq_mse import seq_mse
from qinspect.gui.main_window import EXAMPLE_DATA, EXAMPLE_MODEL

TEST_DATA = EXAMPLE_MODEL.parent / "digits_test.npz"


@pytest.fixture(scope="module")
def w4a8():
    index = prepare_model(str(EXAMPLE_MODEL))
    calib = open_data(str(EXAMPLE_DATA), index.inputs)
    encodings = derive_encodings(index, calibrate(index, calib).stats, PrecisionPlan(Defaults(param_bw=4)))
    return index, calib, encodings, open_data(str(TEST_DATA), index.inputs)


def layer_data(index, encodings, data):
    layers = [layer for layer, _ in model_layers(index.model).values()]
    return LayerData(index, encodings, data, inputs=[la.input for la in layers], outputs=[la.output for la in layers])


def test_adaround_beats_nearest_rounding_and_the_export_reproduces_it(w4a8):
    index, calib, encodings, test = w4a8
    nearest = compare(index, encodings, test).outputs["logits"].sqnr_db
    values, frozen, results, skipped = adaround(index, encodings, layer_data(index, encodings, calib))
    assert not skipped and set(values) == set(index.weights()) and set(frozen) == set(values)
    for name, w in values.items():  # on the grid of the frozen encoding: the export keeps the learned rounding
        np.testing.assert_allclose(frozen[name].quantize_dequantize(w), w, rtol=0, atol=1e-6)
    rounded = index.with_ptq_values(values)
    learned = dict(encodings, **frozen)
    result = compare(rounded, learned, test, runtime=True, target="qnn-htp")
    ada, runtime = result.outputs["logits"].sqnr_db, result.runtime.outputs["logits"]
    print(f"\nW4A8 digits CNN, output SQNR on the test split: nearest {nearest:.2f} dB, AdaRound {ada:.2f} dB, "
          f"exported QDQ in onnxruntime {runtime:.2f} dB; top-1 {result.accuracy_float:.3f} float, "
          f"{result.accuracy_quantized:.3f} AdaRound")
    assert ada > nearest + 6
    assert abs(runtime - ada) < 0.5
    assert all(r.adaround_mse < r.nearest_mse for r in results)


def test_round_layer_on_a_known_problem():
    """One output, two inputs that always come together (x1 = x2): the best rounding makes the two
    errors cancel (0.45 up, 0.35 down), which nearest rounding (both down) cannot."""
    x = np.random.default_rng(0).normal(size=(256, 1))
    x = np.hstack([x, x])
    w = np.array([[[0.45, 0.35]]])
    y = x @ w[0].T
    stats = Statistics(x.T @ x[None], (x.T @ y)[None], 256, float((y * y).sum()))
    one = np.ones((1, 1, 1))
    near = np.floor(w + 0.5)
    learned = round_layer(w, one, one * -8, 15, stats, AdaroundOptions(iterations=500))
    assert stats.mse(learned) < stats.mse(near)
    assert list(learned.reshape(-1)) == [1.0, 0.0]


def test_seq_mse_chooses_ranges_that_lower_the_error(w4a8):
    index, calib, encodings, test = w4a8
    per_tensor = derive_encodings(index, calibrate(index, calib).stats,
                                  PrecisionPlan(Defaults(param_bw=4, per_channel=False)))
    before = compare(index, per_tensor, test).outputs["logits"].sqnr_db
    frozen, results, skipped = seq_mse(index, per_tensor, layer_data(index, per_tensor, calib))
    after = compare(index, dict(per_tensor, **frozen), test).outputs["logits"].sqnr_db
    print(f"\nW4A8 per-tensor weights, output SQNR: calibrated ranges {before:.2f} dB, SeqMSE {after:.2f} dB")
    assert after > before + 1
    assert all(r.mse_after <= r.mse_before for r in results)
    assert all(0 < f[0] <= 1 for f in (r.factors for r in results))
