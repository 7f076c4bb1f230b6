"""The cost model: MACs per op from shapes, bit operations and parameter bytes of a plan."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qinspect.core.analysis.cost import op_macs, plan_cost
from qinspect.core.quant.encoding import float_encoding
from qinspect.core.graph.model import load_model
from qinspect.core.plan import PrecisionPlan, derive_encodings
from qinspect.core.quant.stats import TensorStats
from tests.models import finish, small_cnn

# small_cnn: input [N,3,8,8] -> conv1 (4x3x3x3, pad 1) + Relu -> MaxPool 2 -> conv2 (4x4x3x3, pad 1)
# -> Sigmoid -> Flatten -> Gemm fc (5 x 64)
CONV1 = 4 * 8 * 8 * (3 * 3 * 3)
CONV2 = 4 * 4 * 4 * (4 * 3 * 3)
FC = 5 * 64
SIG = 4 * 4 * 4


def test_op_macs_exact_on_a_small_cnn():
    macs = op_macs(load_model(small_cnn()))
    assert macs == {"conv1": CONV1, "relu1": 0, "pool": 0, "conv2": CONV2, "sig": SIG, "flatten": 0, "fc": FC}


def test_op_macs_matmul_conv_transpose_and_gemm_without_transpose():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in [
        ("mm.weight", (6, 3)), ("ct.weight", (2, 4, 2, 2)), ("g.weight", (12, 7))]]
    nodes = [
        helper.make_node("MatMul", ["x", "mm.weight"], ["mm_out"], name="mm"),          # [N,4,6] x [6,3]
        helper.make_node("ConvTranspose", ["y", "ct.weight"], ["ct_out"], name="ct"),   # [N,2,3,3] -> [N,4,4,4]
        helper.make_node("Gemm", ["z", "g.weight"], ["g_out"], name="g"),              # [N,12] x [12,7]
        helper.make_node("Add", ["g_out", "g_out"], ["sum"], name="add"),
    ]
    graph = helper.make_graph(nodes, "ops", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 12])], [
        helper.make_tensor_value_info("mm_out", TensorProto.FLOAT, ["N", 4, 3]),
        helper.make_tensor_value_info("ct_out", TensorProto.FLOAT, ["N", 4, 4, 4]),
        helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 7])], initializer=inits)
    macs = op_macs(load_model(finish(graph)))
    assert macs == {"mm": 4 * 3 * 6, "ct": 2 * 3 * 3 * (4 * 2 * 2), "g": 7 * 12, "add": 7}


def test_plan_cost_counts_bits_and_bytes():
    index = load_model(small_cnn())
    stats = {n: TensorStats.of(np.linspace(-1, 1, 101, dtype=np.float32)) for n in index.activations()}
    plan = PrecisionPlan()
    cost = plan_cost(index, derive_encodings(index, stats, plan))
    assert cost.macs == CONV1 + CONV2 + SIG + FC
    assert cost.bit_ops == 64 * (CONV1 + CONV2 + SIG + FC)
    weights = 4 * 27 + 4 * 36 + 5 * 64
    assert cost.param_bytes == weights + 4 * (4 + 4 + 5)  # int8 weights, int32 biases
    plan.set("fc.weight", dtype="float", bw=16)
    plan.set("sig_out", bw=16)  # fc's input (Flatten reuses sig_out's encoding)
    cost = plan_cost(index, derive_encodings(index, stats, plan))
    assert cost.bit_ops == 64 * (CONV1 + CONV2 + SIG) + 16 * 16 * FC
    assert cost.param_bytes == weights + 5 * 64 + 4 * (4 + 4) + 2 * 5  # fc.weight and its bias float16
    # no encodings at all: every tensor at its float32 width
    assert plan_cost(index, {}).bit_ops == 32 * 32 * (CONV1 + CONV2 + SIG + FC)
    assert plan_cost(index, {"conv1.weight": float_encoding(32)}).param_bytes == 4 * (weights + 13)


def test_cost_is_plan_independent_in_macs():
    index = load_model(small_cnn())
    assert plan_cost(index, {}).macs == pytest.approx(sum(op_macs(index).values()))
