"""Target rules: what each one changes, what a target refuses, and that exports follow both."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qinspect.cli import main
from qinspect.core.analysis.simulate import Simulator
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.commands import CommandStack, SetTarget
from qinspect.core.io.overrides import file_encodings, read_overrides, write_overrides
from qinspect.core.io.qdq import build_qdq_model
from qinspect.core.io.session import load_session
from qinspect.core.plan import PrecisionPlan, derive_encodings, encodings_for_target, refusals, rule_effects
from qinspect.core.project import Project
from qinspect.core.ptq.prepare import prepare_model
from qinspect.core.quant.encoding import compute_encoding
from qinspect.core.quant.qparams import onnx_qparams, quantize_constant
from qinspect.core.targets.cpu import u8s8_saturates
from tests.models import finish

F = TensorProto.FLOAT
RNG = np.random.default_rng(7)


def init(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def three_convs(depthwise=False, transpose=False):
    """The QNN guide's mixed-precision example: Conv -> Conv -> Conv, each followed by Relu."""
    c = 4
    nodes, inits = [], []
    x = "input"
    for i in (1, 2, 3):
        op, attrs = "Conv", {"pads": [1, 1, 1, 1]}
        w_shape = (c, 3 if i == 1 else c, 3, 3)
        if i == 2 and depthwise:
            attrs["group"] = c
            w_shape = (c, 1, 3, 3)
        if i == 3 and transpose:
            op, attrs, w_shape = "ConvTranspose", {"pads": [1, 1, 1, 1]}, (c, c, 3, 3)
        inits += [init(f"conv{i}.weight", *w_shape), init(f"conv{i}.bias", c, scale=0.1)]
        nodes += [helper.make_node(op, [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}_out"], name=f"conv{i}",
                                   **attrs),
                  helper.make_node("Relu", [f"conv{i}_out"], [f"relu{i}_out"], name=f"relu{i}")]
        x = f"relu{i}_out"
    graph = helper.make_graph(nodes, "three_convs", [helper.make_tensor_value_info("input", F, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info(x, F, ["N", c, 8, 8])], initializer=inits)
    return finish(graph)


@pytest.fixture
def calibrated(tmp_path):
    def make(model=None, target="qnn-htp"):
        index = prepare_model(model or three_convs(), target)
        x = RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        stats = calibrate(index, open_data(str(tmp_path / "x.npy"), index.inputs)).stats
        return index, stats, x
    return make


def session(model, optimize=True):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def producer_of(model, tensor):
    return next(n for n in model.graph.node if tensor in n.output)


def test_qnn_float_rule_makes_the_middle_conv_float_and_the_export_runs_it_in_float(calibrated):
    index, stats, x = calibrated()
    plan = PrecisionPlan()
    plan.set("relu2_out", dtype="float", bw=32)
    enc = derive_encodings(index, stats, plan)
    for name in ("conv2.weight", "conv2.bias"):
        assert enc[name].is_float and enc[name].bw == 32, name
    assert not enc["conv1.weight"].is_float and not enc["conv3.weight"].is_float
    effects = rule_effects(index, plan)
    assert set(effects) == {"conv2.weight", "conv2.bias"}
    message = effects["conv2.weight"].message
    assert "qnn-htp" in message and "conv2" in message and "float32" in message and "\n" not in message
    print("\n" + message)

    model, _ = build_qdq_model(index, enc)
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    floats = {t.name: t for t in model.graph.initializer}
    assert floats[conv2.input[1]].data_type == F and floats[conv2.input[2]].data_type == F  # float weight, bias
    consumers = [n.op_type for n in model.graph.node if "relu2_out" in n.input]
    assert "QuantizeLinear" not in consumers  # the middle Conv's output stays float
    assert producer_of(model, conv2.input[0]).op_type == "DequantizeLinear"  # its input is still quantized
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert producer_of(model, conv1.input[1]).op_type == "DequantizeLinear"
    (ran,) = session(model).run(None, {"input": x})
    (plain,) = session(model, optimize=False).run(None, {"input": x})
    (simulated,) = Simulator(index, enc, names=["relu3_out"]).run({"input": x})
    np.testing.assert_allclose(plain, simulated, rtol=1e-5, atol=1e-6)
    if not u8s8_saturates():  # a qnn-htp export is not made for CPUs whose u8s8 kernels saturate
        assert np.abs(ran - simulated).max() <= enc["relu3_out"].scale[0] * 1.001  # at most one output step

    on_cpu = derive_encodings(index, stats, _plan("ort-cpu", relu2_out=32))
    assert not on_cpu["conv2.weight"].is_float  # onnxruntime runs a float output with integer weights


def _plan(target, **floats):
    plan = PrecisionPlan(target=target)
    for name, bw in floats.items():
        plan.set(name, dtype="float", bw=bw)
    return plan


def test_partial_override_file_gets_the_rule_as_the_converter_applies_it(calibrated, tmp_path, capsys):
    """calibrate --overrides with the middle Conv's output float32: weight and bias come out float."""
    path = tmp_path / "three.onnx"
    onnx.save_model(three_convs(), path)
    np.save(tmp_path / "x.npy", RNG.standard_normal((16, 3, 8, 8)).astype(np.float32))
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"version": "0.6.1", "activation_encodings": {
        "relu2_out": [{"bitwidth": 32, "dtype": "float"}]}, "param_encodings": {}}))
    out = tmp_path / "enc.json"
    assert main(["calibrate", str(path), "--data", str(tmp_path / "x.npy"), "-o", str(out),
                 "--overrides", str(user)]) == 0
    doc = json.loads(out.read_text())
    params = doc["param_encodings"]
    assert params["conv2.weight"] == [{"bitwidth": 32, "dtype": "float"}]
    assert params["conv2.bias"] == [{"bitwidth": 32, "dtype": "float"}]  # a float bias is written
    assert "conv1.bias" not in params  # a bias the converter derives (input x weight scale) is not (qnn-htp)
    assert params["conv3.bias"][0]["bitwidth"] == 32  # conv3's input is float: no scale to derive it from
    assert doc["producer"]["target"] == "qnn-htp"
    assert "conv2.weight: qnn-htp: conv2's output is float32" in capsys.readouterr().err


