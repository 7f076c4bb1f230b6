"""Tests for qinspect.core.graph.model: loading, indexing and where quantizers go (design §3)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qinspect.core.errors import ModelError
from qinspect.core.graph.model import ModelIndex, load_model
from qinspect.core.ptq.prepare import prepare_model

F, I64 = TensorProto.FLOAT, TensorProto.INT64
rng = np.random.default_rng(0)


def init(name, *shape, dtype=np.float32):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def make(nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 13 else 10  # onnxruntime 1.31 refuses onnx 1.23's default IR
    return model


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def small_cnn():
    """Conv->Relu->MaxPool->Conv->BN->Relu->Flatten->Gemm(transB=1) with biases."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = [init("w1", 4, 3, 3, 3), init("b1", 4), init("w2", 6, 4, 3, 3), init("b2", 6),
             init("bn_s", 6), init("bn_b", 6), init("bn_m", 6),
             numpy_helper.from_array(np.ones(6, np.float32), "bn_v"),
             init("wg", 10, 6 * 2 * 2), init("bg", 10)]
    return make(nodes, [vi("x", F, [1, 3, 8, 8])], [vi("y", F, [1, 10])], inits)


def test_small_cnn_targets_aliases_and_fusion():
    model = small_cnn()
    run(model, {"x": np.zeros((1, 3, 8, 8), np.float32)})  # the test model itself is valid
    idx = prepare_model(model)  # the default target folds bn into conv2, which then writes "bn"

    assert idx.activations() == ["x", "r1", "r2", "y"]
    assert idx.aliases == {"p1": "r1", "f": "r2"}
    assert "BatchNormalization" not in [n.op_type for n in idx.model.graph.node]
    for inner in ("c1", "bn"):  # fused into conv1+relu1 and conv2(+bn)+relu2
        assert inner not in idx.targets and inner not in idx.aliases
    assert "c2" not in idx.tensors  # conv2 now writes "bn" directly
    assert idx.fused_output == {"conv1": "r1", "conv2": "r2", "fc": "y"}
    assert idx.encoding_source("f") == "r2" and idx.encoding_source("p1") == "r1"
    assert idx.encoding_source("r1") == "r1"
    assert idx.encoding_source("c1") == "c1" and "c1" not in idx.targets  # not quantized at all

    assert idx.weights() == ["w1", "w2", "wg"]  # BN params fold into conv2
    assert [idx.targets[w].axis for w in idx.weights()] == [0, 0, 0]
    assert idx.targets["wg"].op_type == "Gemm" and idx.targets["wg"].node == "fc"
    assert idx.biases() == ["b1", "b2", "bg"]
    assert idx.targets["b1"].bias_inputs == ("x", "w1")
    assert idx.targets["b2"].bias_inputs == ("p1", "w2")
    assert idx.targets["bg"].bias_inputs == ("f", "wg")
    assert idx.targets["r2"].op_type == "Relu" and idx.targets["r2"].node == "relu2"
    assert idx.targets["x"].op_type == "Input" and idx.targets["x"].node == ""

    assert idx.inputs[0].name == "x" and idx.inputs[0].dtype == np.float32
    assert idx.inputs[0].shape == (1, 3, 8, 8)
    assert idx.outputs == ["y"]
    assert idx.tensors["bn"].producer == "conv2" and idx.tensors["bn"].consumers == ["relu2"]
    assert idx.tensors["p1"].shape == (1, 4, 4, 4)
    assert idx.tensors["w1"].is_initializer and idx.tensors["w1"].producer is None
    assert "bn_v" not in idx.tensors  # the folded BatchNormalization's parameters are gone


def test_unfolded_batchnorm_is_an_op_of_its_own():
    idx = load_model(small_cnn())  # no target: nothing folded
    assert idx.activations() == ["x", "r1", "c2", "bn", "r2", "y"]  # bn and relu2 run on their own
    assert idx.fused_output["conv2"] == "c2"
    assert not {"bn_s", "bn_b", "bn_m", "bn_v"} & set(idx.targets)  # it runs in float: no quantized statistics


