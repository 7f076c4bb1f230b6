"""Float vs quantized comparison, the cached Comparer, the simulation's rounding and the HTML report."""
import math
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from qinspect.core.analysis.compare import compare, sqnr_db
from qinspect.core.analysis.live import Comparer
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.quant.encoding import compute_encoding
from qinspect.core.errors import Cancelled
from qinspect.core.quant.qparams import fake_quantize
from qinspect.core.io.report import write_report
from qinspect.core.graph.model import load_model
from qinspect.core.plan import Defaults, PrecisionPlan, derive_encodings
from tests.models import small_cnn
from tests.helpers import Recorder

RESOURCES = Path(__file__).resolve().parents[3] / "resources"




@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cmp")
    index = load_model(small_cnn())
    x = (np.random.default_rng(4).standard_normal((24, 3, 8, 8)) * 1.5).astype(np.float32)
    np.save(folder / "x.npy", x)
    data = open_data(str(folder / "x.npy"), index.inputs)
    stats = calibrate(index, data).stats
    return index, data, x, stats


def test_fake_quantize_is_onnx_rounding():
    """The simulation's rule is QuantizeLinear's: float32 x / scale, ties to even, then + zp."""
    enc = compute_encoding(-1.8, 0.5, 8)
    s = np.float32(enc.scale[0])
    k = np.arange(-200, 56)
    x = np.concatenate([((k + 0.5) * s).astype(np.float32), np.linspace(-3, 3, 1001, dtype=np.float32)])
    want = enc.dequantize(enc.quantize_onnx(x)).astype(np.float32)
    np.testing.assert_allclose(fake_quantize(x, enc), want, rtol=1e-6, atol=1e-7)
    # AIMET rounds these ties away from zero instead; they must differ somewhere
    assert not np.allclose(enc.quantize_dequantize(x[:256]), fake_quantize(x[:256], enc))


def test_compare_reports_every_tensor_and_output(cnn):
    index, data, x, stats = cnn
    encodings = derive_encodings(index, stats, PrecisionPlan())
    progress = Recorder()
    result = compare(index, encodings, data, batch_size=5, progress=progress)
    assert result.samples == 24 and progress.calls[-1] == (24, 24)
    assert set(result.tensors) == set(index.activations()) | set(index.weights()) | set(index.biases())
    assert set(result.outputs) == {"logits"}
    # the input's error is its own quantizer's: SQNR of fake_quantize(x) vs x, computed here
    f = x.astype(np.float64)
    q = fake_quantize(x, encodings["input"]).astype(np.float64)
    expected = 10 * math.log10((f**2).sum() / ((q - f) ** 2).sum())
    assert result.tensors["input"].sqnr_db == pytest.approx(expected, rel=1e-9)
    assert result.tensors["input"].local_sqnr_db == pytest.approx(expected, rel=1e-9)
    w = index.initializer("conv2.weight").astype(np.float64)
    wq = fake_quantize(w, encodings["conv2.weight"])
    assert result.tensors["conv2.weight"].rel_error == pytest.approx(np.linalg.norm(wq - w) / np.linalg.norm(w))
    # errors accumulate: the output is worse than its own quantizer alone
    out = result.tensors["logits"]
    assert out.sqnr_db < out.local_sqnr_db
    worst = result.worst()
    assert [t.sqnr_db for t in worst] == sorted(t.sqnr_db for t in worst)
    assert result.accuracy_float is None  # .npy data has no labels


def test_more_bits_less_error(cnn):
    index, data, _, stats = cnn
    out = {}
    for bw in (8, 16):
        enc = derive_encodings(index, stats, PrecisionPlan(Defaults(act_bw=bw, param_bw=bw)))
        out[bw] = compare(index, enc, data, samples=8).outputs["logits"].sqnr_db
    assert out[16] > out[8] + 30


