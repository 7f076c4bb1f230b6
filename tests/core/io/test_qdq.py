"""QDQ export: graph form, accuracy on the bundled digits CNN, agreement with the simulation, safety."""
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.quant.encoding import Encoding, compute_encoding
from qinspect.core.errors import QInspectError
from qinspect.core.io.qdq import build_qdq_model, export_qdq
from qinspect.core.quant.qparams import onnx_qparams, quantize_constant
from qinspect.core.graph.model import load_model
from qinspect.core.ptq.prepare import prepare_model
from qinspect.core.plan import Defaults, PrecisionPlan, derive_encodings
from qinspect.core.analysis.simulate import Simulator
from tests.helpers import cpu_independent
from tests.models import finish, small_cnn

RESOURCES = Path(__file__).resolve().parents[3] / "resources"
PRECISIONS = {
    "8-bit": Defaults(),
    "16-bit": Defaults(act_bw=16, param_bw=16),
    "4-bit weights": Defaults(param_bw=4),
}


def session(path, optimize=True):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits example exported for onnxruntime's CPU provider (target ort-cpu): these tests run the
    exported models with default session options, as users do, on whatever CPU runs the tests."""
    index = prepare_model(RESOURCES / "digits_cnn.onnx", "ort-cpu")
    stats = calibrate(index, open_data(str(RESOURCES / "digits_calib.npz"), index.inputs), batch_size=64).stats
    with np.load(RESOURCES / "digits_test.npz") as f:
        x, y = f["input"], f["labels"]
    (reference,) = session(RESOURCES / "digits_cnn.onnx").run(["logits"], {"input": x})
    folder = tmp_path_factory.mktemp("digits")
    exported = {}
    for name, defaults in PRECISIONS.items():
        encodings = derive_encodings(index, stats, PrecisionPlan(defaults, "ort-cpu"))
        path = folder / f"{name.replace(' ', '_')}.onnx"
        exported[name] = (path, encodings, export_qdq(index, encodings, path, target="ort-cpu"))
    return index, x, y, reference, exported


def sqnr(ref, out):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((out.astype(np.float64) - ref) ** 2))


def test_8bit_export_keeps_digits_accuracy(digits):
    index, x, y, reference, exported = digits
    path, _, report = exported["8-bit"]
    (logits,) = session(path).run(["logits"], {"input": x})
    float_acc = (reference.argmax(1) == y).mean()
    quant_acc = (logits.argmax(1) == y).mean()
    print(f"\ndigits 8-bit QDQ: float {100 * float_acc:.2f}%, quantized {100 * quant_acc:.2f}%, "
          f"output SQNR {sqnr(reference, logits):.1f} dB")
    assert abs(quant_acc - float_acc) <= 0.005
    assert (report.opset, report.ir_version) == (13, 8)
    assert report.converted_from is None
    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    # input + 5 fused outputs + MaxPool/Flatten outputs, which reuse their input's encoding
    assert ops.count("QuantizeLinear") == 8 == report.activations
    assert ops.count("DequantizeLinear") == 8 + 10
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]


def test_16bit_is_closer_to_float_and_4bit_weights_further(digits):
    index, x, y, reference, exported = digits
    results = {}
    for name, (path, _, report) in exported.items():
        (logits,) = session(path).run(["logits"], {"input": x})
        results[name] = (sqnr(reference, logits), (logits.argmax(1) == y).mean())
        if name != "8-bit":
            assert (report.opset, report.ir_version, report.converted_from) == (21, 10, 13)
            assert any("opset 13 to 21" in n for n in report.notes)
    print("\n" + "\n".join(f"digits {k}: output SQNR {s:.1f} dB, accuracy {100 * a:.2f}%" for k, (s, a) in results.items()))
    assert results["16-bit"][0] > results["8-bit"][0] + 15  # 8 more bits: ~48 dB in theory
    assert results["4-bit weights"][0] < results["8-bit"][0] - 10


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_exported_model_matches_the_simulation(digits, name):
    """The simulation fake-quantizes with float ops (Div, Round, Clip, Mul) and feeds the quantized
    weights; the export uses QuantizeLinear/DequantizeLinear and integer initializers. Both divide
    by a float32 scale and round ties to even, so with onnxruntime's graph optimizations off they
    compute the same float32 numbers (tolerance: float32 rounding of the last ops, rtol 1e-6).

    With optimizations on, onnxruntime fuses DQ -> Conv/Gemm -> Q into integer kernels
    (QLinearConv) whose requantization rounds the accumulator in another order, so a value that
    lies within float32 rounding of a quantization boundary can land one output step away: allow
    that on under 1% of the values, and never by more than one step. The ort-cpu target keeps 8-bit
    weights on a 7-bit grid, so this holds on CPUs without VNNI too, where u8s8 kernels saturate.
    """
    index, x, _, _, exported = digits
    path, encodings, _ = exported[name]
    (simulated,) = Simulator(index, encodings, names=["logits"]).run({"input": x})
    (plain,) = session(path, optimize=False).run(["logits"], {"input": x})
    np.testing.assert_allclose(plain, simulated, rtol=1e-6, atol=0)
    (fused,) = session(path, optimize=True).run(["logits"], {"input": x})
    step = encodings["logits"].scale[0]
    diff = np.abs(fused - simulated)
    assert diff.max() <= step * (1 + 1e-5)
    assert np.count_nonzero(diff) <= 0.01 * diff.size


def export_small(tmp_path, encodings=None, defaults=None, model=None):
    index = load_model(model or small_cnn())
    if encodings is None:
        x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        stats = calibrate(index, open_data(str(tmp_path / "x.npy"), index.inputs), batch_size=8).stats
        encodings = derive_encodings(index, stats, PrecisionPlan(defaults or Defaults()))
    out = tmp_path / "q.onnx"
    report = export_qdq(index, encodings, out)
    return index, encodings, onnx.load(out), report


def initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def node_making(model, name):
    return next(n for n in model.graph.node if name in n.output)


def test_per_channel_weights_and_int32_bias_in_graph(tmp_path):
    index, enc, model, report = export_small(tmp_path)
    inits = initializers(model)
    w = inits["conv1.weight_quantized"]
    assert w.dtype == np.int8 and w.shape == (4, 3, 3, 3)
    dq = node_making(model, "conv1.weight")
    assert dq.op_type == "DequantizeLinear" and helper.get_attribute_value(dq.attribute[0]) == 0
    scale = inits[dq.input[1]]
    assert scale.shape == (4,) and np.all(inits[dq.input[2]] == 0)
    np.testing.assert_array_equal(scale, np.float32(enc["conv1.weight"].scale))
    # Gemm weight [classes, features] with transB=1: output channels on axis 0
    fc = node_making(model, "fc.weight")
    assert [a.i for a in fc.attribute if a.name == "axis"] == [0] and inits[fc.input[1]].shape == (5,)

    bias = node_making(model, "conv1.bias")
    b = inits[bias.input[0]]
    assert b.dtype == np.int32 and b.shape == (4,)
    assert np.all(inits[bias.input[2]] == 0) and inits[bias.input[2]].dtype == np.int32
    expected = np.float32(enc["input"].scale[0] * np.asarray(enc["conv1.weight"].scale))
    np.testing.assert_allclose(inits[bias.input[1]], expected, rtol=1e-7)
    np.testing.assert_array_equal(b, np.rint(index.initializer("conv1.bias") / inits[bias.input[1]].astype(np.float64)))
    assert report.biases == 3 and report.weights == 3 and not cpu_independent(report.warnings)
    assert "conv1.weight" not in inits and "conv1.bias" not in inits  # float copies are gone


def test_activation_zero_points_follow_the_spec(tmp_path):
    """Asymmetric -> uint8 with zp = -offset; symmetric -> int8 with zp 0 (spec 4.2)."""
    asym = compute_encoding(-1.8, 0.5, 8)
    qp = onnx_qparams(asym)
    assert (qp.signed, int(qp.zero_point)) == (False, 200)
    sym = compute_encoding(-1.8, 0.5, 8, symmetric=True)
    qp = onnx_qparams(sym)
    assert (qp.signed, int(qp.zero_point), qp.label()) == (True, 0, "int8")
    assert int(onnx_qparams(compute_encoding(-1.8, 0.5, 16)).zero_point) == 51288


def test_bias_overflow_is_clipped_with_a_warning(tmp_path):
    index = load_model(small_cnn())
    encodings = {
        "input": Encoding(bw=8, scale=(1e-9,), offset=(-128,)),
        "conv1.weight": Encoding(bw=8, scale=(1e-6,) * 4, offset=(-128,) * 4, symmetric=True, axis=0),
    }
    out = tmp_path / "q.onnx"
    report = export_qdq(index, encodings, out)
    assert any("overflow int32" in w and "conv1.bias" in w for w in report.warnings)
    model = onnx.load(out)
    b = initializers(model)[node_making(model, "conv1.bias").input[0]]
    assert set(b.tolist()) <= {-(2**31), 2**31 - 1}  # saturated
    assert "stay float" in " ".join(report.notes)  # every other tensor has no encoding
    session(out).run(None, {"input": np.ones((1, 3, 8, 8), np.float32)})


def test_float16_and_float_kept_tensors(tmp_path):
    index = load_model(small_cnn())
    x = np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    stats = calibrate(index, open_data(str(tmp_path / "x.npy"), index.inputs)).stats
    plan = PrecisionPlan()
    plan.set("conv2_out", dtype="float", bw=16)
    plan.set("sig_out", dtype="float", bw=32)
    plan.set("fc.weight", dtype="float", bw=16)
    encodings = derive_encodings(index, stats, plan)
    out = tmp_path / "q.onnx"
    report = export_qdq(index, encodings, out)
    model = onnx.load(out)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert {helper.get_attribute_value(c.attribute[0]) for c in casts} == {TensorProto.FLOAT16, TensorProto.FLOAT}
    assert node_making(model, "sig_out").op_type == "Sigmoid"  # float32: no quantizer
    assert initializers(model)["fc.weight_fp16"].dtype == np.float16
    # QNN's rule (the default target): a float output or weight makes the op's output, weight and bias float
    assert encodings["fc.bias"].is_float and encodings["logits"].is_float
    assert set(report.float16) == {"conv2_out", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias", "logits"}
    assert report.kept_float == ["sig_out"]
    (got,) = session(out, optimize=False).run(["logits"], {"input": x})
    (sim,) = Simulator(index, encodings, names=["logits"]).run({"input": x})
    np.testing.assert_allclose(got, sim, rtol=1e-6)


def test_int4_weights_are_packed(tmp_path):
    index, enc, model, report = export_small(tmp_path, defaults=Defaults(param_bw=4))
    assert report.opset == 21 and model.ir_version == 10
    t = next(t for t in model.graph.initializer if t.name == "conv2.weight_quantized")
    assert t.data_type == TensorProto.INT4 and len(t.raw_data) == (4 * 4 * 9 + 1) // 2
    expected = quantize_constant(index.initializer("conv2.weight"), onnx_qparams(enc["conv2.weight"]))
    np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.int64), expected)
    assert expected.min() >= -8 and expected.max() <= 7


def test_strict_symmetric_is_noted(tmp_path):
    index = load_model(small_cnn())
    w = index.initializer("conv1.weight")
    m = np.abs(w).reshape(4, -1).max(1)
    strict = compute_encoding(-m, m, 8, strict=True, axis=0)
    _, messages = build_qdq_model(index, {"conv1.weight": strict})
    assert any("narrow range" in m and "conv1.weight" in m for m in messages)


def test_old_opset_is_converted(tmp_path):
    model = small_cnn()
    model.opset_import[0].version = 11
    model = finish(model.graph, 11)
    index, _, exported, report = export_small(tmp_path, model=model)
    assert report.converted_from == 11 and report.opset == 13
    session(tmp_path / "q.onnx").run(None, {"input": np.zeros((1, 3, 8, 8), np.float32)})


def test_never_touches_the_input_and_writes_atomically(tmp_path, monkeypatch):
    model_path = tmp_path / "m.onnx"
    onnx.save_model(small_cnn(), model_path)
    before = (model_path.read_bytes(), model_path.stat().st_mtime_ns)
    index = load_model(model_path)
    encodings = {"input": compute_encoding(-2, 2, 8)}
    with pytest.raises(QInspectError, match="refusing to overwrite"):
        export_qdq(index, encodings, model_path)
    out = tmp_path / "q.onnx"
    out.write_bytes(b"previous")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(QInspectError, match="previous file is unchanged"):
        export_qdq(index, encodings, out)
    monkeypatch.undo()
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "q.onnx"]  # no temp file left
    export_qdq(index, encodings, out)
    assert onnx.load(out).graph.node[0].op_type == "QuantizeLinear"
    assert (model_path.read_bytes(), model_path.stat().st_mtime_ns) == before


def test_models_with_external_data_export_with_external_data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(small_cnn(channels=16), src / "m.onnx", save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    index = load_model(src / "m.onnx")
    encodings = derive_encodings(index, {}, PrecisionPlan())  # no statistics: weights and biases only
    with pytest.raises(QInspectError, match="overwrite"):
        export_qdq(index, encodings, src / "m.onnx")
    report = export_qdq(index, encodings, tmp_path / "q.onnx")
    assert report.external_data == tmp_path / "q.onnx.data" and report.external_data.exists()
    raw = onnx.load(tmp_path / "q.onnx", load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in raw.graph.initializer)
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (got,) = session(tmp_path / "q.onnx").run(["logits"], {"input": x})
    inline = tmp_path / "inline.onnx"
    export_qdq(index, encodings, inline, external_data=False)
    (want,) = session(inline).run(["logits"], {"input": x})
    np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in src.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_control_flow_subgraphs_export_and_match_the_simulation(tmp_path):
    vi = helper.make_tensor_value_info
    w = numpy_helper.from_array(np.random.default_rng(6).standard_normal((2, 2, 1, 1)).astype(np.float32), "w_then")
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_then"], ["c_then"], name="then_conv"),
         helper.make_node("Relu", ["c_then"], ["r_then"], name="then_relu")],
        "then", [], [vi("r_then", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["x_else"], name="else_id")],
                               "else", [], [vi("x_else", TensorProto.FLOAT, [1, 2, 4, 4])])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)], "g",
        [vi("x", TensorProto.FLOAT, [1, 2, 4, 4]), vi("cond", TensorProto.BOOL, [])],
        [vi("y", TensorProto.FLOAT, [1, 2, 4, 4])])
    index = load_model(finish(graph))
    encodings = {n: compute_encoding(-3, 3, 8) for n in index.activations()}
    encodings["w_then"] = compute_encoding(-np.full(2, 2.0), np.full(2, 2.0), 8, symmetric=True, axis=0)
    out = tmp_path / "if.onnx"
    report = export_qdq(index, encodings, out)
    assert report.weights == 1 and report.activations == 4  # x, r_then, y and the alias x_else
    x = np.random.default_rng(7).standard_normal((1, 2, 4, 4)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        (got,) = session(out, optimize=False).run(["y"], feeds)
        (want,) = Simulator(index, encodings, names=["y"]).run(feeds)
        np.testing.assert_allclose(got, want, rtol=1e-6)