def test_per_channel_axes():
    nodes = [
        helper.make_node("Gemm", ["a", "wa"], ["g"], name="gemm0"),  # transB=0: B is [K, N]
        helper.make_node("MatMul", ["g", "wm"], ["m"], name="mm"),
        helper.make_node("Transpose", ["m"], ["m_t"], name="tr"),
        helper.make_node("MatMul", ["m", "m_t"], ["mm2"], name="mm_dyn"),  # dynamic: no weight
        helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["ct"], name="deconv"),
    ]
    inits = [init("wa", 4, 5), init("wm", 5, 6), init("wt", 2, 3, 3, 3), init("bt", 3)]
    model = make(nodes, [vi("a", F, [2, 4]), vi("x", F, [1, 2, 4, 4])],
                 [vi("mm2", F, [2, 2]), vi("ct", F, [1, 3, 6, 6])], inits)
    run(model, {"a": np.ones((2, 4), np.float32), "x": np.ones((1, 2, 4, 4), np.float32)})
    idx = load_model(model)
    assert idx.targets["wa"].axis == 1
    assert idx.targets["wm"].axis == 1 and idx.targets["wm"].shape == (5, 6)
    assert idx.targets["wt"].axis == 1 and idx.targets["wt"].op_type == "ConvTranspose"
    assert idx.targets["bt"].bias_inputs == ("x", "wt")
    assert idx.weights() == ["wa", "wm", "wt"]
    assert idx.aliases == {"m_t": "m"}
    assert idx.activations() == ["a", "x", "g", "m", "mm2", "ct"]


def test_gemm_trans_b_one_is_axis_zero():
    model = make([helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)], [vi("a", F, [1, 4])],
                 [vi("y", F, [1, 3])], [init("w", 3, 4)])
    assert load_model(model).targets["w"].axis == 0


def test_integer_shape_path_gets_no_targets():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "i0"),
             numpy_helper.from_array(np.array([0], np.int64), "ax"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    model = make(nodes, [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 12])], inits)
    run(model, {"x": np.ones((2, 3, 4), np.float32)})
    idx = load_model(model)
    assert list(idx.targets) == ["x"]
    assert idx.aliases == {"y": "x"}
    for name in ("s", "n", "n1", "shape"):
        assert idx.tensors[name].dtype == np.int64
        assert not idx.is_float(name)
    assert sorted(idx.nodes) == ["Concat_3", "Gather_1", "Reshape_4", "Shape_0", "Unsqueeze_2"]
    assert idx.tensors["s"].producer == "Shape_0" and idx.tensors["x"].consumers == ["Shape_0", "Reshape_4"]


def test_two_inputs_with_int64_and_initializer_listed_as_input():
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("Add", ["e", "x"], ["y"], name="add"),
    ]
    table = init("table", 10, 4)
    # Old exporters also list initializers as graph inputs; they need no feed.
    model = make(nodes, [vi("x", F, [1, 4]), vi("ids", I64, ["n"]), vi("table", F, [10, 4])],
                 [vi("y", F, ["n", 4])], [table])
    run(model, {"x": np.ones((1, 4), np.float32), "ids": np.array([1, 2], np.int64)})
    idx = load_model(model)
    assert [(i.name, i.dtype, i.shape) for i in idx.inputs] == [
        ("x", np.dtype(np.float32), (1, 4)), ("ids", np.dtype(np.int64), ("n",))]
    assert "ids" not in idx.targets
    assert idx.targets["table"].kind == "weight" and idx.targets["table"].axis is None
    assert idx.aliases == {"e": "table"}  # Gather on data reuses the table's encoding
    assert idx.activations() == ["x", "y"]
    assert idx.tensors["table"].is_initializer