def test_digits_accuracy_from_labels():
    index = load_model(RESOURCES / "digits_cnn.onnx")
    calib = open_data(str(RESOURCES / "digits_calib.npz"), index.inputs)
    stats = calibrate(index, calib, batch_size=64).stats
    encodings = derive_encodings(index, stats, PrecisionPlan())
    test = open_data(str(RESOURCES / "digits_test.npz"), index.inputs)
    result = compare(index, encodings, test, batch_size=64)
    print(f"\ndigits compare: float {result.accuracy_float:.4f} quantized {result.accuracy_quantized:.4f} "
          f"output SQNR {result.outputs['logits'].sqnr_db:.1f} dB")
    assert result.accuracy_float == pytest.approx(0.9832, abs=1e-4)
    assert abs(result.accuracy_quantized - result.accuracy_float) <= 0.005


def test_compare_can_be_cancelled(cnn):
    index, data, _, stats = cnn
    encodings = derive_encodings(index, stats, PrecisionPlan())
    with pytest.raises(Cancelled):
        compare(index, encodings, data, batch_size=4, progress=Recorder(cancel_after=2))


def test_comparer_reuses_what_it_can(cnn):
    index, data, _, stats = cnn
    plan = PrecisionPlan()
    comparer = Comparer(index, data, samples=8)
    comparer.update(derive_encodings(index, stats, plan))
    assert comparer.last_update["rebuilt"]

    plan.set("sig_out", bw=16)  # same kind (integer): no new session, only downstream re-run
    encodings = derive_encodings(index, stats, plan)
    result = comparer.update(encodings)
    info = comparer.last_update
    assert not info["rebuilt"]
    assert set(info["changed"]) == {"sig_out", "fc.bias"}  # the bias follows its input's scale
    assert set(info["rerun"]) == {"sig_out", "logits"} and info["constants"] == ["fc.bias"]
    assert info["from_cut"] > info["nodes"] / 2  # only the graph's tail ran, on the last run's tensors
    fresh = Comparer(index, data, samples=8).update(encodings)
    for name, t in fresh.tensors.items():
        assert result.tensors[name].sqnr_db == pytest.approx(t.sqnr_db, rel=1e-12), name
    assert result.outputs["logits"].sqnr_db == pytest.approx(fresh.outputs["logits"].sqnr_db, rel=1e-12)

    plan.set("conv2_out", dtype="float", bw=16)  # integer -> float16: a new session
    encodings = derive_encodings(index, stats, plan)
    result = comparer.update(encodings, changed=["conv2_out"])
    assert comparer.last_update["rebuilt"]
    fresh = Comparer(index, data, samples=8).update(encodings)
    for name, t in fresh.tensors.items():
        assert result.tensors[name].sqnr_db == pytest.approx(t.sqnr_db, rel=1e-12), name
    assert result.tensors["conv2_out"].encoding == "float16"
    comparer.close()


def test_nan_values_are_counted_not_compared(tmp_path):
    index = load_model(small_cnn())
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    data = open_data(str(tmp_path / "x.npy"), index.inputs)
    stats = calibrate(index, data).stats
    result = compare(index, derive_encodings(index, stats, PrecisionPlan()), data)
    assert result.tensors["input"].nonfinite == 1
    assert math.isfinite(result.tensors["input"].sqnr_db)


def test_sqnr_edge_cases():
    assert sqnr_db(1.0, 0.0) == math.inf and sqnr_db(0.0, 1.0) == -math.inf
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)


def test_html_report(cnn, tmp_path):
    index, data, _, stats = cnn
    plan = PrecisionPlan()
    plan.set("conv2.weight", bw=4)
    result = compare(index, derive_encodings(index, stats, plan), data)
    path = write_report(tmp_path / "r.html", result, model="m<1>.onnx", histograms=3)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "m&lt;1&gt;.onnx" in text
    assert text.count("<svg") == 3 and "<script" not in text
    assert not re.search(r"(src|href)=", text)  # self-contained
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(activation|weight|bias)</td>", text)
    names = [n for n, _ in rows]
    assert names[0] == result.worst()[0].name and len(names) == len(result.tensors)
    assert "conv2.weight" in names[:3]  # 4-bit weights are among the worst
    onnx.checker.check_model(index.model)  # the index's model was not modified by the comparison


