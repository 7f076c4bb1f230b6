"""A layer as matrices: rows times weights gives what onnxruntime computes, for every Conv form."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from qinspect.core.ptq.layers import layer_of
from qinspect.core.ptq.patches import input_rows, output_rows, weight_matrix

CASES = [
    ({"pads": [1, 1, 1, 1]}, (4, 3, 3, 3), (2, 3, 7, 6)),
    ({"strides": [2, 2], "pads": [0, 1, 1, 0], "dilations": [2, 1]}, (5, 3, 3, 2), (2, 3, 9, 8)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (4, 3, 3, 3), (1, 3, 7, 7)),
    ({"auto_pad": "SAME_LOWER"}, (4, 3, 2, 2), (1, 3, 5, 5)),
    ({"group": 3, "pads": [1, 1, 1, 1]}, (3, 1, 3, 3), (2, 3, 5, 5)),  # depthwise
    ({"pads": [2, 1], "strides": [2]}, (4, 3, 5), (2, 3, 11)),         # 1-D
]


@pytest.mark.parametrize("attrs, w_shape, x_shape", CASES)
def test_rows_times_weights_is_the_convolution(attrs, w_shape, x_shape):
    rng = np.random.default_rng(0)
    w = rng.normal(size=w_shape).astype(np.float32)
    x = rng.normal(size=x_shape).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, None)],
                              [helper.make_tensor_value_info("y", 1, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    layer = layer_of(node, {"w": graph.initializer[0]})
    rows = input_rows(layer, node, x, w.shape)
    got = np.einsum("rgk,gok->rgo", rows, weight_matrix(layer, w))
    np.testing.assert_allclose(got, output_rows(layer, y), atol=1e-5)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_and_matmul_rows(trans_b):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    w = rng.normal(size=(4, 5) if trans_b else (5, 4)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="g", transB=trans_b)
    layer = layer_of(node, {"w": numpy_helper.from_array(w, "w")})
    y = x @ (w.T if trans_b else w)
    got = np.einsum("rgk,gok->rgo", input_rows(layer, node, x, w.shape), weight_matrix(layer, w))
    np.testing.assert_allclose(got, output_rows(layer, y), atol=1e-5)
