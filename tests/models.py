"""Tiny ONNX models built with onnx.helper for tests (no downloads, no files in the repo)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def finish(graph, opset: int = 13) -> onnx.ModelProto:
    """Model with an explicit opset and IR version: onnx 1.23's defaults are refused by onnxruntime."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    onnx.checker.check_model(model)
    return model


def small_cnn(seed: int = 0, channels: int = 4, classes: int = 5) -> onnx.ModelProto:
    """input[N,3,8,8] -> Conv+Relu -> MaxPool -> Conv -> Add(residual-free bias) -> Flatten -> Gemm -> logits."""
    rng = np.random.default_rng(seed)

    def init(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    c = channels
    inits = [
        init("conv1.weight", (c, 3, 3, 3)),
        init("conv1.bias", (c,), 0.1),
        init("conv2.weight", (c, c, 3, 3)),
        init("conv2.bias", (c,), 0.1),
        init("fc.weight", (classes, c * 4 * 4)),
        init("fc.bias", (classes,), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("MaxPool", ["relu1_out"], ["pool_out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool_out", "conv2.weight", "conv2.bias"], ["conv2_out"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["conv2_out"], ["sig_out"], name="sig"),
        helper.make_node("Flatten", ["sig_out"], ["flat_out"], name="flatten"),
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=inits,
    )
    return finish(graph)


def scalars() -> onnx.ModelProto:
    """0-d tensors everywhere a model can have them: a scalar initializer and a scalar Constant node as
    weights of Mul/Add, a scalar activation (ReduceSum without keepdims) scaled by a scalar, a Shape."""
    nodes = [
        helper.make_node("Constant", [], ["b0"], name="b0c", value=numpy_helper.from_array(np.array(0.25, np.float32))),
        helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "b0"], ["a"], name="add"),
        helper.make_node("ReduceSum", ["a"], ["s"], name="sum", keepdims=0),
        helper.make_node("Mul", ["s", "half"], ["y"], name="scale"),
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Reshape", ["a", "shp"], ["r"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes, "scalars", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, []), helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(np.array(1.5, np.float32), "c"),
                     numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    return finish(graph)
