"""Bad input (issue 5): every case is refused with one line naming the file or tensor and the fix, or
handled (NaN/Inf, all-zero and one-element tensors), and nothing the user had is lost.

Corrupt/truncated/empty models, checker failures, and data of the wrong shape, dtype or names are
tested in test_model.py and test_data.py; this file adds what those do not cover.
"""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.quant.encoding import compute_encoding
from qinspect.core.errors import ModelError, OverridesError, QInspectError
from qinspect.core.io import files
from qinspect.core.io.overrides import parse_overrides, read_overrides, write_overrides
from qinspect.core.io.qdq import export_qdq
from qinspect.core.graph.model import load_model
from qinspect.core.plan import PrecisionPlan, derive_encodings
from tests.helpers import cpu_independent
from tests.models import finish, small_cnn

F = TensorProto.FLOAT
vi = helper.make_tensor_value_info


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def run(path_or_model, feeds):
    src = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(src, options, providers=["CPUExecutionProvider"]).run(None, feeds)


# --- model files that are not ONNX models ------------------------------------------------------------


def other_files():
    tensor = numpy_helper.from_array(np.ones((2, 2), np.float32), "t").SerializeToString()
    return {
        "json": b'{"version": "0.6.1", "activation_encodings": {}}',
        "npz": b"PK\x03\x04" + bytes(range(256)) * 4,
        "png": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "a TensorProto": tensor,
    }


@pytest.mark.parametrize("kind", list(other_files()))
def test_files_that_are_not_onnx_models(tmp_path, kind):
    path = tmp_path / "model.onnx"
    path.write_bytes(other_files()[kind])
    with pytest.raises(ModelError) as err:
        load_model(path)
    text = one_line(err)
    assert str(path) in text and "not a readable ONNX model" in text and "re-export" in text


# --- NaN / Inf, all-zero and one-element tensors -------------------------------------------------------


def test_nan_and_inf_in_input_data_are_counted_and_export_runs(tmp_path):
    index = load_model(small_cnn())
    x = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    np.save(tmp_path / "x.npy", x)
    result = calibrate(index, open_data(str(tmp_path / "x.npy"), index.inputs))
    s = result.stats["input"]
    assert (s.nan_count, s.posinf_count, s.neginf_count) == (1, 1, 1)
    assert np.isfinite([s.min, s.max]).all() and s.count == x.size - 3
    enc = derive_encodings(index, result.stats, PrecisionPlan())
    assert all(np.all(np.isfinite(e.scale)) for e in enc.values() if not e.is_float)
    export_qdq(index, enc, tmp_path / "q.onnx")
    (y,) = run(tmp_path / "q.onnx", {"input": x[:1]})  # NaN propagates; Inf saturates to the range
    assert y.shape == (1, 5)


def test_activation_that_is_only_nan_is_diagnosed(tmp_path):
    nodes = [helper.make_node("Sqrt", ["x"], ["s"], name="sqrt"), helper.make_node("Sigmoid", ["s"], ["y"], name="sig")]
    index = load_model(finish(helper.make_graph(nodes, "g", [vi("x", F, ["N", 4])], [vi("y", F, ["N", 4])])))
    np.save(tmp_path / "neg.npy", -np.ones((3, 4), np.float32))
    result = calibrate(index, open_data(str(tmp_path / "neg.npy"), index.inputs))
    assert result.stats["s"].count == 0 and result.stats["s"].nan_count == 12
    (d,) = [d for d in result.diagnostics if d.name == "s"]
    assert d.kind == "no_finite_values" and "all 12 values were NaN" in d.message and "float32" in d.message
    enc = derive_encodings(index, result.stats, PrecisionPlan())
    assert enc["s"].scale[0] > 0  # still a valid (minimum-range) encoding, never a division by zero
    export_qdq(index, enc, tmp_path / "q.onnx")
    run(tmp_path / "q.onnx", {"x": np.ones((1, 4), np.float32)})