def test_cancelled_update_changes_nothing(cnn):
    index, data, _, stats = cnn
    plan = PrecisionPlan()
    comparer = Comparer(index, data, samples=8, batch_size=2)
    before = comparer.update(derive_encodings(index, stats, plan))
    plan.set("input", bw=16)
    encodings = derive_encodings(index, stats, plan)
    with pytest.raises(Cancelled):
        comparer.update(encodings, progress=Recorder(cancel_after=2))
    assert comparer.comparison is before
    again = comparer.update(encodings)  # finds the same change again and recomputes it
    assert "input" in comparer.last_update["changed"]
    assert again.tensors["input"].sqnr_db > before.tensors["input"].sqnr_db + 30


def test_scalar_constant_is_simulated():
    """A 0-d float constant (attention's 1/sqrt(d) scale, an epsilon) is a weight target; its
    fake-quantized value must reach onnxruntime as an array, not a numpy scalar."""
    from onnx import TensorProto, helper

    from tests.models import finish

    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.125])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"], name="mul"), helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "scalar", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], initializer=[scale])
    index = load_model(finish(graph))
    data = open_data("random:8", index.inputs)
    encodings = derive_encodings(index, calibrate(index, data).stats, PrecisionPlan())
    assert "scale" in encodings
    comparer = Comparer(index, data, samples=4)
    result = comparer.update(encodings)
    assert result is not None


def test_an_input_list_names_the_outputs_to_compare(tmp_path, capsys):
    """QNN input lists may start with %tensor and #layer lines: those are what gets compared."""
    from qinspect.cli import main

    x = np.load(RESOURCES / "digits_test.npz")["input"][:6]
    for i, sample in enumerate(x):
        sample[None].astype(np.float32).tofile(tmp_path / f"s{i}.raw")
    lines = ["%logits conv2_relu_out no_such_tensor", "#fc1"] + [f"s{i}.raw" for i in range(len(x))]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    index = load_model(RESOURCES / "digits_cnn.onnx")
    encodings = derive_encodings(index, calibrate(index, open_data(str(RESOURCES / "digits_calib.npz"),
                                                                   index.inputs)).stats, PrecisionPlan())
    result = compare(index, encodings, open_data(str(tmp_path / "list.txt"), index.inputs), runtime=True)
    assert list(result.outputs) == ["logits", "conv2_relu_out", "fc1_out"]
    assert list(result.runtime.outputs) == ["logits"]  # the exported model's own outputs
    assert any("left out: no_such_tensor" in n for n in result.notes)
    enc = tmp_path / "enc.json"
    assert main(["calibrate", str(RESOURCES / "digits_cnn.onnx"), "--data", str(tmp_path / "list.txt"), "-o",
                 str(enc), "-q"]) == 0
    assert main(["compare", str(RESOURCES / "digits_cnn.onnx"), "--encodings", str(enc), "--data",
                 str(tmp_path / "list.txt"), "-q"]) == 0
    out = capsys.readouterr()
    assert "output conv2_relu_out: SQNR" in out.out and "the data names the outputs to compare" in out.err


def test_float_activations_beyond_the_budget_are_kept_on_disk(cnn):
    index, data, _, stats = cnn
    encodings = derive_encodings(index, stats, PrecisionPlan())
    in_memory = Comparer(index, data, samples=8).update(encodings)
    comparer = Comparer(index, data, samples=8, float_budget=1000)  # bytes: nearly everything spills
    spilled = comparer.update(encodings)
    assert comparer._spill.spilled >= 3 and any(isinstance(v, np.memmap) for v in comparer._float[0].values())
    for name, t in in_memory.tensors.items():
        assert spilled.tensors[name].sqnr_db == pytest.approx(t.sqnr_db, rel=1e-12), name
    folder = comparer._spill.folder
    comparer.close()
    assert not Path(folder).exists()