def test_float_bias_edit_exports_as_float(calibrated):
    index, stats, x = calibrated(target="ort-cpu")
    plan = PrecisionPlan(target="ort-cpu")
    plan.set("conv2.bias", dtype="float", bw=16)
    enc = derive_encodings(index, stats, plan)
    assert enc["conv2.bias"].is_float and enc["conv2.bias"].bw == 16  # it was int16 before
    assert not enc["conv2.weight"].is_float  # ort-cpu has no float rule
    model, _ = build_qdq_model(index, enc, "ort-cpu")
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    cast = producer_of(model, conv2.input[2])
    assert cast.op_type == "Cast"  # float16 storage cast back to float, not a DequantizeLinear
    stored = {t.name: t for t in model.graph.initializer}[cast.input[0]]
    assert stored.data_type == TensorProto.FLOAT16
    np.testing.assert_array_equal(numpy_helper.to_array(stored), index.initializer("conv2.bias").astype(np.float16))
    session(model).run(None, {"input": x})
    written = file_encodings(index, enc, target="qnn-htp", edited=plan.edited())
    assert written["conv2.bias"].is_float

    htp = derive_encodings(index, stats, _plan("qnn-htp", **{"conv2.bias": 16}))
    assert htp["conv2.weight"].is_float and htp["relu2_out"].is_float  # QNN: the bias makes the op float


def test_an_input_wider_than_16_bits_leaves_the_next_bias_intact(calibrated):
    index, stats, x = calibrated(target="ort-cpu")
    plan = PrecisionPlan(target="ort-cpu")
    plan.set("relu1_out", bw=32)  # the Python API derives what it is asked; targets refuse it (below)
    enc = derive_encodings(index, stats, plan)
    bias = index.initializer("conv2.bias")
    qp = onnx_qparams(enc["conv2.bias"])
    back = quantize_constant(bias, qp).astype(np.float64) * qp.scale
    np.testing.assert_allclose(back, bias, atol=float(np.abs(bias).max()) * 2**-30)  # not clipped
    assert enc["conv2.bias"].scale[0] > 1e-11  # its own scale, not input x weight scale (~1e-12)
    assert "int32 activations do not run on ort-cpu" in refusals(index, plan)[0]


def test_int4_activations_are_refused_on_ort_cpu_with_the_fix(tmp_path):
    path = tmp_path / "three.onnx"
    onnx.save_model(three_convs(), path)
    project = Project(plan=PrecisionPlan(target="ort-cpu"))
    project.open_model(str(path))
    with pytest.raises(ValueError) as err:
        project.apply_edit(["relu1_out"], {"bw": 4})
    message = str(err.value)
    print("\n" + message)
    assert message.startswith("relu1_out: int4 activations do not run on ort-cpu")
    assert "refuses a Conv" in message and "use" in message and "int8" in message and "int16" in message
    assert project.plan.edited() == []
    project.apply_edit(["conv2.weight"], {"bw": 4})  # 4-bit weights are fine there

    np.save(tmp_path / "x.npy", RNG.standard_normal((8, 3, 8, 8)).astype(np.float32))
    assert main(["calibrate", str(path), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "e.json"),
                 "--target", "ort-cpu", "--act-bw", "4"]) == 2
    assert not (tmp_path / "e.json").exists()


