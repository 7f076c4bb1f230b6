"""`qinspect export` and `qinspect compare` end to end on the bundled example."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qinspect.cli import main

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MODEL = str(RESOURCES / "digits_cnn.onnx")
CALIB = str(RESOURCES / "digits_calib.npz")
TEST = str(RESOURCES / "digits_test.npz")


@pytest.fixture(scope="module")
def encodings(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "enc.json"
    assert main(["calibrate", MODEL, "--data", CALIB, "-o", str(out), "-q"]) == 0
    return out


def test_export_writes_a_runnable_qdq_model(encodings, tmp_path, capsys):
    before = Path(MODEL).read_bytes()
    qdq, ort_json = tmp_path / "q.onnx", tmp_path / "ort.json"
    assert main(["export", MODEL, "--encodings", str(encodings), "--qdq", str(qdq), "--ort-overrides", str(ort_json)]) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "opset 13" in err
    # how the onnxruntime overrides go to quantize_static, with its documented keyword arguments
    assert "quantize_static(model_in, model_out" in err and "nodes_to_exclude=[]" in err
    assert f"read_ort_overrides('{ort_json}')" in err
    with np.load(TEST) as f:
        x, y = f["input"], f["labels"]
    (logits,) = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})
    assert (logits.argmax(1) == y).mean() > 0.97
    assert json.loads(ort_json.read_text())["TensorQuantOverrides"]["input"][0]["quant_type"] == "QUInt8"
    assert Path(MODEL).read_bytes() == before


def test_export_16bit_encodings_go_to_opset_21(tmp_path):
    enc = tmp_path / "enc16.json"
    assert main(["calibrate", MODEL, "--data", CALIB, "-o", str(enc), "--act-bw", "16", "--format", "1.0.0", "-q"]) == 0
    qdq = tmp_path / "q16.onnx"
    assert main(["export", MODEL, "--encodings", str(enc), "--qdq", str(qdq), "-q"]) == 0
    model = onnx.load(qdq)
    assert model.opset_import[0].version == 21 and model.ir_version == 10


def test_compare_json_and_html(encodings, tmp_path, capsys):
    report = tmp_path / "r.html"
    assert main(["compare", MODEL, "--encodings", str(encodings), "--data", TEST, "--json", "-q", "-o", str(report)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["samples"] == 297
    assert doc["accuracy"]["float"] == pytest.approx(0.9832, abs=1e-4)
    assert abs(doc["accuracy"]["quantized"] - doc["accuracy"]["float"]) <= 0.005
    (out,) = doc["outputs"]
    assert out["name"] == "logits" and 30 < out["sqnr_db"] < 60
    names = [t["name"] for t in doc["tensors"]]
    assert {"input", "conv1.weight", "fc2.bias"} <= set(names)
    sqnrs = [t["sqnr_db"] for t in doc["tensors"] if t["sqnr_db"] is not None]
    assert sqnrs == sorted(sqnrs)
    assert "<svg" in report.read_text()


def test_compare_text_summary(encodings, capsys):
    assert main(["compare", MODEL, "--encodings", str(encodings), "--data", TEST, "--samples", "50", "-q", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "accuracy: float" in out and "output logits: SQNR" in out and "worst 3 of 16 tensors" in out


@pytest.mark.parametrize("args, needle", [
    (["compare", MODEL, "--encodings", "{enc}", "--data", TEST, "--sensitivity", "--sensitivity-samples", "0"],
     "--sensitivity-samples"),
    (["export", MODEL, "--encodings", "{enc}", "--qdq", MODEL], "refusing to overwrite"),
    (["export", MODEL, "--encodings", "{enc}"], "nothing to export"),
    (["export", MODEL, "--encodings", "missing.json", "--qdq", "{tmp}/q.onnx"], "missing.json"),
    (["compare", MODEL, "--encodings", "{enc}", "--data", "{tmp}/nothing.npy"], "nothing.npy"),
    (["compare", MODEL, "--encodings", "{enc}", "--data", TEST, "--samples", "0"], "--samples"),
])
def test_bad_input_exits_2_with_one_line(encodings, tmp_path, capsys, args, needle):
    before = Path(MODEL).read_bytes()
    args = [a.format(enc=encodings, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert Path(MODEL).read_bytes() == before


def test_export_and_compare_import_no_qt(encodings, tmp_path):
    code = (
        "import sys; from qinspect.cli import main; "
        f"assert main(['export', {MODEL!r}, '--encodings', {str(encodings)!r}, '--qdq', {str(tmp_path / 'q.onnx')!r}, '-q']) == 0; "
        f"assert main(['compare', {MODEL!r}, '--encodings', {str(encodings)!r}, '--data', 'random:4', '-q']) == 0; "
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph', 'qinspect.gui'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
