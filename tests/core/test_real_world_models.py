"""Model shapes real users bring (issue 5): one small model of each, built with onnx.helper, goes through
load, calibrate, derive and export_qdq, and the exported model runs in onnxruntime (or the refusal
message is asserted)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.io.qdq import export_qdq
from qinspect.core.graph.model import load_model
from qinspect.core.plan import PrecisionPlan, derive_encodings
from qinspect.core.ptq.prepare import prepare_model
from qinspect.core.analysis.simulate import Simulator

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
vi = helper.make_tensor_value_info


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def rand(shape, seed=0, scale=0.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def build(nodes, inputs, outputs, inits=(), opset=13, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = min(helper.find_min_ir_version_for(opsets[:1]), 11)
    onnx.checker.check_model(model)
    return model


def ort_run(model_or_path, feeds, optimize=False):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def sqnr(ref, out):
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    noise = np.sum((ref - out) ** 2)
    return np.inf if noise == 0 else 10 * np.log10(np.sum(ref**2) / noise)


def save_npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def roundtrip(model, data, tmp_path, plan=None, batch_size=4):
    """Calibrate on `data`, derive, export for onnxruntime's CPU provider (target ort-cpu: the exported
    model then runs in a default session as the simulation says on any CPU); returns (index, result,
    encodings, report, exported path)."""
    plan = plan or PrecisionPlan(target="ort-cpu")
    index = prepare_model(model, plan.target)
    with open_data(data, index.inputs) as source:
        result = calibrate(index, source, batch_size=batch_size)
    encodings = derive_encodings(index, result.stats, plan)
    out = tmp_path / "q.onnx"
    report = export_qdq(index, encodings, out, target=plan.target)
    return index, result, encodings, report, out


def compare(model, path, feeds_list, min_db=25.0):
    """Run float and exported models on every feed; every output close (SQNR) and same shape."""
    for feeds in feeds_list:
        want = ort_run(model, feeds)
        got = ort_run(path, feeds, optimize=True)  # default session options, as users run it
        assert len(got) == len(want)
        for w, g in zip(want, got):
            assert np.shape(w) == np.shape(g)
            if np.asarray(w).dtype.kind == "f" and np.size(w):
                assert sqnr(w, g) > min_db, (sqnr(w, g), w, g)
            else:
                np.testing.assert_array_equal(w, g)


def op_count(path, op):
    model = onnx.load(str(path))
    from qinspect.core.graph.edit import all_graphs

    return sum(n.op_type == op for g in all_graphs(model.graph) for n in g.node)


# --- weights in Constant nodes (PaddlePaddle exports) ------------------------------------------------


def test_constant_node_weights_are_symmetric_per_channel_weights(tmp_path):
    w, b, wm = rand((4, 3, 3, 3), 1), rand((4,), 2, 0.1), rand((64, 5), 3, 0.2)
    nodes = [
        helper.make_node("Constant", [], ["conv.w"], value=const("v", w)),
        helper.make_node("Constant", [], ["conv.b"], value=const("v", b)),
        helper.make_node("Constant", [], ["fc.w"], value=const("v", wm)),
        helper.make_node("Constant", [], ["shape"], value=const("v", np.array([-1, 64], np.int64))),
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc.w"], ["y"], name="fc"),
    ]
    model = build(nodes, [vi("x", F, ["N", 3, 4, 4])], [vi("y", F, ["N", 5])])
    x = rand((12, 1, 3, 4, 4), 4, 1.0)
    np.save(tmp_path / "x.npy", x)
    index, result, enc, report, out = roundtrip(model, str(tmp_path / "x.npy"), tmp_path)
    assert index.targets["conv.w"].kind == "weight" and index.targets["conv.w"].axis == 0
    assert index.targets["fc.w"].kind == "weight" and index.targets["fc.w"].axis == 1
    assert index.targets["conv.b"].kind == "bias"
    assert "conv.w" not in index.activations() and "shape" not in index.targets
    for name, channels in (("conv.w", 4), ("fc.w", 5)):
        assert enc[name].symmetric and enc[name].per_channel and len(enc[name].scale) == channels
    assert enc["conv.b"].bw == 32
    assert report.weights == 2 and report.biases == 1
    exported = onnx.load(str(out))
    assert not any(n.op_type == "Constant" and n.output[0] in ("conv.w", "fc.w") for n in exported.graph.node)
    assert {t.name for t in exported.graph.initializer} >= {"conv.w_quantized", "fc.w_quantized"}
    compare(model, out, [{"x": x[i]} for i in range(3)])


# --- control flow with real layers ------------------------------------------------------------------


def if_model():
    """cond ? Relu(Conv(x, w_then) + b) : Sigmoid(MatMul-like 1x1 Conv(x, w_else)) -> Conv(w_out)."""
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_then", "b_then"], ["c_then"], name="then_conv"),
         helper.make_node("Relu", ["c_then"], ["r_then"], name="then_relu")],
        "then", [], [vi("r_then", F, ["N", 4, 4, 4])],
        [const("w_then", rand((4, 2, 1, 1), 10)), const("b_then", rand((4,), 11, 0.1))])
    else_g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_else"], ["c_else"], name="else_conv"),
         helper.make_node("Sigmoid", ["c_else"], ["s_else"], name="else_sig")],
        "else", [], [vi("s_else", F, ["N", 4, 4, 4])], [const("w_else", rand((4, 2, 1, 1), 12))])
    nodes = [helper.make_node("If", ["cond"], ["h"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("Conv", ["h", "w_out"], ["y"], name="out_conv")]
    return build(nodes, [vi("x", F, ["N", 2, 4, 4]), vi("cond", BOOL, [])], [vi("y", F, ["N", 3, 4, 4])],
                 [const("w_out", rand((3, 4, 1, 1), 13))])


def test_if_branches_are_calibrated_and_exported(tmp_path):
    model = if_model()
    x = rand((10, 1, 2, 4, 4), 14, 1.0)
    cond = np.array([True, False] * 5)
    data = save_npz(tmp_path, x=x, cond=cond)
    index, result, enc, report, out = roundtrip(model, data, tmp_path)
    assert result.skipped == {}
    # Each branch tensor saw exactly the samples that took its branch.
    assert result.stats["r_then"].count == 5 * 4 * 4 * 4
    assert result.stats["s_else"].count == 5 * 4 * 4 * 4
    assert result.stats["s_else"].min >= 0 and result.stats["r_then"].min >= 0
    assert {"w_then", "w_else"} <= set(index.weights()) and enc["w_then"].per_channel
    assert enc["b_then"].bw == 32 and "r_then" in enc and "s_else" in enc
    assert report.weights == 3 and report.biases == 1
    assert op_count(out, "QuantizeLinear") == report.activations
    feeds = [{"x": x[i], "cond": np.array(c)} for i, c in enumerate([True, False])]
    compare(model, out, feeds)
    for f in feeds:  # the export and the simulation agree inside subgraphs too
        (sim,) = Simulator(index, enc, names=["y"]).run(f)
        np.testing.assert_allclose(ort_run(out, f)[0], sim, rtol=1e-5, atol=1e-6)


def test_branch_never_taken_is_reported_and_stays_float(tmp_path):
    model = if_model()
    x = rand((4, 1, 2, 4, 4), 15, 1.0)
    data = save_npz(tmp_path, x=x, cond=np.ones(4, bool))
    index, result, enc, report, out = roundtrip(model, data, tmp_path)
    assert "s_else" not in result.stats and "s_else" not in enc
    assert "never computed" in result.skipped["s_else"] and "If branch" in result.skipped["s_else"]
    assert set(result.skipped) == {"c_else", "s_else"}
    compare(model, out, [{"x": x[0], "cond": np.array(False)}])


def loop_model(grow=False):
    """h = x; repeat trip times: h = Relu(MatMul(h, w) + b) (+ a Concat that grows when `grow`)."""
    body_nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("MatMul", ["h_in", "w_body"], ["m"], name="body_mm"),
        helper.make_node("Add", ["m", "b_body"], ["a"], name="body_add"),
        helper.make_node("Tanh", ["a"], ["h_out"], name="body_tanh"),
    ]
    body_inputs = [vi("i", I64, []), vi("cond_in", BOOL, []), vi("h_in", F, [1, 4])]
    body_outputs = [vi("cond_out", BOOL, []), vi("h_out", F, [1, 4])]
    outer_init = []
    loop_in = ["trip", "", "x"]
    loop_out = ["h_final"]
    if grow:
        body_nodes.append(helper.make_node("Concat", ["acc_in", "h_out"], ["acc_out"], name="body_cat", axis=1))
        body_nodes.append(helper.make_node("Sigmoid", ["acc_out"], ["acc_sig"], name="body_sig"))
        body_nodes.append(helper.make_node("ReduceSum", ["acc_sig"], ["acc_sum"], name="body_sum", keepdims=0))
        body_inputs.append(vi("acc_in", F, [1, None]))
        body_outputs.append(vi("acc_out", F, [1, None]))
        body_outputs.append(vi("acc_sum", F, []))
        loop_in.append("acc0")
        loop_out += ["acc_final", "sums"]
        outer_init.append(const("acc0", np.zeros((1, 1), np.float32)))
    body = helper.make_graph(body_nodes, "body", body_inputs, body_outputs,
                             [const("w_body", rand((4, 4), 20)), const("b_body", rand((4,), 21, 0.1))])
    nodes = [helper.make_node("Loop", loop_in, loop_out, name="loop", body=body),
             helper.make_node("MatMul", ["h_final", "w_out"], ["y"], name="out_mm")]
    outputs = [vi("y", F, [1, 2])] + ([vi("acc_final", F, [1, None]), vi("sums", F, [None])] if grow else [])
    return build(nodes, [vi("x", F, [1, 4]), vi("trip", I64, [])], outputs, [const("w_out", rand((4, 2), 22))] + outer_init)


def test_loop_body_is_calibrated_over_every_iteration(tmp_path):
    model = loop_model()
    x = rand((6, 1, 4), 23, 1.0)
    data = save_npz(tmp_path, x=x, trip=np.full(6, 3, np.int64))
    index, result, enc, report, out = roundtrip(model, data, tmp_path)
    assert result.skipped == {}
    assert index.aliases.get("h_in") == "x"  # loop-carried input reuses the outer encoding (documented limit)
    assert result.stats["h_out"].count == 6 * 3 * 4  # samples x iterations x values
    assert -1 <= result.stats["h_out"].min and result.stats["h_out"].max <= 1
    assert {"m", "a", "h_out"} <= set(enc) and enc["w_body"].per_channel and enc["w_body"].axis == 1
    assert report.weights == 3  # w_body, b_body (an Add parameter) and w_out
    compare(model, out, [{"x": x[i], "trip": np.array(3, np.int64)} for i in range(2)], min_db=20)


def test_loop_tensor_whose_shape_changes_is_skipped_with_the_reason(tmp_path):
    model = loop_model(grow=True)
    x = rand((4, 1, 4), 24, 1.0)
    data = save_npz(tmp_path, x=x, trip=np.full(4, 3, np.int64))
    index, result, enc, report, out = roundtrip(model, data, tmp_path)
    assert set(result.skipped) == {"acc_in", "acc_sig", "acc_out"}  # their shapes grow every iteration
    assert all("could not carry it out of its subgraph" in why and "Inconsistent shape" in why
               for why in result.skipped.values())
    assert "acc_out" not in index.aliases  # a Concat has its own quantizer
    assert result.stats["h_out"].count == 4 * 3 * 4 and "y" in result.stats  # the rest is calibrated
    assert "acc_in" not in enc and "acc_sum" in enc
    compare(model, out, [{"x": x[0], "trip": np.array(3, np.int64)}], min_db=20)


# --- recurrent ops ------------------------------------------------------------------------------------


@pytest.mark.parametrize("op, gates, directions", [("LSTM", 4, 1), ("GRU", 3, 2)])
def test_recurrent_weights_are_per_gate_row_and_bias_is_int32(tmp_path, op, gates, directions):
    hidden, features, steps = 5, 3, 6
    w = rand((directions, gates * hidden, features), 30)
    r = rand((directions, gates * hidden, hidden), 31)
    b = rand((directions, 2 * gates * hidden), 32, 0.1)
    direction = "bidirectional" if directions == 2 else "forward"
    nodes = [
        helper.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], name="rnn", hidden_size=hidden, direction=direction),
        helper.make_node("Flatten", ["Y_h"], ["h"], name="flat", axis=1),
        helper.make_node("MatMul", ["h", "head"], ["y"], name="head_mm"),
    ]
    model = build(nodes, [vi("x", F, [steps, 1, features])],
                  [vi("y", F, [None, 2]), vi("Y", F, [steps, directions, 1, hidden])],
                  [const("W", w), const("R", r), const("B", b), const("head", rand((hidden, 2), 33))])
    x = rand((8, steps, 1, features), 34, 1.0)
    np.save(tmp_path / "x.npy", x)
    index, result, enc, report, out = roundtrip(model, str(tmp_path / "x.npy"), tmp_path)
    for name in ("W", "R"):
        t = index.targets[name]
        assert (t.kind, t.axis, t.op_type) == ("weight", 1, op)
        assert enc[name].per_channel and enc[name].symmetric and len(enc[name].scale) == gates * hidden
    assert index.targets["B"].kind == "bias" and enc["B"].bw == 32 and not enc["B"].per_channel
    assert {"Y", "Y_h"} <= set(index.activations())
    assert any("axis 1" in n and op in n for n in index.notes)
    assert report.weights == 3 and report.biases == 1
    compare(model, out, [{"x": x[i]} for i in range(3)], min_db=20)


# --- models that are already quantized -----------------------------------------------------------------


def test_qdq_model_keeps_its_encodings_and_is_not_quantized_twice(tmp_path):
    from tests.models import small_cnn

    float_model = small_cnn()
    x = rand((8, 1, 3, 8, 8), 40, 1.0)
    np.save(tmp_path / "x.npy", x)
    first = tmp_path / "first"
    first.mkdir()
    _, _, original, report1, qdq_path = roundtrip(float_model, str(tmp_path / "x.npy"), first)
    q_count = op_count(qdq_path, "QuantizeLinear")
    dq_count = op_count(qdq_path, "DequantizeLinear")

    qdq_model = onnx.load(str(qdq_path))
    index, result, enc, report, out = roundtrip(qdq_model, str(tmp_path / "x.npy"), tmp_path)
    assert index.quantized_model and any("already quantized" in n for n in index.notes)
    # Every encoding of the first export is found again, by the tensor names it had.
    for name, e in original.items():
        if e.is_float:
            continue
        got = index.existing_encodings[name]
        if e.bw == 7:  # an int8 weight on a 7-bit grid (ort-cpu) reads back as the int8 it is stored as
            e = e.with_changes(bw=8, offset=(-128,) * len(e.offset))
        assert (got.bw, got.offset, got.axis is None) == (e.bw, e.offset, e.axis is None), name
        np.testing.assert_allclose(got.scale, np.float32(e.scale), rtol=1e-7)
    w = index.targets["conv1.weight"]
    assert w.kind == "weight" and w.existing is not None and w.existing.axis == 0
    assert index.initializer("conv1.weight").dtype == np.float32  # the dequantized values
    assert index.targets["conv1.bias"].kind == "bias"
    assert set(result.stats) >= {"input", "conv1.weight"}  # calibrated for the histograms
    for name, t in index.targets.items():
        assert enc[name] == (t.existing if t.existing is not None else enc[name])
    # No second quantizer anywhere, and the same numbers.
    assert op_count(out, "QuantizeLinear") == q_count and op_count(out, "DequantizeLinear") == dq_count
    assert report.activations == report.weights == report.biases == 0
    for i in range(2):
        np.testing.assert_array_equal(ort_run(out, {"input": x[i]})[0], ort_run(qdq_path, {"input": x[i]})[0])
    # An edit of an existing quantizer is not exported, and the user is told.
    plan = PrecisionPlan()
    plan.set("conv1.weight", bw=4)
    report = export_qdq(index, derive_encodings(index, result.stats, plan), tmp_path / "edited.onnx")
    assert any("already quantizes are not exported" in w and "conv1.weight" in w for w in report.warnings)
    assert op_count(tmp_path / "edited.onnx", "QuantizeLinear") == q_count


def qlinear_conv_model():
    ws = np.array([0.02, 0.03, 0.05], np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"], name="q_in"),
        helper.make_node("QLinearConv", ["xq", "xs", "xzp", "w", "ws", "wzp", "ys", "yzp", "b"], ["yq"], name="qconv"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yzp"], ["y"], name="dq_out"),
        helper.make_node("Softmax", ["y"], ["p"], name="softmax", axis=1),
    ]
    inits = [const("xs", np.float32(0.02)), const("xzp", np.uint8(128)),
             const("w", np.random.default_rng(41).integers(-127, 128, (3, 2, 1, 1)).astype(np.int8)),
             const("ws", ws), const("wzp", np.zeros(3, np.int8)),
             const("ys", np.float32(0.05)), const("yzp", np.uint8(120)),
             const("b", np.array([10, -20, 30], np.int32))]
    return build(nodes, [vi("x", F, [1, 2, 4, 4])], [vi("p", F, [1, 3, 4, 4])], inits)


def dynamic_model():
    """What onnxruntime's quantize_dynamic writes for MatMul: DynamicQuantizeLinear -> MatMulInteger
    -> Cast -> Mul(x scale * w scale), then a float bias Add."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"], name="dql"),
        helper.make_node("MatMulInteger", ["xq", "wq", "xzp", "wzp"], ["acc"], name="mmi"),
        helper.make_node("Cast", ["acc"], ["accf"], name="cast", to=F),
        helper.make_node("Mul", ["xs", "ws"], ["s"], name="scale_mul"),
        helper.make_node("Mul", ["accf", "s"], ["y0"], name="dequant"),
        helper.make_node("Add", ["y0", "bias"], ["y"], name="bias_add"),
    ]
    inits = [const("wq", np.random.default_rng(42).integers(-127, 128, (4, 3)).astype(np.int8)),
             const("wzp", np.int8(0)), const("ws", np.float32(0.01)), const("bias", rand((3,), 43, 0.1))]
    return build(nodes, [vi("x", F, ["N", 4])], [vi("y", F, ["N", 3])], inits)


