"""`qinspect compare --sensitivity`: the ranking as text, JSON and in the HTML report."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from qinspect.cli import main
from tests.core.analysis.test_sensitivity import outlier_mlp

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MODEL = str(RESOURCES / "digits_cnn.onnx")
CALIB = str(RESOURCES / "digits_calib.npz")
TEST = str(RESOURCES / "digits_test.npz")


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_sens")
    model, data, enc = folder / "mlp.onnx", folder / "x.npy", folder / "enc.json"
    onnx.save(outlier_mlp(), model)
    np.save(data, np.random.default_rng(1).standard_normal((40, 16)).astype(np.float32))
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(enc), "-q"]) == 0
    return str(model), str(data), str(enc)


def test_json_ranking_most_sensitive_first(outlier, capsys):
    model, data, enc = outlier
    assert main(["compare", model, "--encodings", enc, "--data", data, "--sensitivity", "--json", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"samples", "accuracy", "outputs", "tensors"} <= set(doc)  # the comparison's keys are unchanged
    ranking = doc["sensitivity"]
    assert [e["name"] for e in ranking][0] == "fc2"
    assert ranking[0]["op_type"] == "Gemm" and ranking[0]["tensors"] == ["fc2.weight", "fc2.bias", "relu2"]
    assert {e["name"] for e in ranking} == {"input", "fc1", "fc2", "fc3"}
    scores = [e["score"] for e in ranking]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(e["only_quantized_sqnr"], float) and isinstance(e["only_float_sqnr"], float) for e in ranking)
    assert ranking[0]["only_float_sqnr"] > doc["sensitivity_info"]["plan_sqnr"] + 15
    assert doc["sensitivity_info"]["samples"] == 16


def test_text_and_html_on_the_example(tmp_path, capsys):
    enc, report = tmp_path / "enc.json", tmp_path / "r.html"
    assert main(["calibrate", MODEL, "--data", CALIB, "-o", str(enc), "-q"]) == 0
    assert main(["compare", MODEL, "--encodings", str(enc), "--data", TEST, "--samples", "40", "--sensitivity",
                 "--sensitivity-samples", "8", "-q", "-o", str(report)]) == 0
    out = capsys.readouterr().out
    assert "output logits: SQNR" in out  # the usual summary first
    lines = out[out.index("sensitivity on 8 samples"):].splitlines()
    rows = [line.split() for line in lines[2:]]
    assert sorted(r[1] for r in rows) == ["conv1", "conv2", "conv3", "fc1", "fc2", "input"]
    assert any(r[1] == "conv1" and r[2] == "Conv" and "conv1.weight," in r for r in rows)
    text = report.read_text()
    assert "<h2>Sensitivity</h2>" in text and "conv2.weight, conv2.bias, conv2_relu_out" in text
    assert text.index("<h2>Sensitivity</h2>") < text.index("<h2>Tensors, worst first</h2>")


def test_without_the_flag_nothing_changes(outlier, capsys):
    model, data, enc = outlier
    assert main(["compare", model, "--encodings", enc, "--data", data, "--json", "-q"]) == 0
    assert "sensitivity" not in json.loads(capsys.readouterr().out)
