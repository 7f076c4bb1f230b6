"""Cross-layer equalization: chains found as the QNN guide lists them, function kept, ranges evened."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qinspect.core.ptq.cle import equalize
from qinspect.core.ptq.layers import per_channel_max
from qinspect.core.ptq.prepare import prepare_model
from tests.models import finish

F = TensorProto.FLOAT


def t(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def run(model, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def weights(model) -> dict:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def two_convs(act="Relu", spread=None, seed=0):
    """input -> conv1 (3->8, bias) -> act -> conv2 (8->4, bias). With `spread`, channel i of conv1
    is multiplied by s_i and input channel i of conv2 divided by it: the same function, badly
    balanced ranges."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8)
    w2, b2 = rng.normal(0, 0.3, (4, 8, 3, 3)), rng.normal(0, 0.1, 4)
    if spread is not None:
        s = spread
        w1, b1 = w1 * s[:, None, None, None], b1 * s
        w2 = w2 / s[None, :, None, None]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4)]
    inits = [t("w1", w1), t("b1", b1), t("w2", w2), t("b2", b2)]
    if act == "Relu":
        nodes.append(helper.make_node("Relu", ["c1"], ["a1"], name="act"))
    elif act == "Relu6":
        nodes.append(helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="act"))
        inits += [t("lo", 0.0), t("hi", 6.0)]
    else:
        nodes.append(helper.make_node(act, ["c1"], ["a1"], name="act"))
    nodes.append(helper.make_node("Conv", ["a1", "w2", "b2"], ["out"], name="conv2", pads=[1] * 4))
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("input", F, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("out", F, ["N", 4, 6, 6])], initializer=inits)
    return finish(graph)


def test_a_function_preserving_imbalance_is_undone():
    """Channel i scaled by s_i across a Relu, s spread over 1000x: CLE evens the ranges out (within
    2x of each other) and keeps the function to float rounding."""
    s = np.logspace(-1.5, 1.5, 8)[np.random.default_rng(1).permutation(8)]
    balanced, skewed = two_convs(), two_convs(spread=s)
    x = np.random.default_rng(2).normal(0, 1, (4, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(skewed, x), run(balanced, x), rtol=1e-4, atol=1e-5)  # the same function
    r = per_channel_max(weights(skewed)["w1"], 0)
    assert r.max() / r.min() > 300
    out, _, report = equalize(skewed)
    assert report.chains == ["conv1 -> conv2"] and not report.skipped
    w = weights(out)
    r1, r2 = per_channel_max(w["w1"], 0), per_channel_max(w["w2"], 1)
    print(f"\nimbalanced pair: first layer's channel ranges {r.max() / r.min():.0f}x apart -> "
          f"{r1.max() / r1.min():.2f}x (first), {r2.max() / r2.min():.2f}x (second) after CLE")
    assert r1.max() / r1.min() < 2 and r2.max() / r2.min() < 2
    np.testing.assert_allclose(r1, r2, rtol=1e-5)  # each channel's range is the same in both layers
    np.testing.assert_allclose(run(out, x), run(skewed, x), rtol=1e-4, atol=1e-5)


def test_relu6_becomes_relu_and_the_note_says_so():
    model = two_convs("Relu6", spread=np.logspace(-1, 1, 8))
    out, _, report = equalize(model)
    assert report.relu6 == ["act"]
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "Conv"]
    assert any("Relu6 (Clip 0..6) became Relu" in line and "act" in line for line in report.notes())


def test_other_activations_end_the_chain_with_the_reason():
    out, _, report = equalize(two_convs("Sigmoid", spread=np.logspace(-1, 1, 8)))
    assert not report.chains
    assert "Sigmoid act follows it" in report.skipped["conv1"]
    assert weights(out)["w1"].tobytes() == weights(two_convs("Sigmoid", spread=np.logspace(-1, 1, 8)))["w1"].tobytes()


def test_a_branch_ends_the_chain():
    model = two_convs()
    model.graph.output.append(helper.make_tensor_value_info("c1", F, None))  # conv1's output read twice
    _, _, report = equalize(model)
    assert report.skipped["conv1"] == "its output is a graph output"


