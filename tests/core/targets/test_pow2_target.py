"""A target that requires power-of-two scales (vitis-dpu): its rule puts every integer tensor, biases
included, on an 8-bit symmetric per-tensor grid with a power-of-two scale; what it cannot run is
refused with the fix; the QDQ export carries the same scales and onnxruntime runs it as simulated."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qinspect.cli import main
from tests.helpers import runs_as_simulated
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.plan import PrecisionPlan, derive_encodings, encodings_for_target, refusals, rule_effects
from qinspect.core.ptq.prepare import prepare_model
from qinspect.core.quant.encoding import compute_encoding

RESOURCES = Path(__file__).resolve().parents[3] / "resources"
MODEL = RESOURCES / "digits_cnn.onnx"
DATA = RESOURCES / "digits_calib.npz"


def _pow2(scale) -> bool:
    e = np.log2(np.asarray(scale, dtype=np.float64))
    return bool((e == np.round(e)).all())


@pytest.fixture(scope="module")
def calibrated():
    index = prepare_model(str(MODEL), "vitis-dpu")
    with open_data(str(DATA), index.inputs) as data:
        stats = calibrate(index, data).stats
    return index, stats


def test_every_integer_tensor_gets_a_power_of_two_scale(calibrated):
    index, stats = calibrated
    plan = PrecisionPlan(target="vitis-dpu")
    encodings = derive_encodings(index, stats, plan)
    kinds = {index.targets[n].kind for n in encodings}
    assert kinds == {"activation", "weight", "bias"}
    for name, enc in encodings.items():
        assert enc.dtype == "int" and enc.bw == 8, name
        assert _pow2(enc.scale), (name, enc.scale)
        assert enc.symmetric and not enc.per_channel and set(enc.offset) == {-128}, name
    # the default ceil rounding ("non-overflow"): activation grids cover what calibration saw
    for name, st in stats.items():
        if name in encodings:
            assert encodings[name].min <= min(st.min, 0) and encodings[name].max >= max(st.max, 0) * (1 - 1e-12)
    effects = rule_effects(index, plan)
    assert {e.rule for e in effects.values()} <= {"pow2", "per-tensor"}
    assert all("power" in e.message or "per tensor" in e.message for e in effects.values())
    # biases left at the default 32 bits become 8-bit, from their own values
    bias = next(n for n in encodings if index.targets[n].kind == "bias")
    assert PrecisionPlan().settings("bias", bias).bw == 32 and effects[bias].rule == "pow2"


def test_the_plan_s_rounding_is_kept_and_off_is_not_possible(calibrated):
    index, stats = calibrated
    name = next(n for n in stats if n in index.targets)
    plan = PrecisionPlan(target="vitis-dpu")
    ceil = derive_encodings(index, stats, plan)[name]
    plan.set(name, pow2="floor")
    floor = derive_encodings(index, stats, plan)[name]
    assert floor.scale[0] == ceil.scale[0] / 2 or floor.scale[0] == ceil.scale[0]
    assert floor.scale[0] < ceil.scale[0] or _pow2(compute_encoding(0, stats[name].max, 8, symmetric=True).scale)
    plan.set(name, pow2="off")  # the DPU cannot run another scale: the target's rounding applies
    assert derive_encodings(index, stats, plan)[name] == ceil
    assert rule_effects(index, plan)[name].rule == "pow2"


def test_what_the_dpu_cannot_run_is_refused_with_the_fix(calibrated):
    index, stats = calibrated
    act = next(n for n in stats if n in index.targets)
    weight = next(n for n, t in index.targets.items() if t.kind == "weight")
    plan = PrecisionPlan(target="vitis-dpu")
    plan.set(act, bw=16)
    plan.set(weight, dtype="float", bw=16)
    problems = {p.split(":")[0]: p for p in refusals(index, plan)}
    assert set(problems) == {act, weight}  # the default 32-bit biases are not refused: the rule moves them
    assert "int16 activations do not run on vitis-dpu" in problems[act]
    assert "use int8" in problems[act] and "qnn-htp" in problems[act]
    assert "floating point" in problems[weight]
    plan.set(act, bw=None)
    plan.set(weight, dtype=None, bw=None)
    bias = next(n for n, t in index.targets.items() if t.kind == "bias")
    plan.set(bias, bw=32)  # asked for by an edit: refused, not moved
    assert [p.split(":")[0] for p in refusals(index, plan)] == [bias]


def test_an_imported_file_is_regridded_to_powers_of_two(calibrated):
    index, _ = calibrated
    act = next(n for n, t in index.targets.items() if t.kind == "activation")
    enc = compute_encoding(-0.3, 2.7, 8)  # asymmetric, scale 3/255
    out = encodings_for_target(index, {act: enc}, "vitis-dpu")[act]
    assert _pow2(out.scale) and out.symmetric and out.min <= -0.3 and out.max >= 2.7
    assert out.scale[0] == 2.0 ** np.ceil(np.log2(2.7 / 127))


def test_cli_export_carries_power_of_two_scales_and_runs_as_simulated(tmp_path, capsys):
    enc = tmp_path / "enc.json"
    assert main(["calibrate", str(MODEL), "--data", str(DATA), "-o", str(enc), "--format", "1.0.0",
                 "--target", "vitis-dpu", "-q"]) == 0
    out = runs_as_simulated(capsys, MODEL, enc, "vitis-dpu", tmp_path)
    print(f"vitis-dpu digits: simulated {out['sqnr_db']:.2f} dB, onnxruntime {out['runtime_sqnr_db']:.2f} dB")
    model = onnx.load(out["qdq"])
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant"})
    qdq_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq_nodes) > 10
    for n in qdq_nodes:
        scale = consts[n.input[1]]
        assert _pow2(scale), (n.name, scale)
        if len(n.input) > 2:
            zp = consts[n.input[2]]
            assert zp.dtype == np.int8 and (zp == 0).all(), n.name


def test_a_default_the_target_cannot_run_is_said_once_with_its_tensors(tmp_path, capsys):
    """--act-bw 16 on vitis-dpu: one reason naming the tensors, not the reason repeated per tensor."""
    code = main(["calibrate", str(MODEL), "--data", str(DATA), "-o", str(tmp_path / "x.json"), "--target",
                 "vitis-dpu", "--act-bw", "16", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("int16 activations do not run on vitis-dpu") == 1
    assert err.startswith("qinspect: input, conv1_relu_out, conv2_relu_out, conv3_relu_out and 2 more: ")
    assert not (tmp_path / "x.json").exists()
