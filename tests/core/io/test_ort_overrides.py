"""onnxruntime TensorQuantOverrides: quantize_static accepts them and reproduces qinspect's plan."""
import contextlib
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.io.ort_overrides import (
    ort_quantize_kwargs,
    ort_tensor_quant_overrides,
    read_ort_overrides,
    write_ort_overrides,
)
from qinspect.core.graph.model import load_model
from qinspect.core.plan import Defaults, PrecisionPlan, derive_encodings
from qinspect.core.analysis.simulate import Simulator
from tests.models import small_cnn


class Reader(CalibrationDataReader):
    def __init__(self, x, batch=4):
        self.batches = iter([{"input": x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ort")
    path = folder / "cnn.onnx"
    onnx.save_model(small_cnn(), path)
    index = load_model(path)
    x = np.random.default_rng(5).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.save(folder / "x.npy", x)
    stats = calibrate(index, open_data(str(folder / "x.npy"), index.inputs)).stats
    return folder, path, index, x, stats


def quantize(path, out, x, kwargs):
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # onnxruntime's quantization tools print to stdout
        quantize_static(str(path), str(out), Reader(x), quant_format=QuantFormat.QDQ, **kwargs)
    return out


def run(path, x, optimize=False):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]


@pytest.mark.parametrize("defaults", [Defaults(), Defaults(act_bw=16), Defaults(param_bw=4)], ids=["8", "a16", "w4"])
def test_quantize_static_reproduces_the_plan(setup, defaults):
    """onnxruntime's quantizer, given our scales and zero points, produces a model whose outputs are
    the simulation's (both round x / scale ties to even in float32; optimizations off, see test_qdq)."""
    folder, path, index, x, stats = setup
    encodings = derive_encodings(index, stats, PrecisionPlan(defaults))
    out = quantize(path, folder / "ort.onnx", x, ort_quantize_kwargs(index, encodings))
    got = run(out, x)
    assert np.isfinite(got).all()
    (want,) = Simulator(index, encodings, names=["logits"]).run({"input": x})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    run(out, x, optimize=True)  # and it runs as users run it


def test_overrides_carry_our_types_scales_and_zero_points(setup):
    _, _, index, _, stats = setup
    encodings = derive_encodings(index, stats, PrecisionPlan(Defaults(param_bw=4)))
    overrides = ort_tensor_quant_overrides(index, encodings)
    (inp,) = overrides["input"]
    assert inp["quant_type"] == QuantType.QUInt8 and inp["scale"].dtype == np.float32
    assert inp["zero_point"] == -encodings["input"].offset[0] and inp["zero_point"].dtype == np.uint8
    w = overrides["conv1.weight"]
    assert len(w) == 4 and w[0]["axis"] == 0 and all(r["quant_type"] == QuantType.QInt4 for r in w)
    assert [float(r["scale"]) for r in w] == pytest.approx(encodings["conv1.weight"].scale, rel=1e-7)
    assert "conv1.bias" not in overrides  # onnxruntime derives int32 biases itself
    assert overrides["pool_out"][0]["scale"] == overrides["relu1_out"][0]["scale"]  # alias: source's encoding
    assert ort_quantize_kwargs(index, encodings)["extra_options"]["UseQDQContribOps"] is True


def test_json_round_trip(setup):
    folder, path, index, x, stats = setup
    plan = PrecisionPlan()
    plan.set("conv2_out", dtype="float", bw=16)
    encodings = derive_encodings(index, stats, plan)
    out = write_ort_overrides(folder / "ort.json", index, encodings, protect=[path])
    doc = json.loads(out.read_text())
    assert doc["TensorQuantOverrides"]["input"][0]["quant_type"] == "QUInt8"
    assert "conv2" in doc["nodes_to_exclude"] and "conv2_out" not in doc["TensorQuantOverrides"]
    kwargs = read_ort_overrides(out)
    direct = ort_quantize_kwargs(index, encodings)
    assert kwargs["nodes_to_exclude"] == direct["nodes_to_exclude"]
    assert kwargs["extra_options"].keys() == direct["extra_options"].keys()
    for name, rows in direct["extra_options"]["TensorQuantOverrides"].items():
        for a, b in zip(rows, kwargs["extra_options"]["TensorQuantOverrides"][name]):
            assert a["quant_type"] == b["quant_type"] and a["scale"] == b["scale"] and a["zero_point"] == b["zero_point"]
            assert a["zero_point"].dtype == b["zero_point"].dtype
    quantized = quantize(path, folder / "ort_fp.onnx", x, kwargs)
    assert np.isfinite(run(quantized, x)).all()


def _quantized(model) -> dict:
    """Every tensor a QDQ model quantizes (by its original name) -> its scale."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" or (n.op_type == "DequantizeLinear" and n.input[0] in inits):
            name = n.input[0] if n.op_type == "QuantizeLinear" else n.output[0]
            for suffix in ("_DequantizeLinear_Output", "_QuantizeLinear_Input", "_float"):
                name = name.replace(suffix, "")
            out[name] = inits[n.input[1]]
    return out


@pytest.mark.parametrize("target", ["qnn-htp", "ort-cpu"])
def test_quantize_static_places_what_qinspect_places_with_a_float_edit(setup, target):
    """Node by node: onnxruntime's quantizer, fed the exported overrides, quantizes exactly the tensors
    qinspect's own QDQ export quantizes, with the same scales, except the ones the notes name (it can
    keep a tensor float only by leaving whole nodes float). It adds no quantizer of its own."""
    import inspect

    from qinspect.core.io.ort_overrides import ort_overrides_dict
    from qinspect.core.io.qdq import build_qdq_model
    from qinspect.core.ptq.prepare import prepare_model

    folder, path, _, x, _ = setup
    index = prepare_model(path, target)
    stats = calibrate(index, open_data(str(folder / "x.npy"), index.inputs)).stats
    plan = PrecisionPlan(target=target)
    plan.set("relu1_out", dtype="float", bw=32)  # a Conv+Relu output, read by a MaxPool, then a Conv
    encodings = derive_encodings(index, stats, plan)
    kwargs = ort_quantize_kwargs(index, encodings)
    assert set(kwargs) <= set(inspect.signature(quantize_static).parameters)  # documented keyword arguments
    theirs = _quantized(onnx.load(quantize(path, folder / f"float_{target}.onnx", x, kwargs)))
    ours = _quantized(build_qdq_model(index, encodings, target)[0])
    doc = ort_overrides_dict(index, encodings)
    lost = set(doc["left_float"])
    assert all(n in " ".join(doc["notes"]) for n in lost)  # and the notes say so
    print(f"\n{target}: nodes_to_exclude {kwargs['nodes_to_exclude']}; not expressible: {sorted(lost)}")
    assert set(theirs) == set(ours) - lost and "pool_out" not in theirs and "conv1_out" not in theirs
    for name in theirs:
        np.testing.assert_allclose(theirs[name], ours[name], rtol=1e-6, err_msg=name)
