"""Cross-layer equalization on a trained MobileNet-style model (resources/digits_mobile.onnx: depthwise
convolutions, BatchNormalization, trained in numpy). With per-tensor 8-bit weights it is useless
(folding leaves a depthwise channel hundreds of times wider than the rest); equalized, it is back."""
import numpy as np
import onnxruntime as ort
import pytest

from qinspect.core.analysis.compare import compare
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.plan import Defaults, PrecisionPlan, derive_encodings
from qinspect.core.ptq.bias_correction import bias_correction
from qinspect.core.ptq.cle import equalize
from qinspect.core.ptq.layers import per_channel_max
from qinspect.core.ptq.prepare import prepare_model
from qinspect.gui.main_window import EXAMPLE_DATA, EXAMPLE_MODEL

MOBILE = EXAMPLE_MODEL.with_name("digits_mobile.onnx")
TEST_DATA = EXAMPLE_MODEL.with_name("digits_test.npz")
PER_TENSOR_W8 = PrecisionPlan(Defaults(per_channel=False))


def logits(model, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def quantized_accuracy(index, plan=PER_TENSOR_W8):
    calib = open_data(str(EXAMPLE_DATA), index.inputs)
    encodings = derive_encodings(index, calibrate(index, calib).stats, plan)
    result = compare(index, encodings, open_data(str(TEST_DATA), index.inputs))
    return result.accuracy_float, result.accuracy_quantized, result.outputs["logits"].sqnr_db


@pytest.fixture(scope="module")
def folded():
    return prepare_model(str(MOBILE))


def test_per_tensor_w8_fails_and_equalization_recovers_it(folded):
    dw = {n.name for n in folded.model.graph.node if n.op_type == "Conv" and any(a.name == "group" for a in n.attribute)}
    spread = {n: per_channel_max(folded.initializer(folded.nodes[n].input[1]), 0) for n in dw}
    assert min(r.max() / r.min() for r in spread.values()) > 100
    float_acc, before, before_db = quantized_accuracy(folded)
    model, bn, report = equalize(folded.model, folded.bn_params)
    assert report.chains == ["conv1 -> dw1 -> pw1", "pw1 -> dw2 -> pw2", "pw2 -> dw3 -> pw3"]
    equalized = prepare_model(model)
    _, after, after_db = quantized_accuracy(equalized)
    ratios = [per_channel_max(equalized.initializer(equalized.nodes[n].input[1]), 0) for n in dw]
    print(f"\ndigits MobileNet, per-tensor W8A8 top-1: float {float_acc:.3f}, as trained {before:.3f} "
          f"({before_db:.1f} dB), after CLE {after:.3f} ({after_db:.1f} dB); depthwise range spreads "
          f"{', '.join(f'{r.max() / r.min():.0f}' for r in spread.values())} -> "
          f"{', '.join(f'{r.max() / r.min():.1f}' for r in ratios)}")
    assert before < 0.5 and after > float_acc - 0.05  # most of the loss recovered


def test_the_equalized_model_computes_what_the_original_did(folded):
    x = np.load(TEST_DATA)["input"]
    ref = logits(folded.model, x)
    exact, _, _ = equalize(folded.model, folded.bn_params, absorb_high_bias=False)
    err = np.abs(logits(exact, x) - ref).max() / np.abs(ref).max()
    absorbed, _, report = equalize(folded.model, folded.bn_params)
    drift = np.abs(logits(absorbed, x) - ref).max() / np.abs(ref).max()
    print(f"\nlargest logit change relative to the largest logit: scaling only {err:.1e}, with high-bias "
          f"absorption {drift:.1e} ({sum(report.absorbed.values())} channels absorbed)")
    assert err < 1e-5  # float rounding
    assert drift < 0.02


def test_analytic_bias_correction_uses_the_batchnorm_statistics(folded):
    model, bn, _ = equalize(folded.model, folded.bn_params)
    index = prepare_model(model)
    index.bn_params = bn
    plan = PrecisionPlan(Defaults(param_bw=4))
    calib = open_data(str(EXAMPLE_DATA), index.inputs)
    encodings = derive_encodings(index, calibrate(index, calib).stats, plan)
    values, results, skipped = bias_correction(index, encodings, method="analytic")
    corrected = {r.layer for r in results}
    assert {"dw1", "pw1", "dw2", "pw2", "dw3", "pw3"} <= corrected  # each reads Relu(BN output)
    assert "conv1" in skipped and "BatchNormalization" in skipped["conv1"]  # it reads the graph input
    test = open_data(str(TEST_DATA), index.inputs)
    before = compare(index, encodings, test).outputs["logits"].sqnr_db
    after = compare(index.with_ptq_values(values), encodings, test).outputs["logits"].sqnr_db
    print(f"\ndigits MobileNet W4A8 after CLE, output SQNR: {before:.2f} dB -> {after:.2f} dB with analytic bias correction")
    assert after > before