def zero_and_tiny_model():
    """An all-zero Conv weight, a Conv with one all-zero output channel, a one-element weight
    (a scalar Mul) and a one-element activation."""
    w_half = np.random.default_rng(1).standard_normal((2, 1, 1, 1)).astype(np.float32)
    w_half[1] = 0
    nodes = [
        helper.make_node("Conv", ["x", "w_zero"], ["zero_out"], name="zero_conv"),
        helper.make_node("Conv", ["x", "w_half"], ["half_out"], name="half_conv"),
        helper.make_node("Add", ["zero_out", "half_out"], ["sum"], name="add"),
        helper.make_node("Mul", ["sum", "k"], ["scaled"], name="mul"),
        helper.make_node("ReduceMax", ["scaled"], ["peak"], name="peak", keepdims=0),
        helper.make_node("Mul", ["peak", "k"], ["y"], name="mul2"),
    ]
    inits = [numpy_helper.from_array(np.zeros((2, 1, 1, 1), np.float32), "w_zero"),
             numpy_helper.from_array(w_half, "w_half"), numpy_helper.from_array(np.float32(0.5), "k")]
    graph = helper.make_graph(nodes, "g", [vi("x", F, [1, 1, 2, 2])], [vi("y", F, []), vi("zero_out", F, [1, 2, 2, 2])],
                              inits)
    return finish(graph)


def test_all_zero_and_one_element_tensors_calibrate_and_export(tmp_path):
    model = zero_and_tiny_model()
    index = load_model(model)
    result = calibrate(index, open_data("random:4", index.inputs))
    assert result.stats["zero_out"].min == result.stats["zero_out"].max == 0
    assert result.stats["y"].count == 4  # one element per sample
    enc = derive_encodings(index, result.stats, PrecisionPlan())
    zero_w, half_w = enc["w_zero"], enc["w_half"]
    assert zero_w.per_channel and all(s > 0 for s in zero_w.scale)  # floor: no zero scale
    assert half_w.scale[1] < half_w.scale[0] and half_w.scale[1] > 0
    assert enc["zero_out"].offset == (0,) and enc["zero_out"].scale[0] > 0
    assert enc["k"].quantize_dequantize(0.5) == pytest.approx(0.5, abs=enc["k"].scale[0] / 2)
    assert enc["y"].min[0] <= 0 <= enc["y"].max[0]
    report = export_qdq(index, enc, tmp_path / "q.onnx")
    assert not cpu_independent(report.warnings)
    x = np.random.default_rng(2).standard_normal((1, 1, 2, 2)).astype(np.float32)
    y, zero_out = run(tmp_path / "q.onnx", {"x": x})
    assert np.all(zero_out == 0)  # zero is exact
    (want, _) = run(model, {"x": x})
    assert abs(float(y) - float(want)) < 0.05 * max(abs(float(want)), 1.0)


def test_weights_with_nan_and_inf_get_finite_encodings_and_a_warning(tmp_path):
    model = small_cnn()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0, 0, 0], w[1, 0, 0, 0], w[2, :, :, :] = np.nan, np.inf, np.nan  # channel 2 has no finite value
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "conv1.weight"))
    index = load_model(model)
    result = calibrate(index, open_data("random:2", index.inputs))
    assert result.stats["conv1.weight"].nan_count == 1 + 27
    enc = derive_encodings(index, result.stats, PrecisionPlan())["conv1.weight"]
    assert np.all(np.isfinite(enc.scale)) and np.all(np.asarray(enc.scale) > 0)
    encodings = derive_encodings(index, result.stats, PrecisionPlan())
    report = export_qdq(index, encodings, tmp_path / "q.onnx")
    assert any("NaN/Inf" in w and "conv1.weight (29)" in w for w in report.warnings)
    q = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "q.onnx").graph.initializer}
    stored = q["conv1.weight_quantized"]
    assert stored[0, 0, 0, 0] == 0 and stored[1, 0, 0, 0] == 127 and np.all(stored[2] == 0)
    run(tmp_path / "q.onnx", {"input": np.ones((1, 3, 8, 8), np.float32)})


# --- overrides files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index():
    return load_model(small_cnn())