def test_weights_in_constant_nodes():
    w = rng.standard_normal((2, 1, 1, 1)).astype(np.float32)
    b = np.array([0.5, -0.5], np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b)),
        helper.make_node("Constant", [], ["k"], value_float=2.0),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "k"], ["y"], name="scale"),
    ]
    model = make(nodes, [vi("x", F, [1, 1, 2, 2])], [vi("y", F, [1, 2, 2, 2])])
    run(model, {"x": np.ones((1, 1, 2, 2), np.float32)})
    idx = load_model(model)
    assert idx.targets["w"].kind == "weight" and idx.targets["w"].axis == 0
    assert idx.targets["w"].shape == (2, 1, 1, 1)
    assert idx.targets["b"].kind == "bias" and idx.targets["b"].bias_inputs == ("x", "w")
    assert idx.targets["k"].kind == "weight" and idx.targets["k"].axis is None
    assert idx.targets["k"].op_type == "Mul"
    assert idx.activations() == ["x", "c", "y"]
    np.testing.assert_array_equal(idx.initializer("w"), w)
    np.testing.assert_array_equal(idx.initializer("b"), b)
    assert idx.initializer("k") == np.float32(2.0)
    assert idx.initializer("w") is idx.initializer("w")  # cached
    assert not idx.initializer("w").flags.writeable
    assert not idx.tensors["w"].is_initializer and idx.is_constant("w")
    with pytest.raises(KeyError):
        idx.initializer("c")


def test_if_subgraph_with_conv():
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_then"], ["c_then"], name="then_conv"),
         helper.make_node("Relu", ["c_then"], ["r_then"], name="then_relu")],
        "then", [], [vi("r_then", F, [1, 2, 4, 4])], [init("w_then", 2, 2, 1, 1)])
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["x_else"], name="else_id")],
        "else", [], [vi("x_else", F, [1, 2, 4, 4])])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)]
    model = make(nodes, [vi("x", F, [1, 2, 4, 4]), vi("cond", TensorProto.BOOL, [])],
                 [vi("y", F, [1, 2, 4, 4])])
    run(model, {"x": np.ones((1, 2, 4, 4), np.float32), "cond": np.array(True)})
    idx = load_model(model)
    assert idx.targets["w_then"].kind == "weight" and idx.targets["w_then"].axis == 0
    assert idx.targets["w_then"].node == "then_conv"
    assert "c_then" not in idx.targets  # Conv+Relu fused inside the branch too
    assert idx.aliases == {"x_else": "x"}
    assert list(idx.targets) == ["x", "w_then", "r_then", "y"]
    assert idx.targets["y"].op_type == "If"
    assert "cond" not in idx.targets
    assert sorted(idx.tensors["x"].consumers) == ["else_id", "then_conv"]
    assert idx.tensors["r_then"].producer == "then_relu" and idx.tensors["y"].producer == "branch"
    assert {"then_conv", "then_relu", "else_id", "branch"} <= set(idx.nodes)
    assert idx.initializer("w_then").shape == (2, 2, 1, 1)


def test_loop_body_inputs_flow_through():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"], name="body_add")],
        "body", [vi("iter", I64, []), vi("cond_in", TensorProto.BOOL, []), vi("v_in", F, [2])],
        [vi("cond_out", TensorProto.BOOL, []), vi("v_out", F, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "one")])
    nodes = [helper.make_node("Loop", ["trip", "", "v0"], ["v_final"], name="loop", body=body)]
    model = make(nodes, [vi("trip", I64, []), vi("v0", F, [2])], [vi("v_final", F, [2])])
    (out,) = run(model, {"trip": np.array(3, np.int64), "v0": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(out, [3, 3])
    idx = load_model(model)
    assert idx.aliases == {"v_in": "v0"}
    assert idx.activations() == ["v0", "v_out", "v_final"]
    assert idx.weights() == ["one"]
    assert [i.name for i in idx.inputs] == ["trip", "v0"]


def test_fusion_needs_a_single_consumer_and_no_graph_output():
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),           # fused: m has one consumer
        helper.make_node("Add", ["r", "r"], ["s"], name="add"),
        helper.make_node("Clip", ["s", "lo", "hi"], ["c"], name="clip"),  # fused: Add -> Clip (Relu6)
        helper.make_node("Conv", ["x", "wc"], ["cv"], name="conv"),
        helper.make_node("Relu", ["cv"], ["cr"], name="crelu"),        # not fused: cv is a graph output
        helper.make_node("Gemm", ["a", "wg"], ["g"], name="gemm"),
        helper.make_node("Relu", ["g"], ["gr"], name="grelu"),         # not fused: g has two consumers
        helper.make_node("Sigmoid", ["g"], ["gs"], name="gsig"),
        helper.make_node("Concat", ["c", "gr"], ["cat"], name="cat", axis=1),
    ]
    inits = [init("w", 4, 4), numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6, np.float32), "hi"), init("wc", 2, 1, 1, 1), init("wg", 4, 4)]
    model = make(nodes, [vi("a", F, [1, 4]), vi("x", F, [1, 1, 2, 2])],
                 [vi("cat", F, [1, 8]), vi("cv", F, [1, 2, 2, 2]), vi("cr", F, [1, 2, 2, 2]),
                  vi("gs", F, [1, 4])], inits)
    run(model, {"a": np.ones((1, 4), np.float32), "x": np.ones((1, 1, 2, 2), np.float32)})
    idx = load_model(model)
    assert idx.activations() == ["a", "x", "r", "c", "cv", "cr", "g", "gr", "gs", "cat"]
    assert "m" not in idx.targets and "s" not in idx.targets
    assert idx.aliases == {}  # a Concat gets its own quantizer: the first input's range would clip the rest
    assert "lo" not in idx.targets and "hi" not in idx.targets  # Clip bounds are settings


