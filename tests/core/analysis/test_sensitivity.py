"""Quantizer groups, sensitivity ranking and promotion (a layer made sensitive on purpose ranks first)."""
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qinspect.core.analysis.compare import compare
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.commands import CommandStack, SetEdits
from qinspect.core.calib.data import open_data
from qinspect.core.quant.encoding import float_encoding
from qinspect.core.errors import Cancelled
from qinspect.core.graph.model import load_model
from qinspect.core.plan import PrecisionPlan, derive_encodings
from qinspect.core.project import Project
from qinspect.core.analysis.sensitivity import (
    OutputEvaluator,
    QuantGroup,
    promote_changes,
    quantizer_groups,
    sensitivity,
)
from tests.models import finish, small_cnn
from tests.helpers import Recorder

RESOURCES = Path(__file__).resolve().parents[3] / "resources"


def outlier_mlp(seed: int = 0, outlier: float = 50.0) -> onnx.ModelProto:
    """input[N,16] -> Gemm+Relu fc1 -> Gemm+Relu fc2 -> Gemm fc3 -> logits[N,10].

    fc2's weight has a column of huge values (`outlier`) that meets a tiny constant input feature
    (fc1's unit 0 is 1e-3 for every sample), so it hardly matters in float but sets every output
    channel's 8-bit scale: the other weights of fc2 round to a few levels and fc2 is by far the
    most sensitive layer."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((32, 16)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    w1[0], b1[0] = 0.0, 1e-3
    w2 = (rng.standard_normal((32, 32)) * 0.3).astype(np.float32)
    w2[:, 0] = outlier
    b2 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    w3 = (rng.standard_normal((10, 32)) * 0.3).astype(np.float32)
    b3 = np.zeros(10, np.float32)
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("fc1.weight", w1), ("fc1.bias", b1), ("fc2.weight", w2), ("fc2.bias", b2), ("fc3.weight", w3),
        ("fc3.bias", b3)]]
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1_out"], ["relu1"], name="relu1"),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["fc2_out"], name="fc2", transB=1),
        helper.make_node("Relu", ["fc2_out"], ["relu2"], name="relu2"),
        helper.make_node("Gemm", ["relu2", "fc3.weight", "fc3.bias"], ["logits"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(nodes, "outlier_mlp",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                              initializer=inits)
    return finish(graph)




@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sens")
    index = load_model(outlier_mlp())
    x = np.random.default_rng(1).standard_normal((48, 16)).astype(np.float32)
    np.save(folder / "x.npy", x)
    data = open_data(str(folder / "x.npy"), index.inputs)
    stats = calibrate(index, data).stats
    return index, data, stats


@pytest.fixture(scope="module")
def digits():
    index = load_model(str(RESOURCES / "digits_cnn.onnx"))
    data = open_data(str(RESOURCES / "digits_calib.npz"), index.inputs)
    stats = calibrate(index, data).stats
    return index, data, stats


def test_groups_follow_ops_with_fused_activations():
    groups = {g.name: g for g in quantizer_groups(load_model(small_cnn()))}
    assert list(groups) == ["input", "conv1", "conv2", "sig", "fc"]
    assert groups["conv1"].tensors == ["conv1.weight", "conv1.bias", "relu1_out"]  # Conv+Relu is one group
    assert groups["conv1"].op_type == "Conv"
    assert groups["conv2"].tensors == ["conv2.weight", "conv2.bias", "conv2_out"]
    assert groups["sig"].tensors == ["sig_out"] and groups["input"].op_type == "Input"
    assert groups["fc"].kinds == {"fc.weight": "weight", "fc.bias": "bias", "logits": "activation"}
    # MaxPool and Flatten reuse their input's encoding: no group of their own
    assert "pool" not in groups and "flatten" not in groups


def test_outlier_layer_ranks_first_and_promoting_it_raises_the_output_sqnr(mlp):
    index, data, stats = mlp
    project = Project(index)
    project.set_stats(stats)
    stack = CommandStack(project)
    original = dict(project.encodings)
    ranking = sensitivity(index, project.encodings, data)
    first = ranking[0]
    assert first.group.name == "fc2" and first.group.tensors == ["fc2.weight", "fc2.bias", "relu2"]
    assert first.score > ranking[1].score + 10
    # fc2 alone destroys the output; keeping only fc2 float gives most of the error back
    assert first.only_quantized_sqnr < 12 and first.only_float_sqnr > first.plan_sqnr + 15
    assert all(e.only_quantized_sqnr > first.only_quantized_sqnr + 10 for e in ranking[1:])
    before = compare(index, project.encodings, data).outputs["logits"].sqnr_db
    for precision in ("int16", "float16"):
        stack.push(SetEdits(promote_changes([first.group], precision), f"promote fc2 to {precision}"))
        after = compare(index, project.encodings, data).outputs["logits"].sqnr_db
        assert after > before + 15, precision
        stack.undo()
        assert project.encodings == original


def test_measurements_match_their_definitions(mlp):
    """The passthrough trick gives what explicit float32 encodings give, and the plan's SQNR is compare's."""
    index, data, stats = mlp
    enc = derive_encodings(index, stats, PrecisionPlan())
    ranking = {e.group.name: e for e in sensitivity(index, enc, data, samples=16, batch_size=5)}
    direct = compare(index, enc, data, samples=16, batch_size=5).outputs["logits"].sqnr_db
    assert ranking["fc1"].plan_sqnr == pytest.approx(direct, rel=1e-6)
    group = next(g for g in quantizer_groups(index) if g.name == "fc1")
    f32 = float_encoding(32)
    only_q = {n: (e if n in group.tensors else f32) for n, e in enc.items()}
    only_f = {n: (f32 if n in group.tensors else e) for n, e in enc.items()}
    only_f["fc1.bias"] = f32
    assert ranking["fc1"].only_quantized_sqnr == pytest.approx(
        compare(index, only_q, data, samples=16).outputs["logits"].sqnr_db, rel=1e-6)
    assert ranking["fc1"].only_float_sqnr == pytest.approx(
        compare(index, only_f, data, samples=16).outputs["logits"].sqnr_db, rel=1e-6)


def test_one_session_for_every_variant(mlp):
    index, data, stats = mlp
    enc = derive_encodings(index, stats, PrecisionPlan())
    ev = OutputEvaluator(index, data, 16)
    try:
        ranking = sensitivity(index, enc, None, evaluator=ev)
        # the plan and the all-float reference whole, then each variant from its cut: a part of the graph
        assert ev.runs == 2 + 2 * len(ranking) and ev.rebuilds == 1
        assert ev.partial_runs > len(ranking) and ev.work < 2 + 0.8 * 2 * len(ranking)
    finally:
        ev.close()


def test_a_group_left_float_ranks_last(mlp):
    index, data, stats = mlp
    plan = PrecisionPlan()
    for name, ch in promote_changes([g for g in quantizer_groups(index) if g.name == "fc3"], "float32").items():
        plan.set(name, **ch)
    ranking = sensitivity(index, derive_encodings(index, stats, plan), data, samples=8)
    last = ranking[-1]
    assert last.group.name == "fc3" and not last.quantized and last.score == -math.inf
    assert last.to_dict()["score"] is None and last.only_float_sqnr == last.plan_sqnr


def test_promote_changes_follow_the_bias_rule(mlp):
    index, data, stats = mlp
    group = next(g for g in quantizer_groups(index) if g.name == "fc2")
    int16 = promote_changes([group], "int16")
    assert int16["fc2.weight"] == {"dtype": "int", "bw": 16, "encoding": None}
    assert int16["fc2.bias"] == {"dtype": None, "bw": None, "encoding": None}  # back to int32 from the scales
    assert promote_changes([group], "float16")["fc2.bias"] == {"dtype": "float", "bw": 16, "encoding": None}
    project = Project(index)
    project.set_stats(stats)
    project.apply_edits(int16)
    e = project.encodings
    assert e["fc2.weight"].bw == 16 and e["relu2"].bw == 16 and e["fc2.bias"].bw == 32
    assert e["fc2.bias"].scale[0] == pytest.approx(e["relu1"].scale[0] * e["fc2.weight"].scale[0])
    project.apply_edits(promote_changes([group], "float16"))
    assert all(project.encodings[t].is_float and project.encodings[t].bw == 16 for t in group.tensors)
    with pytest.raises(ValueError, match="precision"):
        promote_changes([group], "int12")
    # a group made by hand (no kinds) is treated as activations and weights
    hand_made = QuantGroup("x", "Add", ["a"])
    assert promote_changes([hand_made], "int16") == {"a": {"dtype": "int", "bw": 16, "encoding": None}}


def test_accuracy_with_labels_and_speed_on_the_example(digits):
    index, data, stats = digits
    enc = derive_encodings(index, stats, PrecisionPlan())
    progress = Recorder()
    ranking = sensitivity(index, enc, data, progress=progress)
    assert [e.group.name for e in ranking if e.group.op_type == "Input"] == ["input"]
    assert len(ranking) == 6 and all(e.quantized for e in ranking)
    assert all(0.8 < e.only_quantized_accuracy <= 1 and 0.8 < e.only_float_accuracy <= 1 for e in ranking)
    assert ranking[0].plan_accuracy is not None
    scores = [e.score for e in ranking]
    assert scores == sorted(scores, reverse=True)
    assert progress.calls[-1][:2] == (14, 14)


def test_cancel_raises_and_leaves_nothing(mlp):
    index, data, stats = mlp
    enc = derive_encodings(index, stats, PrecisionPlan())
    with pytest.raises(Cancelled):
        sensitivity(index, enc, data, progress=Recorder(cancel_after=3))