def test_ort_cpu_keeps_8bit_weights_of_integer_kernels_on_a_7bit_grid(calibrated):
    index, stats, _ = calibrated(three_convs(depthwise=True, transpose=True), target="ort-cpu")
    plan = PrecisionPlan(target="ort-cpu")
    enc = derive_encodings(index, stats, plan)
    w = enc["conv1.weight"]
    assert w.bw == 7 and set(w.offset) == {-64}
    codes = quantize_constant(index.initializer("conv1.weight"), onnx_qparams(w))
    assert codes.min() >= -64 and codes.max() <= 63 and max(-codes.min(), codes.max()) >= 63  # the whole 7-bit grid
    assert enc["conv2.weight"].bw == 8  # depthwise: onnxruntime's kernel widens first, no saturation
    assert enc["conv3.weight"].bw == 8  # ConvTranspose runs in float in onnxruntime
    effects = rule_effects(index, plan)
    assert effects["conv1.weight"].rule == "weight-grid" and set(effects) == {"conv1.weight"}

    plan.set("relu1_out", bw=16)  # conv2 is depthwise; with a 16-bit input nothing is fused
    plan.set("input", bw=16)
    assert derive_encodings(index, stats, plan)["conv1.weight"].bw == 8
    assert derive_encodings(index, stats, PrecisionPlan())["conv1.weight"].bw == 8  # qnn-htp: the full grid


def test_7bit_grid_survives_a_file_and_is_regridded_when_it_did_not_come_from_one(calibrated, tmp_path):
    index, stats, _ = calibrated(target="ort-cpu")
    enc = derive_encodings(index, stats, PrecisionPlan(target="ort-cpu"))
    kinds = {n: index.targets[n].kind for n in enc}
    write_overrides(tmp_path / "cpu.json", enc, kinds, "1.0.0", target="ort-cpu")
    entry = next(e for e in json.loads((tmp_path / "cpu.json").read_text())["param_encodings"]
                 if e["name"] == "conv1.weight")
    assert entry["bw"] == 8 and set(entry["offset"]) == {-128}  # the same grid points, a bitwidth QNN takes
    back, _ = read_overrides(tmp_path / "cpu.json", index)
    again = encodings_for_target(index, back, "ort-cpu")
    assert again["conv1.weight"] == enc["conv1.weight"]  # the same scale: not coarsened a second time
    full = derive_encodings(index, stats, PrecisionPlan())  # a qnn-htp file: 8-bit codes up to 127
    regrid = encodings_for_target(index, {"conv1.weight": full["conv1.weight"]}, "ort-cpu")["conv1.weight"]
    assert regrid.bw == 7
    np.testing.assert_allclose(regrid.max, full["conv1.weight"].max, rtol=0.02)  # the file's range, coarser grid


def test_qnn_fixes_sigmoid_and_tanh_outputs(tmp_path):
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
             helper.make_node("Tanh", ["c"], ["t"], name="tanh")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", F, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("s", F, ["N", 2, 8, 8]),
                               helper.make_tensor_value_info("t", F, ["N", 2, 8, 8])],
                              initializer=[init("w", 2, 3, 1, 1), init("b", 2)])
    index = prepare_model(finish(graph))
    x = RNG.standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    stats = calibrate(index, open_data(str(tmp_path / "x.npy"), index.inputs)).stats
    plan = PrecisionPlan()
    enc = derive_encodings(index, stats, plan)
    assert enc["s"] == compute_encoding(0.0, 1.0, 8)  # AIMET's HTP config: [0, 1]
    assert enc["t"] == compute_encoding(-1.0, 1.0, 8, symmetric=True)  # [-1, 1], symmetric
    plan.set("s", bw=16)
    plan.set("t", bw=16)
    enc = derive_encodings(index, stats, plan)
    assert (enc["s"].scale, enc["s"].offset) == ((1 / 65536,), (0,))  # what QNN requires at 16 bits
    assert (enc["t"].scale, enc["t"].offset) == ((1 / 32768,), (-32768,))
    assert "fixes Sigmoid outputs at 16 bits" in rule_effects(index, plan)["s"].message
    plan.set("s", range=(0.0, 0.5))
    assert "fixes the encoding of Sigmoid outputs" in refusals(index, plan, ["s"])[0]
    on_cpu = derive_encodings(index, stats, PrecisionPlan(target="ort-cpu"))
    assert on_cpu["s"] == compute_encoding(stats["s"].min, stats["s"].max, 8)  # only QNN fixes them


