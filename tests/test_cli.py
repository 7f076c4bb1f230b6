"""`qinspect calibrate` end to end, checked against statistics computed independently here."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qinspect.cli import main
from qinspect.core.quant.encoding import compute_encoding
from tests.models import small_cnn

ACTIVATIONS = ["input", "relu1_out", "conv2_out", "sig_out", "logits"]


@pytest.fixture
def cnn(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save_model(small_cnn(), path)
    rng = np.random.default_rng(7)
    data = tmp_path / "data.npy"
    np.save(data, (rng.standard_normal((20, 3, 8, 8)) * 1.5).astype(np.float32))
    return path, data


def true_ranges(model_path, data_path):
    """Min/max of every activation, from onnxruntime directly with all tensors exposed."""
    model = onnx.load(model_path)
    for name in ACTIVATIONS[1:-1]:
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(data_path)
    outs = session.run(ACTIVATIONS[1:], {"input": x})
    ranges = {"input": (x.min(), x.max())}
    ranges.update({n: (o.min(), o.max()) for n, o in zip(ACTIVATIONS[1:], outs)})
    return ranges


def test_calibrate_writes_0_6_1_with_true_ranges(cnn, tmp_path, capsys):
    model, data = cnn
    out = tmp_path / "enc.json"
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(out), "--batch-size", "3"]) == 0
    doc = json.loads(out.read_text())
    assert doc["version"] == "0.6.1"
    acts = doc["activation_encodings"]
    assert set(acts) == set(ACTIVATIONS)
    for name, (lo, hi) in true_ranges(model, data).items():
        if name == "sig_out":  # the default target (qnn-htp) fixes Sigmoid outputs at [0, 1]
            lo, hi = 0.0, 1.0
        expected = compute_encoding(float(lo), float(hi), 8)
        (entry,) = acts[name]
        assert entry["min"] == pytest.approx(expected.min[0], rel=1e-6), name
        assert entry["max"] == pytest.approx(expected.max[0], rel=1e-6), name
        assert entry["offset"] == expected.offset[0], name
    weights = onnx.load(model).graph.initializer
    for w in weights:
        if w.name in ("conv1.weight", "conv2.weight"):
            entries = doc["param_encodings"][w.name]
            assert len(entries) == w.dims[0]
            assert all(e["is_symmetric"] == "True" and e["offset"] == -128 for e in entries)
    assert "wrote" in capsys.readouterr().err


def test_calibrate_options_and_formats(cnn, tmp_path):
    model, data = cnn
    out = tmp_path / "enc.json"
    args = ["calibrate", str(model), "--data", str(data), "-o", str(out), "--format", "1.0.0",
            "--act-bw", "16", "--no-per-channel", "--scheme", "percentile", "--percentile", "99.9", "--samples", "8", "-q"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    acts = {e["name"]: e for e in doc["activation_encodings"]}
    assert acts["input"]["bw"] == 16
    params = {e["name"]: e for e in doc["param_encodings"]}
    assert params["conv1.weight"]["enc_type"] == "PER_TENSOR"


def test_user_overrides_are_applied(cnn, tmp_path):
    model, data = cnn
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"activation_encodings": {"conv2_out": [{"bitwidth": 16, "dtype": "float"}]}, "param_encodings": {}}))
    out = tmp_path / "enc.json"
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(out), "--overrides", str(user), "-q"]) == 0
    doc = json.loads(out.read_text())
    assert doc["activation_encodings"]["conv2_out"] == [{"bitwidth": 16, "dtype": "float"}]


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda d: d / "missing.onnx", "missing.onnx"),
        (lambda d: (d / "bad.onnx").write_bytes(b"\x00garbage") and d / "bad.onnx", "bad.onnx"),
    ],
)
def test_bad_model_exits_2(cnn, tmp_path, capsys, setup, needle):
    _, data = cnn
    model = setup(tmp_path)
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "o.json").exists()


def test_wrong_shape_data_exits_2(cnn, tmp_path, capsys):
    model, _ = cnn
    data = tmp_path / "wrong.npy"
    np.save(data, np.zeros((4, 3, 9, 9), np.float32))
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "input" in err and "8" in err


def test_overrides_naming_missing_tensors_exit_2(cnn, tmp_path, capsys):
    model, data = cnn
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"activation_encodings": {"ghost": [{"bitwidth": 16, "dtype": "float"}]}, "param_encodings": {}}))
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(tmp_path / "o.json"), "--overrides", str(user)]) == 2
    assert "ghost" in capsys.readouterr().err


def test_refuses_to_overwrite_model(cnn, capsys):
    model, data = cnn
    before = model.read_bytes()
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(model), "-q"]) == 2
    assert model.read_bytes() == before


def test_subcommands_import_no_qt(cnn, tmp_path):
    model, data = cnn
    code = (
        "import sys; from qinspect.cli import main; "
        f"rc = main(['calibrate', {str(model)!r}, '--data', 'random:2', '-o', {str(tmp_path / 'r.json')!r}, '-q']); "
        "assert rc == 0, rc; "
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph', 'qinspect.gui'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("exact", [False, True])
def test_exact_histograms_option(tmp_path, exact):
    """By default a large activation's histogram comes from a subsample of each batch (min/max exact);
    --exact-histograms bins every value. The session file records which."""
    from onnx import TensorProto, numpy_helper

    from qinspect.core.io.session import load_session
    from tests.models import finish

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 64, 64])], [w])
    model = tmp_path / "conv.onnx"
    onnx.save_model(finish(graph), model)
    args = ["calibrate", str(model), "--data", "random:16", "-o", str(tmp_path / "e.json"), "-q",
            "--session", str(tmp_path / "s.qinspect")] + (["--exact-histograms"] if exact else [])
    assert main(args) == 0
    y = load_session(tmp_path / "s.qinspect").stats["y"]
    assert y.count == 16 * 8 * 64 * 64
    assert y.sampled is not exact
    assert y.counts.sum() == pytest.approx(y.count)