def test_unknown_dtypes_come_from_the_op():
    """Without shape inference, int/bool outputs are still known not to be float."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ArgMax", ["x"], ["am"]),
        helper.make_node("Greater", ["x", "x"], ["gt"]),
        helper.make_node("Cast", ["gt"], ["gtf"], to=F),
        helper.make_node("Relu", ["x"], ["r"]),
    ]
    model = make(nodes, [vi("x", F, [2, 3])],
                 [vi("s", I64, [2]), vi("am", I64, [1, 3]), vi("gtf", F, [2, 3]), vi("r", F, [2, 3])])
    del model.graph.output[:]  # no declared types at all, and ModelIndex() does not run inference
    idx = ModelIndex(model)
    assert idx.tensors["s"].dtype == np.int64 and idx.tensors["am"].dtype == np.int64
    assert idx.tensors["gt"].dtype == np.bool_
    assert idx.activations() == ["x", "gtf", "r"]


def test_unnamed_nodes_are_named_on_a_copy_only():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["y"], ["z"], name="Relu_0")]
    model = make(nodes, [vi("x", F, [1])], [vi("z", F, [1])])
    idx = load_model(model)
    assert set(idx.nodes) == {"Relu_0", "Relu_0_1"}
    assert model.graph.node[0].name == ""  # the caller's proto is untouched
    assert idx.tensors["y"].producer == "Relu_0_1"


def test_external_data_loads(tmp_path):
    model = small_cnn()
    path = tmp_path / "cnn.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="cnn.bin", size_threshold=0)
    assert (tmp_path / "cnn.bin").exists()
    idx = load_model(path)
    assert idx.path == str(path)
    saved = onnx.load(str(path))
    expected = {t.name: numpy_helper.to_array(t) for t in saved.graph.initializer}
    for name, value in expected.items():
        np.testing.assert_array_equal(idx.initializer(name), value)
    assert idx.activations() == ["x", "r1", "c2", "bn", "r2", "y"]
    run(idx.model, {"x": np.zeros((1, 3, 8, 8), np.float32)})  # the loaded model holds its data


def test_missing_external_data_names_the_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(small_cnn(), str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    os.remove(tmp_path / "weights.bin")
    with pytest.raises(ModelError, match=r"m\.onnx.*weights\.bin"):
        load_model(path)


def test_truncated_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(small_cnn(), str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"m\.onnx"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx not found"):
        load_model(tmp_path / "nope.onnx")


def test_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="folder"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"\x12\xff\xff\xff\xff garbage" * 20, b"\x08", b"not onnx at all"])
def test_corrupt_bytes(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"bad\.onnx") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.onnx is not a readable ONNX model"):
        load_model(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.onnx"
    data = small_cnn().SerializeToString()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelError, match=r"cut\.onnx is not a readable ONNX model .*re-export"):
        load_model(path)


def test_checker_failure_names_the_file(tmp_path):
    model = make([helper.make_node("Relu", ["missing"], ["y"])], [vi("x", F, [1])], [vi("y", F, [1])])
    path = tmp_path / "broken.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match=r"broken\.onnx fails the ONNX checker \(.+\)") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_proto_with_external_references_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(small_cnn(), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelError, match="file path"):
        load_model(proto)