def entry(**values):
    return {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", **values}


BAD_OVERRIDES = {
    "min is not a number": ({"version": "0.6.1", "activation_encodings": {"input": [entry(min="low", max=1)]}},
                            "input: min and max must be numbers"),
    "entry is not an object": ({"version": "0.6.1", "activation_encodings": {"input": [7]}},
                               "input: expected a list of encoding objects"),
    "NaN min": ({"version": "0.6.1", "activation_encodings": {"input": [entry(min=float("nan"), max=1)]}},
                "input: min and max must be finite"),
    "Infinity max": ({"version": "0.6.1", "activation_encodings": {"input": [entry(min=-1, max=float("inf"))]}},
                     "input: min and max must be finite"),
    "bitwidth as text": ({"version": "1.0.0", "activation_encodings": [
        {"name": "input", "dtype": "INT", "bw": "8", "scale": [0.1], "offset": [-128]}]}, "input: bitwidth '8'"),
    "offset off the grid": ({"version": "1.0.0", "activation_encodings": [
        {"name": "input", "dtype": "INT", "bw": 8, "scale": [0.1], "offset": [12]}]},
        "input: offset 12 is outside [-255, 0]"),
    "2.0.0 scale not numbers": ({"version": "2.0.0", "encodings": [
        {"name": "input", "output_dtype": "uint8", "y_scale": "big"}]}, "input: y_scale and y_zero_point must be numbers"),
    "2.0.0 zero points do not match scales": ({"version": "2.0.0", "encodings": [
        {"name": "conv1.weight", "output_dtype": "int8", "y_scale": [0.1, 0.2], "y_zero_point": [0, 0, 0], "axis": 0}]},
        "conv1.weight: 3 zero points for 2 scales"),
    "2.0.0 encodings not a list": ({"version": "2.0.0", "encodings": {"input": {}}}, "encodings must be a list"),
    "per-channel activation": ({"version": "0.6.1", "activation_encodings": {
        "input": [entry(min=-1, max=1), entry(min=-2, max=2)]}}, "input: 2 per-channel encodings for an activation"),
    "channel axis beyond the shape": ({"version": "2.0.0", "encodings": [
        {"name": "conv1.bias", "output_dtype": "int32", "y_scale": [0.1, 0.1, 0.1, 0.1], "axis": 3}]},
        "conv1.bias: channel axis 3 does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_OVERRIDES))
def test_bad_overrides_name_the_file_and_tensor(tmp_path, index, case):
    doc, needle = BAD_OVERRIDES[case]
    path = tmp_path / "enc.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(OverridesError) as err:
        read_overrides(path, index)
    text = one_line(err)
    assert str(path) in text and needle in text


def test_overrides_file_that_is_not_text(tmp_path, index):
    path = tmp_path / "enc.json"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(OverridesError) as err:
        read_overrides(path, index)
    assert "not UTF-8" in one_line(err) and str(path) in str(err.value)


def test_range_without_zero_is_widened_with_a_warning(index):
    doc = {"version": "0.6.1", "activation_encodings": {"input": [entry(min=0.5, max=2.0)]}}
    encodings, warnings = parse_overrides(doc, index)
    assert encodings["input"].min[0] == 0 and encodings["input"].max[0] == pytest.approx(2.0)
    assert any("input: range [0.5, 2.0] does not include 0" in w for w in warnings)


# --- output paths: missing, read-only, a folder, a full disk ------------------------------------------


def simple_encodings(index):
    return {"input": compute_encoding(-2, 2, 8)}


def writers(index, tmp_path):
    encodings = simple_encodings(index)
    return {
        "overrides": lambda p: write_overrides(p, encodings, {"input": "activation"}),
        "qdq": lambda p: export_qdq(index, encodings, p),
        "qdq external": lambda p: export_qdq(index, encodings, p, external_data=True),
    }


@pytest.mark.parametrize("kind", ["overrides", "qdq", "qdq external"])
def test_output_in_a_missing_folder_or_onto_a_folder(tmp_path, index, kind):
    write = writers(index, tmp_path)[kind]
    with pytest.raises(QInspectError) as err:
        write(tmp_path / "missing" / "out.onnx")
    assert "folder" in one_line(err) and "does not exist; create it or choose another path" in str(err.value)
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(QInspectError) as err:
        write(tmp_path / "dir.onnx")
    assert "is a folder; choose a file name" in one_line(err)


@pytest.mark.parametrize("kind", ["overrides", "qdq", "qdq external"])
@pytest.mark.parametrize("code, fix", [(errno.EROFS, "read-only"), (errno.EACCES, "no permission"),
                                       (errno.ENOSPC, "disk is full")])
def test_unwritable_folder_leaves_nothing_behind(tmp_path, index, monkeypatch, kind, code, fix):
    """Tests run as root, where a chmod'ed folder stays writable: the OS refusal is simulated."""
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    monkeypatch.setattr("qinspect.core.io.qdq.tempfile.mkdtemp", refuse)
    with pytest.raises(QInspectError) as err:
        writers(index, tmp_path)[kind](out)
    text = one_line(err)
    assert str(out) in text and fix in text and "choose another folder" in text
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


class HalfThenFull:
    """A file object that writes half of what it is given, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_halfway_keeps_the_old_file_whole(tmp_path, index, monkeypatch):
    out = tmp_path / "enc.json"
    encodings = simple_encodings(index)
    write_overrides(out, encodings, {"input": "activation"})
    before = out.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: HalfThenFull(real_fdopen(fd, mode)))
    bigger = {"input": compute_encoding(-5, 5, 16)}
    with pytest.raises(QInspectError) as err:
        write_overrides(out, bigger, {"input": "activation"})
    text = one_line(err)
    assert "No space left on device" in text and "previous file is unchanged" in text and "disk is full" in text
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["enc.json"]  # no temp file left


def test_disk_full_during_external_data_export_keeps_both_old_files(tmp_path, monkeypatch):
    index = load_model(small_cnn(channels=16))  # tensors over 1 KB go to the data file
    out = tmp_path / "q.onnx"
    encodings = derive_encodings(index, {}, PrecisionPlan())  # weights and biases: real data to write
    export_qdq(index, encodings, out, external_data=True)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(old) == {"q.onnx", "q.onnx.data"}
    from qinspect.core.io import qdq

    real_write = qdq._write_data

    def write_half(model, data_path, *args, **kwargs):
        real_write(model, data_path, *args, **kwargs)
        with open(data_path, "r+b") as f:
            f.truncate(os.path.getsize(data_path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(qdq, "_write_data", write_half)
    with pytest.raises(QInspectError) as err:
        export_qdq(index, encodings, out, external_data=True)
    assert "disk is full" in one_line(err)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old
    monkeypatch.undo()

    # The model file cannot be replaced after the new data file went in: the old data comes back.
    real_replace = os.replace
    calls = []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr("qinspect.core.io.qdq.os.replace", fail_second)
    with pytest.raises(QInspectError, match="previous file is unchanged"):
        export_qdq(index, {**encodings, "input": compute_encoding(-1, 1, 8)}, out, external_data=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old
    (y,) = run(out, {"input": np.ones((1, 3, 8, 8), np.float32)})
    assert y.shape == (1, 5)


def test_float32_extremes_of_both_signs_raise_no_warning_and_export(tmp_path):
    import warnings

    bias = np.array([3.4e38, -3.4e38, 0.0, 0.0], np.float32)
    nodes = [helper.make_node("Add", ["x", "bias"], ["s"], name="add"), helper.make_node("Neg", ["s"], ["y"], name="neg")]
    model = finish(helper.make_graph(nodes, "g", [vi("x", F, ["N", 4])], [vi("y", F, ["N", 4])],
                                     [numpy_helper.from_array(bias, "bias")]))
    index = load_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in the statistics or the encodings
        result = calibrate(index, open_data("random:4", index.inputs))
        enc = derive_encodings(index, result.stats, PrecisionPlan())
    s = result.stats["s"]
    assert s.min == pytest.approx(-3.4e38) and s.max == pytest.approx(3.4e38) and s.counts.sum() == 16
    assert np.isfinite(enc["s"].scale[0]) and {d.name for d in result.diagnostics} >= {"s", "bias"}
    export_qdq(index, enc, tmp_path / "q.onnx")
    (y,) = run(tmp_path / "q.onnx", {"x": np.ones((1, 4), np.float32)})
    assert np.all(np.isfinite(y)) and y[0, 0] < -1e38 and y[0, 1] > 1e38