def conv_integer_model():
    nodes = [
        helper.make_node("ConvInteger", ["x", "w", "xzp"], ["acc"], name="convi"),
        helper.make_node("Cast", ["acc"], ["accf"], name="cast", to=F),
        helper.make_node("Mul", ["accf", "s"], ["y"], name="dequant"),
    ]
    inits = [const("w", np.random.default_rng(44).integers(0, 255, (2, 1, 2, 2)).astype(np.uint8)),
             const("xzp", np.uint8(3)), const("s", np.float32(0.001))]
    return build(nodes, [vi("x", TensorProto.UINT8, [1, 1, 4, 4])], [vi("y", F, [1, 2, 3, 3])], inits)


def cast_mul_model(zero_point):
    """int8 (or uint8 with a zero point) weights dequantized by Cast -> (Sub) -> Mul, per output column."""
    rng = np.random.default_rng(45)
    scale = np.array([0.01, 0.02, 0.04], np.float32)
    if zero_point:
        q = rng.integers(0, 256, (4, 3)).astype(np.uint8)
        nodes = [helper.make_node("Cast", ["wq"], ["wf"], name="cast", to=F),
                 helper.make_node("Sub", ["wf", "wzp"], ["wc"], name="sub_zp"),
                 helper.make_node("Mul", ["wc", "ws"], ["w"], name="dequant")]
        inits = [const("wq", q), const("wzp", np.array([128.0, 120.0, 130.0], np.float32)), const("ws", scale)]
    else:
        q = rng.integers(-127, 128, (4, 3)).astype(np.int8)
        nodes = [helper.make_node("Cast", ["wq"], ["wf"], name="cast", to=F),
                 helper.make_node("Mul", ["ws", "wf"], ["w"], name="dequant")]
        inits = [const("wq", q), const("ws", scale)]
    nodes += [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
              helper.make_node("Relu", ["m"], ["y"], name="relu")]
    return build(nodes, [vi("x", F, ["N", 4])], [vi("y", F, ["N", 3])], inits)


