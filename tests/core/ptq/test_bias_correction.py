"""Bias correction: the mean output shift per-tensor 4-bit weights cause is mostly gone, measured on
the data it learned from and on data it never saw."""
import numpy as np
import onnxruntime as ort
import pytest

from qinspect.core.analysis.layer_data import LayerData
from qinspect.core.analysis.simulate import Simulator
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.plan import Defaults, PrecisionPlan, derive_encodings
from qinspect.core.ptq.bias_correction import _normal_relu_mean, bias_correction, with_biases
from qinspect.core.ptq.layers import model_layers
from qinspect.core.ptq.prepare import prepare_model
from qinspect.gui.main_window import EXAMPLE_DATA, EXAMPLE_MODEL

TEST_DATA = EXAMPLE_MODEL.parent / "digits_test.npz"


def output_shift(index, encodings, data) -> float:
    """RMS over the logits of the mean (quantized - float) difference."""
    sim = Simulator(index, encodings, names=["logits"])
    session = ort.InferenceSession(index.model.SerializeToString(), providers=["CPUExecutionProvider"])
    diffs = []
    for _, feeds in data.counted_batches(64):
        diffs.append(sim.run(feeds)[0] - session.run(["logits"], feeds)[0])
    return float(np.sqrt(np.mean(np.concatenate(diffs).mean(axis=0) ** 2)))


@pytest.fixture(scope="module")
def w4_per_tensor():
    index = prepare_model(str(EXAMPLE_MODEL))
    calib = open_data(str(EXAMPLE_DATA), index.inputs)
    plan = PrecisionPlan(Defaults(param_bw=4, per_channel=False))
    return index, calib, derive_encodings(index, calibrate(index, calib).stats, plan)


def test_empirical_correction_removes_most_of_the_mean_shift(w4_per_tensor):
    index, calib, encodings = w4_per_tensor
    test = open_data(str(TEST_DATA), index.inputs)
    layers = [layer for layer, _ in model_layers(index.model).values()]
    data = LayerData(index, encodings, calib, inputs=[la.input for la in layers], outputs=[la.output for la in layers])
    values, results, skipped = bias_correction(index, encodings, data)
    assert not skipped and set(values) == set(index.biases())
    corrected = index.with_ptq_values(values)
    for name, source in (("calibration", calib), ("test", test)):
        before, after = output_shift(index, encodings, source), output_shift(corrected, encodings, source)
        print(f"\nper-tensor W4 digits CNN, RMS mean logit shift on the {name} split: {before:.3f} -> {after:.3f}")
        assert after < 0.3 * before
    # the float model is untouched: the corrected values go to the biases' quantizers only
    for name in values:
        assert not np.array_equal(corrected.quantized_value(name), corrected.initializer(name))


def test_analytic_mean_of_a_relu_of_a_normal():
    rng = np.random.default_rng(0)
    beta, gamma = np.array([1.0, -0.5, 0.0]), np.array([0.5, 1.0, 2.0])
    z = rng.normal(beta, gamma, size=(400_000, 3))
    np.testing.assert_allclose(_normal_relu_mean(beta, gamma), np.maximum(z, 0).mean(axis=0), rtol=1e-2)


def test_a_layer_without_a_bias_gets_a_zero_one():
    from tests.core.ptq.test_cle import two_convs

    model = two_convs()
    node = model.graph.node[0]
    del node.input[2:]  # conv1 without its bias
    out, added = with_biases(model)
    assert added == ["conv1.bias"]
    assert {n.name: list(n.input) for n in out.graph.node}["conv1"] == ["input", "w1", "conv1.bias"]
