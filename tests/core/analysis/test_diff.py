"""Two configurations side by side: the diff's numbers against a hand computation, and the CLI."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from qinspect.cli import main
from qinspect.core.analysis.diff import diff
from qinspect.core.calib.data import open_data
from qinspect.core.graph.model import load_model
from qinspect.core.quant.encoding import Encoding
from tests.models import finish

RESOURCES = Path(__file__).resolve().parents[3] / "resources"


def _relu_model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return load_model(finish(graph))


def _hand_sqnr(y, scale, offset):
    q = (np.clip(np.round(y / scale) + (-offset), 0, 255) - (-offset)) * scale  # uint8, zero point -offset
    return 10 * math.log10(float((y.astype(np.float64) ** 2).sum()) / float(((q - y) ** 2).sum()))


def test_the_diffs_numbers_are_the_hand_computed_ones(tmp_path):
    index = _relu_model()
    x = np.random.default_rng(0).uniform(-1, 3, (32, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = open_data(str(tmp_path / "x.npy"), index.inputs)
    a = {"y": Encoding(bw=8, scale=(0.01,), offset=(0,))}   # [0, 2.55]: clips the top
    b = {"y": Encoding(bw=8, scale=(0.02,), offset=(0,))}   # [0, 5.10]: coarser, no clipping
    result = diff(index, a, b, data)
    y = np.maximum(x, 0)
    want_a, want_b = _hand_sqnr(y, 0.01, 0), _hand_sqnr(y, 0.02, 0)
    got_a, got_b = result.outputs["y"]
    assert got_a == pytest.approx(want_a, rel=1e-5) and got_b == pytest.approx(want_b, rel=1e-5)
    row = next(t for t in result.tensors if t.name == "y")
    assert (row.a.scale, row.b.scale) == (0.01, 0.02)
    assert (row.a.min, row.a.max) == (0.0, pytest.approx(2.55)) and row.b.max == pytest.approx(5.10)
    assert row.changed == ["range", "scale", "sqnr"] and row.sqnr_change == pytest.approx(want_b - want_a, rel=1e-5)
    assert result.samples == 32
    d = result.to_dict()
    assert d["outputs"][0]["a_sqnr_db"] == pytest.approx(want_a, rel=1e-5)


def test_cli_diff_of_a_file_with_itself_finds_nothing_and_json_names_the_changes(tmp_path, capsys):
    model = str(RESOURCES / "digits_cnn.onnx")
    calib, test = str(RESOURCES / "digits_calib.npz"), str(RESOURCES / "digits_test.npz")
    assert main(["calibrate", model, "--data", calib, "-o", str(tmp_path / "a.json"), "-q"]) == 0
    assert main(["calibrate", model, "--data", calib, "-o", str(tmp_path / "b.json"), "--act-bw", "16", "-q"]) == 0
    capsys.readouterr()
    assert main(["diff", model, "--a", str(tmp_path / "a.json"), "--b", str(tmp_path / "a.json"), "--data", test,
                 "--samples", "32", "-q"]) == 0
    assert "0 of 16 tensors differ" in capsys.readouterr().out
    assert main(["diff", model, "--a", str(tmp_path / "a.json"), "--b", str(tmp_path / "b.json"), "--data", test,
                 "--samples", "32", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {t["name"]: t for t in doc["tensors"]}
    assert rows["conv1_relu_out"]["a"]["bw"] == 8 and rows["conv1_relu_out"]["b"]["bw"] == 16
    assert "encoding" in rows["conv1_relu_out"]["changed"]
    assert rows["conv1.weight"]["changed"] == []  # weights are 8-bit in both
    assert doc["outputs"][0]["b_sqnr_db"] > doc["outputs"][0]["a_sqnr_db"]
    assert doc["accuracy"]["float"] is not None


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    """`qinspect diff ... | head`: the closed pipe ends the command quietly, not with a traceback."""
    import subprocess
    import sys

    model = str(RESOURCES / "digits_cnn.onnx")
    assert main(["calibrate", model, "--data", str(RESOURCES / "digits_calib.npz"), "-o", str(tmp_path / "a.json"),
                 "-q"]) == 0
    cmd = [sys.executable, "-m", "qinspect.cli", "diff", model, "--a", str(tmp_path / "a.json"), "--b",
           str(tmp_path / "a.json"), "--data", str(RESOURCES / "digits_test.npz"), "--samples", "8", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command prints (it loads and compares first)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err