@pytest.mark.parametrize("kind", ["qlinearconv", "dynamic", "convinteger", "cast_mul_int8", "cast_sub_mul_uint8"])
def test_quantized_operator_models_show_encodings_and_export_unchanged(tmp_path, kind):
    model = {"qlinearconv": qlinear_conv_model, "dynamic": dynamic_model, "convinteger": conv_integer_model,
             "cast_mul_int8": lambda: cast_mul_model(False), "cast_sub_mul_uint8": lambda: cast_mul_model(True)}[kind]()
    index, result, enc, report, out = roundtrip(model, "random:6", tmp_path)
    assert index.quantized_model
    existing = index.existing_encodings
    if kind == "qlinearconv":
        w = existing["w"]
        assert (w.bw, w.symmetric, w.axis) == (8, True, 0)
        np.testing.assert_allclose(w.scale, [0.02, 0.03, 0.05], rtol=1e-7)
        assert existing["x"].offset == (-128,) and existing["y"].offset == (-120,)
        assert index.targets["x"].existing == existing["x"] and index.targets["y"].existing == existing["y"]
        assert "w" not in index.targets  # int8: shown in existing_encodings, never a float target
        assert enc["p"].is_float  # the model left Softmax float: so does qinspect by default
    elif kind == "dynamic":
        assert "run time" in index.prequantized["x"] and "x" not in index.targets
        for machinery in ("xs", "s", "accf", "ws"):
            assert machinery not in index.targets
        assert enc["y0"].is_float and enc["y"].is_float and enc["bias"].is_float
    elif kind == "convinteger":
        assert "ConvInteger" in index.prequantized["w"] and "accf" not in index.targets
        assert "s" not in index.targets and enc["y"].is_float
    else:
        t = index.targets["w"]
        assert t.kind == "weight" and t.axis == 1 and t.existing is not None
        assert (t.existing.bw, t.existing.axis, t.existing.symmetric) == (8, 1, kind == "cast_mul_int8")
        assert not {"wf", "wc", "ws", "wzp"} & set(index.targets)
        want = ort_run(model, {"x": np.eye(4, dtype=np.float32)})  # relu(I @ w) shows w's positive part
        np.testing.assert_allclose(np.maximum(index.initializer("w"), 0), want[0], rtol=1e-6)
        if kind == "cast_sub_mul_uint8":
            assert t.existing.offset == (-128, -120, -130)
        assert enc["w"] == t.existing and enc["y"].is_float and "m" not in index.targets  # MatMul+Relu fused
    assert report.activations == report.weights == report.biases == 0
    onnx.save_model(model, tmp_path / "in.onnx")
    for op in ("QuantizeLinear", "DequantizeLinear"):
        assert op_count(out, op) == op_count(tmp_path / "in.onnx", op)
    feeds = [open_data("random:2", index.inputs, seed=9).sample(i) for i in range(2)]
    for f in feeds:
        for want, got in zip(ort_run(model, f), ort_run(out, f)):
            np.testing.assert_array_equal(want, got)


