"""BatchNormalization folded as the QNN converter and onnxruntime fold it, before weights are encoded."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qinspect.core.analysis.compare import compare
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.io.qdq import build_qdq_model
from qinspect.core.plan import PrecisionPlan, derive_encodings
from qinspect.core.ptq.bn_fold import fold_batchnorms
from qinspect.core.ptq.prepare import prepare_model
from qinspect.core.quant.qparams import dequantize_constant, onnx_qparams, quantize_constant
from tests.models import finish

F = TensorProto.FLOAT


def t(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def bn_params(rng, prefix, c):
    """Statistics like a trained network's: running variances well below 1 and gammas around 1, so
    the folded weights are several times the unfolded ones (the case that clips when encodings are
    computed before folding)."""
    return [t(f"{prefix}.gamma", rng.uniform(0.5, 2.0, c)), t(f"{prefix}.beta", rng.normal(0, 0.5, c)),
            t(f"{prefix}.mean", rng.normal(0, 1.0, c)), t(f"{prefix}.var", rng.uniform(0.005, 0.05, c))]


def conv_bn_net(seed=0, bias=True):
    """input -> Conv(+BN)+Relu -> Conv(no bias)+BN+Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["input", "c1.w"] + (["c1.b"] if bias else []), ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c1", "bn1.gamma", "bn1.beta", "bn1.mean", "bn1.var"], ["b1"],
                         name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2.w"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c2", "bn2.gamma", "bn2.beta", "bn2.mean", "bn2.var"], ["b2"],
                         name="bn2", epsilon=1e-3),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    inits = [t("c1.w", rng.normal(0, 0.1, (8, 3, 3, 3))), t("c2.w", rng.normal(0, 0.05, (8, 8, 3, 3))),
             t("fc.w", rng.normal(0, 0.3, (5, 8))), t("fc.b", rng.normal(0, 0.1, 5))]
    if bias:
        inits.append(t("c1.b", rng.normal(0, 0.1, 8)))
    inits += bn_params(rng, "bn1", 8) + bn_params(rng, "bn2", 8)
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("input", F, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", F, ["N", 5])], initializer=inits)
    return finish(graph)


def run(model, x, optimize=False):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


def fold_by_hand(model):
    """The same folding written out independently: W * s, (b - mean) * s + beta, per output channel."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in m.graph.initializer}
    nodes = list(m.graph.node)
    for bn in [n for n in nodes if n.op_type == "BatchNormalization"]:
        conv = next(n for n in nodes if n.output[0] == bn.input[0])
        eps = next(a.f for a in bn.attribute if a.name == "epsilon")
        g, b, mu, var = (inits[n] for n in bn.input[1:5])
        s = g / np.sqrt(var + eps)
        w = inits[conv.input[1]] * s[:, None, None, None]
        bias = (inits[conv.input[2]] if len(conv.input) > 2 else 0.0) - mu
        inits[conv.input[1]] = w
        name = conv.input[2] if len(conv.input) > 2 else conv.name + ".bias"
        if len(conv.input) < 3:
            conv.input.append(name)
        inits[name] = bias * s + b
        conv.output[0] = bn.output[0]
        nodes.remove(bn)
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "folded_by_hand", list(m.graph.input), list(m.graph.output),
                              [t(k, v) for k, v in inits.items() if k in used])
    return finish(graph)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return str(tmp_path / "x.npy"), x


def test_folded_conv_weights_are_encoded_as_the_target_runs_them(data):
    path, x = data
    model = conv_bn_net()
    index = prepare_model(model)  # qnn-htp folds BatchNormalization
    assert [n.op_type for n in index.model.graph.node].count("BatchNormalization") == 0
    assert "folded 2 BatchNormalization" in index.notes[0]
    np.testing.assert_allclose(run(index.model, x), run(model, x), rtol=1e-4, atol=1e-5)
    folded, raw = index.initializer("c2.w"), numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == "c2.w"))
    ratio = np.abs(folded).max(axis=(1, 2, 3)) / np.abs(raw).max(axis=(1, 2, 3))
    print(f"\nfolded / unfolded weight max per channel: {ratio.min():.1f}..{ratio.max():.1f}")
    assert ratio.max() > 1.9  # encodings of the unfolded weights would clip these channels

    stats = calibrate(index, open_data(path, index.inputs)).stats
    enc = derive_encodings(index, stats, PrecisionPlan())
    for w in ("c1.w", "c2.w"):
        e, values = enc[w], index.initializer(w)
        half = e.scales / 2
        assert np.all(values.max(axis=(1, 2, 3)) <= e.max + half) and np.all(values.min(axis=(1, 2, 3)) >= e.min - half)
    assert "conv2.bias" in index.targets and index.targets["conv2.bias"].kind == "bias"  # made by folding

    qdq, _ = build_qdq_model(index, enc)
    assert "BatchNormalization" not in [n.op_type for n in qdq.graph.node]
    stored = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    qp = onnx_qparams(enc["c2.w"])
    np.testing.assert_array_equal(stored["c2.w_quantized"], quantize_constant(folded, qp))
    back = dequantize_constant(stored["c2.w_quantized"], qp)
    assert np.abs(back - folded).max() <= qp.scale.max() / 2 * 1.001  # the folded weights, not clipped

    # The same network folded beforehand by hand gives the same encodings and the same output error.
    by_hand = prepare_model(fold_by_hand(model))
    stats2 = calibrate(by_hand, open_data(path, by_hand.inputs)).stats
    enc2 = derive_encodings(by_hand, stats2, PrecisionPlan())
    for name in ("c1.w", "c2.w", "fc.w", "r1", "r2", "logits"):
        np.testing.assert_allclose(enc[name].scale, enc2[name].scale, rtol=1e-5, err_msg=name)
    ours = compare(index, enc, open_data(path, index.inputs)).outputs["logits"].sqnr_db
    theirs = compare(by_hand, enc2, open_data(path, by_hand.inputs)).outputs["logits"].sqnr_db
    print(f"output SQNR folded by qinspect {ours:.2f} dB, folded beforehand {theirs:.2f} dB")
    assert abs(ours - theirs) < 0.1


def test_a_conv_without_bias_gets_one_named_as_aimet_names_it():
    model, report = fold_batchnorms(conv_bn_net(bias=False))
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert conv1.input[2] == "conv1.bias" and conv1.output[0] == "b1"
    assert [(f.batchnorm, f.into, f.weight, f.bias) for f in report.folded] == [
        ("bn1", "conv1", "c1.w", "conv1.bias"), ("bn2", "conv2", "c2.w", "conv2.bias")]
    names = {i.name for i in model.graph.initializer}
    assert not names & {"bn1.gamma", "bn1.var", "bn2.mean"}  # the folded parameters are gone


def _single(op, w, bn_c, **attrs):
    """x -> op(w, b) -> BatchNormalization -> y, for ConvTranspose and Gemm."""
    rng = np.random.default_rng(1)
    shape = ["N", 4] if op == "Gemm" else ["N", 4, 5, 5]
    nodes = [helper.make_node(op, ["x", "w", "b"], ["h"], name="op", **attrs),
             helper.make_node("BatchNormalization", ["h", "g", "be", "m", "v"], ["y"], name="bn")]
    inits = [t("w", w), t("b", rng.normal(0, 0.1, bn_c)), t("g", rng.uniform(0.5, 2, bn_c)),
             t("be", rng.normal(0, 0.5, bn_c)), t("m", rng.normal(0, 1, bn_c)), t("v", rng.uniform(0.01, 0.1, bn_c))]
    out = ["N", bn_c] if op == "Gemm" else ["N", bn_c, "H", "W"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, shape)],
                              [helper.make_tensor_value_info("y", F, out)], initializer=inits)
    return finish(graph)


@pytest.mark.parametrize("case", ["gemm", "gemm_transB", "convtranspose_groups"])
def test_gemm_and_conv_transpose_fold_to_the_same_outputs(case):
    rng = np.random.default_rng(2)
    if case.startswith("gemm"):
        trans = case.endswith("transB")
        model = _single("Gemm", rng.normal(0, 0.3, (6, 4) if trans else (4, 6)), 6, transB=int(trans), beta=0.5)
        x = rng.normal(0, 1, (3, 4)).astype(np.float32)
    else:
        model = _single("ConvTranspose", rng.normal(0, 0.3, (4, 3, 3, 3)), 6, group=2)  # 2 groups x 3 channels
        x = rng.normal(0, 1, (2, 4, 5, 5)).astype(np.float32)
    folded, report = fold_batchnorms(model)
    assert len(report.folded) == 1 and "BatchNormalization" not in [n.op_type for n in folded.graph.node]

    def out(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    np.testing.assert_allclose(out(folded), out(model), rtol=1e-4, atol=1e-5)


def test_what_cannot_fold_stays_with_the_reason(data):
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("BatchNormalization", ["r1", "g", "b", "m", "v"], ["after_relu"], name="bn_after_relu"),
        helper.make_node("Conv", ["after_relu", "w2"], ["c2"], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", "g", "b", "m", "v"], ["bn_shared"], name="bn_shared_input"),
        helper.make_node("Add", ["c2", "bn_shared"], ["y"], name="add"),
    ]
    inits = [t("w1", rng.normal(0, 0.3, (4, 3, 1, 1))), t("w2", rng.normal(0, 0.3, (4, 4, 1, 1)))]
    inits += [t("g", np.ones(4)), t("b", np.zeros(4)), t("m", np.zeros(4)), t("v", np.ones(4))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", F, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", F, ["N", 4, 8, 8])], initializer=inits)
    index = prepare_model(finish(graph))
    assert [n.op_type for n in index.model.graph.node].count("BatchNormalization") == 2
    notes = " | ".join(index.notes)
    assert "bn_after_relu stays unfolded (it follows Relu, not a Conv, ConvTranspose or Gemm)" in notes
    assert "bn_shared_input stays unfolded (conv2's output is also used elsewhere)" in notes
    assert "after_relu" in index.targets  # an op of its own: its own output quantizer
    path, x = data
    calibrate(index, open_data(path, index.inputs))  # and it calibrates


def test_training_mode_batchnorm_is_not_folded():
    model = conv_bn_net()
    bn = next(n for n in model.graph.node if n.name == "bn1")
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    _, report = fold_batchnorms(model)
    assert report.kept == {"bn1": "training mode"} and [f.batchnorm for f in report.folded] == ["bn2"]
