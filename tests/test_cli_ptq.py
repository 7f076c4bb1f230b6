"""`qinspect calibrate --ptq`: the steps in a fixed order, the order printed, and files that give in
onnxruntime what qinspect measured."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qinspect.cli import main
from qinspect.core.io.session import load_session
from qinspect.core.project import Project
from qinspect.gui.file_actions import EXAMPLE_DATA, EXAMPLE_MODEL

TEST_DATA = EXAMPLE_MODEL.parent / "digits_test.npz"


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(ref**2) / np.mean((ref - got) ** 2)))


def logits(path, x) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # default options, as users run it
    return session.run(["logits"], {"input": x})[0]


def test_ptq_steps_run_in_order_and_the_exported_model_keeps_their_gain(tmp_path, capsys):
    enc, out, qdq, session = (tmp_path / n for n in ("enc.json", "float.onnx", "q.onnx", "s.qinspect"))
    base = ["calibrate", str(EXAMPLE_MODEL), "--data", str(EXAMPLE_DATA), "--param-bw", "4", "--target", "ort-cpu"]
    plain = tmp_path / "plain.json"
    assert main(base + ["-o", str(plain), "-q"]) == 0
    assert main(base + ["-o", str(enc), "--ptq", "adaround,cle", "--adaround-iterations", "300",
                        "--model-out", str(out), "--session", str(session)]) == 0
    err = capsys.readouterr().err
    assert "PTQ steps, in this order: cle -> adaround" in err
    assert "cross-layer equalization in" in err and "AdaRound in" in err
    # the float model holds the learned weights, on the grids the encodings file freezes
    doc = json.loads(enc.read_text())
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    conv2 = doc["param_encodings"]["conv2.weight"]
    scale = np.array([e["scale"] for e in conv2]).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(weights["conv2.weight"] / scale, np.round(weights["conv2.weight"] / scale), atol=1e-3)
    # a QDQ model made from those two files, run in onnxruntime, against the user's original float model
    assert main(["export", str(out), "--encodings", str(enc), "--qdq", str(qdq), "--target", "ort-cpu", "-q"]) == 0
    nearest_qdq = tmp_path / "nearest.onnx"
    assert main(["export", str(EXAMPLE_MODEL), "--encodings", str(plain), "--qdq", str(nearest_qdq),
                 "--target", "ort-cpu", "-q"]) == 0
    x = np.load(TEST_DATA)["input"]
    ref = logits(EXAMPLE_MODEL, x)
    nearest, learned = sqnr(ref, logits(nearest_qdq, x)), sqnr(ref, logits(qdq, x))
    print(f"\nW4A8 from the command line, exported QDQ in onnxruntime vs the original float model: "
          f"nearest {nearest:.1f} dB, CLE + AdaRound {learned:.1f} dB")
    assert learned > nearest + 5
    # the session reopens with its steps
    assert [s["step"] for s in load_session(session).steps] == ["cle", "adaround"]
    assert [r.step for r in Project.from_session(session).steps] == ["cle", "adaround"]


@pytest.mark.parametrize("args, needle", [
    (["--ptq", "cle,warp"], "unknown PTQ step warp"),
    (["--adaround-iterations", "10"], "--adaround-iterations and --ptq-samples go with --ptq"),
    (["--ptq", "adaround", "--ptq-samples", "0"], "--ptq-samples must be at least 1"),
])
def test_bad_ptq_options_exit_2(tmp_path, capsys, args, needle):
    code = main(["calibrate", str(EXAMPLE_MODEL), "--data", str(EXAMPLE_DATA), "-o", str(tmp_path / "e.json")] + args)
    assert code == 2
    assert needle in capsys.readouterr().err