def depthwise_chain(seed=0):
    """conv (3->6) -> Relu -> depthwise 3x3 (6) -> Relu -> pointwise (6->5), BN after the first two;
    ranges skewed per channel as BatchNormalization folding leaves them."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "wd"], ["c2"], name="dw", pads=[1] * 4, group=6),
        helper.make_node("BatchNormalization", ["c2", "g2", "be2", "m2", "v2"], ["n2"], name="bn2"),
        helper.make_node("Relu", ["n2"], ["a2"], name="relu2"),
        helper.make_node("Conv", ["a2", "w3", "b3"], ["out"], name="pw"),
    ]
    inits = [t("w1", rng.normal(0, 0.3, (6, 3, 3, 3))), t("wd", rng.normal(0, 0.3, (6, 1, 3, 3))),
             t("w3", rng.normal(0, 0.3, (5, 6, 1, 1))), t("b3", rng.normal(0, 0.1, 5))]
    for k in (1, 2):
        inits += [t(f"g{k}", rng.uniform(0.5, 2, 6)), t(f"be{k}", rng.normal(1.0, 1.0, 6)),
                  t(f"m{k}", rng.normal(0, 1, 6)), t(f"v{k}", np.logspace(-4, 0, 6))]  # tiny variances: huge weights
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("input", F, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("out", F, ["N", 5, 6, 6])], initializer=inits)
    return finish(graph)


def test_a_depthwise_chain_meets_at_the_cube_root():
    index = prepare_model(depthwise_chain())  # BatchNormalization folded first, as the target does
    x = np.random.default_rng(3).normal(0, 1, (4, 3, 6, 6)).astype(np.float32)
    before = weights(index.model)
    r1, r2, r3 = (per_channel_max(before["w1"], 0), per_channel_max(before["wd"], 0), per_channel_max(before["w3"], 1))
    out, bn, report = equalize(index.model, index.bn_params, absorb_high_bias=False)
    assert report.chains == ["conv1 -> dw -> pw"]
    w = weights(out)
    meet = np.cbrt(r1 * r2 * r3)
    for name, axis in (("w1", 0), ("wd", 0), ("w3", 1)):
        np.testing.assert_allclose(per_channel_max(w[name], axis), meet, rtol=1e-5)
    np.testing.assert_allclose(run(out, x), run(index.model, x), rtol=1e-4, atol=1e-5)
    # the statistics of the folded layers follow their outputs' scaling
    s1 = r1 / meet
    np.testing.assert_allclose(bn["conv1"][1], index.bn_params["conv1"][1] / s1, rtol=1e-6)


def conv_bn_relu_conv(seed=0):
    """conv1 (weights small next to its BatchNormalization's beta) -> BN -> Relu -> conv2: the
    pre-activations stay near beta, well above beta - 3 gamma."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "w2"], ["out"], name="conv2"),  # no bias: absorption adds one
    ]
    inits = [t("w1", rng.normal(0, 0.02, (6, 3, 3, 3))), t("w2", rng.normal(0, 0.3, (5, 6, 1, 1))),
             t("g", rng.uniform(0.1, 0.5, 6)), t("be", rng.uniform(1.5, 3.0, 6)), t("m", np.zeros(6)),
             t("v", np.ones(6))]
    graph = helper.make_graph(nodes, "hba", [helper.make_tensor_value_info("input", F, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("out", F, ["N", 5, 6, 6])], initializer=inits)
    return finish(graph)


def test_high_bias_absorption_moves_the_bias_on_and_keeps_the_function():
    index = prepare_model(conv_bn_relu_conv())
    gamma, beta = index.bn_params["conv1"]
    out, bn, report = equalize(index.model, index.bn_params)
    assert report.absorbed == {"conv1": 6}
    scaled_gamma, scaled_beta = bn["conv1"]
    np.testing.assert_allclose(scaled_beta, 3 * scaled_gamma, rtol=1e-6)  # all that was above 3 sigma moved on
    node = {n.name: n for n in out.graph.node}
    assert node["conv2"].input[2] == "conv2.bias"  # the bias absorption gave conv2, named as AIMET names it
    x = np.random.default_rng(4).normal(0, 1, (8, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(index.model, x), rtol=1e-4, atol=1e-5)
    # conv1's bias lost exactly c = beta' - 3 gamma' (the equalized statistics): the activation
    # between the layers, which its quantizer covers, shrinks by as much
    plain, bn_plain, _ = equalize(index.model, index.bn_params, absorb_high_bias=False)
    b1 = node["conv1"].input[2]
    c = bn_plain["conv1"][1] - 3 * bn_plain["conv1"][0]
    np.testing.assert_allclose(weights(out)[b1], weights(plain)[b1] - c, rtol=1e-5, atol=1e-6)
    assert (c > 0).all()