# --- inputs and outputs of every kind -----------------------------------------------------------------


def mixed_io_model():
    """Token ids (int64), a boolean mask, a scalar float (a sample rate), three outputs of which one
    passes an input straight through and one passes it through an Identity."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
        helper.make_node("Unsqueeze", ["mask", "axes"], ["mask3"], name="unsq"),
        helper.make_node("Where", ["mask3", "emb", "zero"], ["masked"], name="where"),
        helper.make_node("Mul", ["masked", "rate"], ["scaled"], name="scale"),
        helper.make_node("ReduceMean", ["scaled", "one_axis"], ["pooled"], name="pool", keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"], name="head"),
        helper.make_node("Identity", ["rate"], ["rate_copy"], name="copy"),
        helper.make_node("Cast", ["ids"], ["ids_f"], name="ids_to_float", to=F),
        helper.make_node("ReduceMax", ["ids_f", "seq_axis"], ["max_id"], name="maxid", keepdims=0),
    ]
    inits = [const("table", rand((20, 6), 50)), const("axes", np.array([2], np.int64)),
             const("one_axis", np.array([1], np.int64)), const("seq_axis", np.array([1], np.int64)),
             const("zero", np.float32(0.0)), const("w", rand((6, 3), 51))]
    inputs = [vi("ids", I64, ["batch", "seq"]), vi("mask", BOOL, ["batch", "seq"]), vi("rate", F, [])]
    outputs = [vi("logits", F, ["batch", 3]), vi("rate", F, []), vi("rate_copy", F, []), vi("max_id", F, ["batch"])]
    return build(nodes, inputs, outputs, inits, opset=18)


def test_integer_bool_scalar_inputs_and_pass_through_outputs(tmp_path):
    model = mixed_io_model()
    rng = np.random.default_rng(52)
    ids = rng.integers(0, 20, (10, 2, 5)).astype(np.int64)
    mask = rng.random((10, 2, 5)) < 0.7
    rate = rng.uniform(8000, 48000, 10).astype(np.float32)
    index, result, enc, report, out = roundtrip(model, save_npz(tmp_path, ids=ids, mask=mask, rate=rate), tmp_path)
    assert [(i.name, i.dtype.name) for i in index.inputs] == [("ids", "int64"), ("mask", "bool"), ("rate", "float32")]
    assert not {"ids", "mask", "mask3", "axes"} & set(index.targets)  # never quantize ints and bools
    assert index.targets["rate"].op_type == "Input" and result.stats["rate"].count == 10
    assert result.stats["rate"].min >= 8000
    assert index.aliases["rate_copy"] == "rate"
    exported = onnx.load(str(out))
    assert [o.name for o in exported.graph.output] == ["logits", "rate", "rate_copy", "max_id"]
    assert [i.name for i in exported.graph.input] == ["ids", "mask", "rate"]
    feeds = {"ids": ids[0], "mask": mask[0], "rate": np.array(rate[0])}
    got = dict(zip(["logits", "rate", "rate_copy", "max_id"], ort_run(out, feeds)))
    assert got["rate"] == rate[0]  # a pass-through output keeps the value it passes
    want = ort_run(model, feeds)
    assert sqnr(want[0], got["logits"]) > 25 and abs(got["rate_copy"] - rate[0]) <= enc["rate"].scale[0]


def test_declared_output_shape_that_is_wrong_and_symbolic_dims(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    model = build(nodes, [vi("x", F, ["batch", "tokens", 4])], [vi("y", F, [7, 1, 5])], [const("w", rand((4, 3), 60))])
    # Samples of different lengths: batches only group samples of the same shape.
    path = tmp_path / "list.txt"
    lines = []
    for i, tokens in enumerate([2, 2, 5, 3]):
        np.save(tmp_path / f"s{i}.npy", rand((1, tokens, 4), 61 + i))
        lines.append(f"x:={tmp_path / f's{i}.npy'}")
    path.write_text("\n".join(lines) + "\n")
    index, result, enc, report, out = roundtrip(model, str(path), tmp_path)
    assert index.inputs[0].shape == ("batch", "tokens", 4)
    assert result.stats["y"].count == (2 + 2 + 5 + 3) * 3
    assert any(w.startswith("output 'y' is declared (7, 1, 5) but is") for w in result.warnings)
    compare(model, out, [{"x": rand((1, 6, 4), 70)}, {"x": rand((3, 1, 4), 71)}])


def opset_model(opset):
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax, valid from opset 7 on (IR 3 lists
    initializers as graph inputs, as old exporters did)."""
    inits = [const("w1", rand((4, 1, 3, 3), 80)), const("b1", rand((4,), 81, 0.1)),
             const("wg", rand((3, 16), 82)), const("bg", rand((3,), 83, 0.1))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], name="fc", transB=1),
             helper.make_node("Softmax", ["g"], ["y"], name="softmax")]
    inputs = [vi("x", F, [1, 1, 4, 4])]
    if opset < 9:
        inputs += [vi(t.name, F, list(t.dims)) for t in inits]
    return build(nodes, inputs, [vi("y", F, [1, 3])], inits, opset=opset)


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, 21, 26])
def test_every_opset_from_7_calibrates_and_exports(tmp_path, opset):
    model = opset_model(opset)
    assert model.ir_version == (3 if opset == 7 else model.ir_version)
    index, result, enc, report, out = roundtrip(model, "random:4", tmp_path)
    assert [i.name for i in index.inputs] == ["x"]  # initializers listed as inputs need no feed
    assert report.opset == max(opset, 13)
    if opset < 13:
        assert report.converted_from == opset and any(f"from opset {opset} to 13" in n for n in report.notes)
    else:
        assert report.converted_from is None
    assert report.weights == 2 and report.biases == 2
    compare(model, out, [{"x": rand((1, 1, 4, 4), 84 + k, 1.0)} for k in range(2)], min_db=20)