@pytest.mark.parametrize("target", ["qnn-htp", "ort-cpu"])
def test_incremental_derivation_follows_the_rules(calibrated, target):
    index, stats, _ = calibrated(target=target)
    plan = PrecisionPlan(target=target)
    known = derive_encodings(index, stats, plan)
    edits = [("relu2_out", {"dtype": "float", "bw": 16}), ("conv3.bias", {"dtype": "float", "bw": 32}),
             ("relu1_out", {"bw": 16}), ("relu2_out", {"dtype": None, "bw": None}), ("input", {"bw": 16}),
             ("conv1.weight", {"bw": 4}), ("input", {"bw": None})]
    for name, changes in edits:
        plan.set(name, **changes)
        known = derive_encodings(index, stats, plan, [name], known)
        assert known == derive_encodings(index, stats, plan), (name, changes)


def test_target_switch_is_undoable_saved_in_sessions_and_refused_when_it_cannot_run_the_plan(tmp_path):
    path = tmp_path / "three.onnx"
    onnx.save_model(three_convs(), path)
    x = RNG.standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    project = Project()
    project.open_model(str(path))
    index = project.index
    project.set_stats(calibrate(index, open_data(str(tmp_path / "x.npy"), index.inputs)).stats, 8, str(tmp_path / "x.npy"))
    stack = CommandStack(project)
    events = []
    project.subscribe(lambda event, names: events.append(event))
    assert project.encodings["conv1.weight"].bw == 8
    stack.push(SetTarget("ort-cpu"))
    assert project.target == "ort-cpu" and project.encodings["conv1.weight"].bw == 7
    assert events == ["plan"] and "conv1.weight" in project.rule_effects
    project.save_session(tmp_path / "s.qinspect")
    assert load_session(tmp_path / "s.qinspect").plan.target == "ort-cpu"
    reopened = Project.from_session(tmp_path / "s.qinspect")
    assert reopened.target == "ort-cpu" and reopened.encodings == project.encodings
    stack.undo()
    assert project.target == "qnn-htp" and project.encodings["conv1.weight"].bw == 8

    stack.push(SetTarget("ort-cpu"))
    project.apply_edit(["conv2.bias"], {"bw": 16})  # ort-cpu takes 16-bit biases, the QNN converter does not
    with pytest.raises(ValueError, match="qnn-htp cannot run the current plan: conv2.bias: int16 biases"):
        stack.push(SetTarget("qnn-htp"))
    assert project.target == "ort-cpu"


def test_an_export_warns_about_what_the_target_cannot_run(calibrated):
    index, stats, _ = calibrated(target="ort-cpu")
    plan = PrecisionPlan(target="ort-cpu")
    plan.set("relu1_out", bw=4)  # a script's plan is not checked at edit time
    enc = derive_encodings(index, stats, plan)
    _, lines = build_qdq_model(index, enc, "ort-cpu")
    assert any(line.startswith("relu1_out: int4 activations do not run on ort-cpu") and "use" in line for line in lines)


def test_a_new_target_is_a_data_entry(calibrated, monkeypatch):
    """A profile for an NPU that runs 8-bit activations only and per-tensor Conv weights: no new code."""
    from dataclasses import replace

    from qinspect.core.targets import profiles

    npu = replace(profiles.ORT_CPU, name="test-npu", title="an 8-bit NPU", weight_grid=None,
                  per_tensor_ops=frozenset({"Conv"}),
                  supports={**profiles.ORT_CPU.supports, "activation": profiles._pairs(ints=(8,), floats=(16,))})
    monkeypatch.setitem(profiles.TARGETS, "test-npu", npu)
    index, stats, _ = calibrated(target="test-npu")
    plan = PrecisionPlan(target="test-npu")
    enc = derive_encodings(index, stats, plan)
    assert enc["conv1.weight"].axis is None and len(enc["conv1.weight"].scale) == 1  # per tensor
    assert rule_effects(index, plan)["conv1.weight"].rule == "per-tensor"
    plan.set("relu1_out", bw=16)
    assert refusals(index, plan, ["relu1_out"])[0].startswith("relu1_out: int16 activations do not run on test-npu")
