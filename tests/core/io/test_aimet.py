"""Our 1.0.0 encodings in AIMET's own strict loader (aimet-onnx), where aimet-onnx is installed.

aimet-onnx needs torch, so it is not a test dependency: the test runs with the Python that
QINSPECT_AIMET_PYTHON names (a virtual environment with aimet-onnx), or in this one when it has
aimet_onnx, and is skipped otherwise.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qinspect.cli import main

RESOURCES = Path(__file__).resolve().parents[3] / "resources"

LOAD = r"""
import logging, sys, tempfile
import numpy as np, onnx, onnxruntime as ort
logging.disable(logging.CRITICAL)
from aimet_onnx.quantsim import QuantizationSimModel, load_encodings_to_sim
model, encodings, data = sys.argv[1:4]
sim = QuantizationSimModel(onnx.load(model), path=tempfile.mkdtemp())  # the default configuration
try:
    mismatches = load_encodings_to_sim(sim, encodings, strict=True)
except AssertionError as exc:
    print("MISMATCH", str(exc).replace("\n", " | "))
    sys.exit(1)
if mismatches:
    print("MISMATCH", mismatches)
    sys.exit(1)
x = np.load(data)["input"].astype(np.float32)
ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
out = sim.session.run(None, {"input": x})[0]
print("SQNR", 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((out - ref.astype(np.float64)) ** 2)))
"""


def _aimet_python() -> str | None:
    named = os.environ.get("QINSPECT_AIMET_PYTHON")
    if named:
        return named
    return sys.executable if importlib.util.find_spec("aimet_onnx") else None


@pytest.mark.slow
def test_aimet_strict_loader_takes_our_1_0_0_file(tmp_path, capsys):
    python = _aimet_python()
    if python is None:
        pytest.skip("aimet-onnx is not installed (set QINSPECT_AIMET_PYTHON to a Python that has it)")
    enc = tmp_path / "digits_1.0.0.json"
    assert main(["calibrate", str(RESOURCES / "digits_cnn.onnx"), "--data", str(RESOURCES / "digits_calib.npz"),
                 "-o", str(enc), "--format", "1.0.0", "-q"]) == 0
    doc = json.loads(enc.read_text())
    assert not [e for e in doc["param_encodings"] if e["name"].endswith(".bias")]  # the converter derives them
    run = subprocess.run([python, "-c", LOAD, str(RESOURCES / "digits_cnn.onnx"), str(enc),
                          str(RESOURCES / "digits_test.npz")], capture_output=True, text=True, timeout=600)
    print(run.stdout, run.stderr[-2000:])
    assert run.returncode == 0 and "MISMATCH" not in run.stdout
    sqnr = float(run.stdout.split("SQNR")[1])
    capsys.readouterr()
    assert main(["compare", str(RESOURCES / "digits_cnn.onnx"), "--encodings", str(enc), "--data",
                 str(RESOURCES / "digits_test.npz"), "--json", "-q"]) == 0
    ours = json.loads(capsys.readouterr().out)["outputs"][0]["sqnr_db"]
    print(f"logits SQNR: AIMET's simulation of our file {sqnr:.2f} dB, qinspect's {ours:.2f} dB")
    assert abs(sqnr - ours) < 0.5