def _relu_at(opset):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [vi("x", F, [1])], [vi("y", F, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 13  # onnx's table of IR versions may not list an opset this new yet
    return model


def _first_opset_onnxruntime_refuses():
    """The lowest opset that the ONNX checker accepts and this onnxruntime refuses, or None.

    Asked of both libraries rather than assumed: each release moves the two limits."""
    for opset in range(onnx.defs.onnx_opset_version() - 2, onnx.defs.onnx_opset_version() + 4):
        try:
            model = _relu_at(opset)
            onnx.checker.check_model(model)
            load_model(model)
        except Exception:
            return None  # the checker refuses it before onnxruntime is asked
        try:
            ort.InferenceSession(model.SerializeToString())
        except Exception:
            return opset
    return None


def test_opset_newer_than_onnxruntime_is_refused_with_the_fix(tmp_path):
    opset = _first_opset_onnxruntime_refuses()
    if opset is None:
        pytest.skip("this onnxruntime runs every opset the installed onnx checker accepts")
    index = load_model(_relu_at(opset))
    from qinspect.core.errors import ModelError

    with pytest.raises(ModelError) as err:
        calibrate(index, open_data("random:1", index.inputs))
    message = str(err.value)
    assert f"opset {opset}" in message and "export it at opset" in message and "\n" not in message


def test_custom_domain_ops_stay_float_and_are_listed(tmp_path):
    nodes = [
        helper.make_node("Scaler", ["x"], ["scaled"], name="scaler", domain="ai.onnx.ml", offset=[0.5], scale=[2.0]),
        helper.make_node("MatMul", ["scaled", "w"], ["h"], name="mm"),
        helper.make_node("Gelu", ["h"], ["act"], name="gelu", domain="com.microsoft"),
        helper.make_node("FusedMatMul", ["act", "w2"], ["y"], name="fused", domain="com.microsoft", alpha=1.0),
    ]
    model = build(nodes, [vi("x", F, ["N", 4])], [vi("y", F, ["N", 2])],
                  [const("w", rand((4, 3), 90)), const("w2", rand((3, 2), 91))],
                  domains=[("ai.onnx.ml", 3), ("com.microsoft", 1)])
    index, result, enc, report, out = roundtrip(model, "random:6", tmp_path)
    assert index.custom_ops == {"scaler": "ai.onnx.ml.Scaler", "gelu": "com.microsoft.Gelu",
                                "fused": "com.microsoft.FusedMatMul"}
    assert not {"scaled", "act", "y", "w2"} & set(index.targets)  # outputs and parameters stay float
    assert {"x", "w", "h"} <= set(index.targets)
    assert any("other domains stay float" in n and "com.microsoft.Gelu" in n for n in index.notes)
    exported = onnx.load(str(out))
    assert {o.domain for o in exported.opset_import} >= {"ai.onnx.ml", "com.microsoft"}
    compare(model, out, [{"x": rand((2, 4), 92, 1.0)}], min_db=15)


# --- attention masks that blow ranges up --------------------------------------------------------------


@pytest.mark.parametrize("fill", [-1e9, -3.4e38])
def test_attention_mask_ranges_are_flagged_and_float_fixes_them(tmp_path, fill):
    """scores = q k^T / 2 masked by Where(mask, scores, fill) (or + (1 - mask) * fill), then Softmax."""
    nodes = [
        helper.make_node("MatMul", ["q", "wq"], ["qp"], name="proj"),
        helper.make_node("Transpose", ["qp"], ["qt"], name="tr", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["qp", "qt"], ["scores"], name="attn"),
        helper.make_node("Cast", ["mask"], ["maskf"], name="cast", to=F),
        helper.make_node("Sub", ["one", "maskf"], ["inv"], name="inv"),
        helper.make_node("Mul", ["inv", "fill"], ["bias"], name="mask_bias"),
        helper.make_node("Add", ["scores", "bias"], ["masked"], name="apply_mask"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "qp"], ["y"], name="mix"),
    ]
    model = build(nodes, [vi("q", F, ["N", 6, 4]), vi("mask", BOOL, ["N", 6, 6])], [vi("y", F, ["N", 6, 4])],
                  [const("wq", rand((4, 4), 100)), const("one", np.float32(1.0)), const("fill", np.float32(fill))])
    rng = np.random.default_rng(101)
    q = rand((16, 1, 6, 4), 102, 1.0)
    mask = np.broadcast_to(np.tril(np.ones((6, 6), bool)), (16, 1, 6, 6)).copy()  # causal
    mask[:, :, :, 0] = True
    data = save_npz(tmp_path, q=q, mask=mask)
    index, result, enc, report, out = roundtrip(model, data, tmp_path)
    flagged = {d.name: d for d in result.diagnostics}
    assert {"bias", "masked"} <= set(flagged), result.warnings
    assert "scores" not in flagged and "probs" not in flagged
    d = flagged["masked"]
    assert d.kind == "blown_range" and d.float_bw == 32 and d.peak >= 1e9
    message = next(w for w in result.warnings if w.startswith("masked:"))
    assert "blown up" in message and "float32" in message and "65504" in message and "\n" not in message
    feeds = {"q": q[0], "mask": mask[0]}
    (want,) = ort_run(model, feeds)
    (blind,) = ort_run(out, feeds)  # 8-bit over [fill, max]: the scores collapse to one value
    plan = PrecisionPlan()
    for w in result.diagnostics:
        plan.set(w.name, dtype="float", bw=w.float_bw)
    fixed = export_qdq(index, derive_encodings(index, result.stats, plan), tmp_path / "fixed.onnx")
    (good,) = ort_run(tmp_path / "fixed.onnx", feeds)
    assert sqnr(want, good) > 25 > sqnr(want, blind) + 10
    assert "masked" in fixed.kept_float
    del rng


# --- models over 2 GB with external data (a few MB here, with the threshold lowered) ------------------


def big_model():
    """x[N, 1024] -> MatMul 1024x1024 (4 MB) -> Relu -> MatMul 1024x10 -> y."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    return build(nodes, [vi("x", F, ["N", 1024])], [vi("y", F, ["N", 10])],
                 [const("w1", rand((1024, 1024), 110, 0.03)), const("w2", rand((1024, 10), 111, 0.03))])


def test_large_external_data_model_is_never_loaded_twice(tmp_path, monkeypatch):
    import tracemalloc

    import qinspect.core.graph.model as model_module

    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(big_model(), src / "big.onnx", save_as_external_data=True, location="big.onnx.data",
                    size_threshold=1024)
    size = (src / "big.onnx.data").stat().st_size
    x = rand((8, 1, 1024), 112, 1.0)
    np.save(tmp_path / "x.npy", x)

    monkeypatch.setattr(model_module, "LAZY_EXTERNAL_BYTES", 1 << 20)  # stands for 2 GB
    tracemalloc.start()
    try:
        index = load_model(src / "big.onnx")
        loaded = tracemalloc.get_traced_memory()[0]
        with open_data(str(tmp_path / "x.npy"), index.inputs) as data:
            result = calibrate(index, data)
        tracemalloc.reset_peak()
        plan = PrecisionPlan()
        plan.set("w2", dtype="float", bw=32)  # kept float: copied from the input's data file as it is
        encodings = derive_encodings(index, result.stats, plan)
        report = export_qdq(index, encodings, tmp_path / "q.onnx")
        export_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert index.external_dir == str(src)
    assert index.model.ByteSize() < 20_000  # the proto holds references, not the 4 MB of weights
    assert isinstance(index.initializer("w1"), np.memmap)  # read from the file when touched
    assert loaded < size / 4
    # Export: the int8 copy of w1 (a quarter of its size) plus per-tensor temporaries, never a
    # second float copy of the model in a proto.
    assert export_peak < 2 * size, f"export peak {export_peak / 1e6:.1f} MB for {size / 1e6:.1f} MB of weights"
    assert report.external_data == tmp_path / "q.onnx.data"
    raw = onnx.load(str(tmp_path / "q.onnx"), load_external_data=False)
    stored = {t.name: t for t in raw.graph.initializer}
    assert stored["w1_quantized"].data_location == TensorProto.EXTERNAL
    assert stored["w1_quantized"].data_type == TensorProto.INT8
    assert stored["w2"].data_location == TensorProto.EXTERNAL and stored["w2"].data_type == F
    np.testing.assert_array_equal(numpy_helper.to_array(stored["w2"], str(tmp_path)), index.initializer("w2"))
    assert sorted(p.name for p in src.iterdir()) == ["big.onnx", "big.onnx.data"]  # input untouched

    # Same numbers as the same model loaded the ordinary way.
    monkeypatch.undo()
    eager = load_model(src / "big.onnx")
    assert eager.external_dir is None
    with open_data(str(tmp_path / "x.npy"), eager.inputs) as data:
        eager_stats = calibrate(eager, data).stats
    for name, s in result.stats.items():
        assert (s.min, s.max, s.count) == (eager_stats[name].min, eager_stats[name].max, eager_stats[name].count)
    export_qdq(eager, derive_encodings(eager, eager_stats, plan), tmp_path / "eager.onnx",
               external_data=False)
    for i in range(2):
        np.testing.assert_array_equal(ort_run(tmp_path / "q.onnx", {"x": x[i]})[0],
                                      ort_run(tmp_path / "eager.onnx", {"x": x[i]})[0])
    (sim,) = Simulator(index, encodings, names=["y"]).run({"x": x[0]})  # sessions read the input's files
    np.testing.assert_allclose(sim, ort_run(tmp_path / "q.onnx", {"x": x[0]})[0], rtol=1e-5, atol=1e-5)


def test_scan_body_is_calibrated(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["sum"], name="scan_add"),
         helper.make_node("MatMul", ["sum", "w_scan"], ["mm"], name="scan_mm"),
         helper.make_node("Tanh", ["mm"], ["s_out"], name="scan_tanh"),
         helper.make_node("Identity", ["s_out"], ["y_t"], name="scan_copy")],
        "body", [vi("s_in", F, [1, 4]), vi("x_t", F, [1, 4])], [vi("s_out", F, [1, 4]), vi("y_t", F, [1, 4])],
        [const("w_scan", rand((4, 4), 120))])
    nodes = [helper.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], name="scan", body=body, num_scan_inputs=1)]
    model = build(nodes, [vi("s0", F, [1, 4]), vi("xs", F, [5, 1, 4])], [vi("s_final", F, [1, 4]), vi("ys", F, [5, 1, 4])])
    s0, xs = rand((6, 1, 4), 121), rand((6, 5, 1, 4), 122)
    index, result, enc, report, out = roundtrip(model, save_npz(tmp_path, s0=s0, xs=xs), tmp_path)
    assert result.skipped == {}
    assert result.stats["mm"].count == 6 * 5 * 4 and result.stats["sum"].count == 6 * 5 * 4  # every step
    assert index.aliases["x_t"] == "xs"  # a slice of xs carries xs's encoding
    assert enc["w_scan"].per_channel and report.weights == 1
    compare(model, out, [{"s0": s0[0], "xs": xs[0]}], min_db=20)


def test_scikit_learn_classifier_with_zipmap_output(tmp_path):
    """skl2onnx's shape: Scaler -> LinearClassifier -> ZipMap, a sequence of maps as an output."""
    nodes = [
        helper.make_node("Scaler", ["X"], ["xs"], name="scaler", domain="ai.onnx.ml", offset=[0.5] * 4, scale=[2.0] * 4),
        helper.make_node("LinearClassifier", ["xs"], ["label", "scores"], name="clf", domain="ai.onnx.ml",
                         classlabels_ints=[0, 1, 2], coefficients=rand((12,), 130).tolist(), intercepts=[0.1, 0.2, 0.3],
                         post_transform="SOFTMAX"),
        helper.make_node("ZipMap", ["scores"], ["probabilities"], name="zipmap", domain="ai.onnx.ml",
                         classlabels_int64s=[0, 1, 2]),
    ]
    probabilities = onnx.ValueInfoProto(name="probabilities")
    probabilities.type.CopyFrom(helper.make_sequence_type_proto(
        helper.make_map_type_proto(I64, helper.make_tensor_type_proto(F, []))))
    model = build(nodes, [vi("X", F, ["N", 4])], [vi("label", I64, ["N"]), probabilities], domains=[("ai.onnx.ml", 1)])
    index, result, enc, report, out = roundtrip(model, "random:5", tmp_path)
    assert list(index.targets) == ["X"] and len(index.custom_ops) == 3
    x = rand((3, 4), 131, 1.0)
    label, probs = ort_run(out, {"X": x})
    assert label.shape == (3,) and len(probs) == 3 and set(probs[0]) == {0, 1, 2}


def test_a_constant_of_only_inf_stays_float_and_exports(tmp_path):
    """Magika (a JAX export) masks logits with a 0-d -inf constant: a traceback in export once."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Max", ["h", "neg_inf"], ["y"], name="max")]
    model = build(nodes, [vi("x", F, ["N", 4])], [vi("y", F, ["N", 3])],
                  [const("w", rand((4, 3), 90)), const("neg_inf", np.array(-np.inf, np.float32))])
    x = rand((16, 4), 91, 1.0)
    np.save(tmp_path / "x.npy", x)
    index, result, enc, report, out = roundtrip(model, str(tmp_path / "x.npy"), tmp_path)
    assert enc["neg_inf"].is_float and enc["neg_inf"].bw == 32
    compare(model, out, [{"x": x[:4]}])


def test_a_model_with_only_ai_onnx_ml_ops_gets_the_default_opset_it_needs(tmp_path):
    """onnxruntime's datasets/logreg_iris.onnx imports ai.onnx.ml only: there is nothing to convert."""
    node = helper.make_node("LinearRegressor", ["x"], ["y"], domain="ai.onnx.ml", coefficients=[0.5, -1.0, 2.0],
                            intercepts=[0.1], targets=1)
    graph = helper.make_graph([node], "g", [vi("x", F, ["N", 3])], [vi("y", F, ["N", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    x = rand((16, 3), 92, 1.0)
    np.save(tmp_path / "x.npy", x)
    index, result, enc, report, out = roundtrip(model, str(tmp_path / "x.npy"), tmp_path)
    assert {o.domain: o.version for o in onnx.load(out).opset_import}[""] == 13
    compare(model, out, [{"x": x[:4]}])


@pytest.mark.parametrize("target", ["qnn-htp", "ort-cpu"])
def test_zero_d_tensors_through_every_step(tmp_path, target):
    """Scalars as weights, as an activation and as an output: calibrate, derive, export, compare with the
    runtime check, the HTML report, a session and every overrides version, with no traceback."""
    from qinspect.core.analysis.compare import compare as compare_models
    from qinspect.core.io.overrides import VERSIONS, read_overrides, write_overrides
    from qinspect.core.io.report import write_report
    from qinspect.core.project import Project
    from tests.models import scalars

    model = scalars()
    x = rand((16, 2, 3), 93, 1.0)
    np.save(tmp_path / "x.npy", x)
    plan = PrecisionPlan(target=target)
    index, result, enc, report, out = roundtrip(model, str(tmp_path / "x.npy"), tmp_path, plan)
    assert result.stats["s"].count == 16 and index.targets["s"].shape == ()
    assert {index.targets[n].kind for n in ("c", "b0", "half")} == {"weight"}
    compare(model, out, [{"x": x[i]} for i in range(3)], min_db=30)
    result = compare_models(index, enc, open_data(str(tmp_path / "x.npy"), index.inputs), runtime=True, target=target)
    assert result.runtime.agrees() and set(result.outputs) == {"y", "r"}
    write_report(tmp_path / "r.html", result)
    kinds = {n: index.targets[n].kind for n in enc}
    for version in VERSIONS:
        write_overrides(tmp_path / f"{version}.json", enc, kinds, version, target=target)
        back, _ = read_overrides(tmp_path / f"{version}.json", index)
        assert back["c"].scale == pytest.approx(enc["c"].scale) and back["s"].offset == enc["s"].offset
    onnx.save_model(model, tmp_path / "m.onnx")
    project = Project(plan=PrecisionPlan(target=target))
    project.open_model(str(tmp_path / "m.onnx"))
    stats = calibrate(project.index, open_data(str(tmp_path / "x.npy"), project.index.inputs)).stats
    project.set_stats(stats, 16)
    project.apply_edit(["c"], {"bw": 16})
    project.apply_edit(["s"], {"range": (-2.0, 2.0)})
    project.save_session(tmp_path / "s.qinspect")
    assert Project.from_session(tmp_path / "s.qinspect").encodings == project.encodings
