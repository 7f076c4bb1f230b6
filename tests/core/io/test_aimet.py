"""Our encodings in AIMET's own loader (aimet-onnx), where aimet-onnx is installed: the 1.0.0 file and
the QAT start bundle in the strict loader, the 2.0.0 and 2.1.0 files as AIMET loads its own 2.0.0
export (aimet-onnx 2.42 writes int32 bias entries in 2.0.0 and its strict loader refuses them, its
own file included; with strict=False both load and simulate as we do).

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
strict = sys.argv[4:5] != ["lenient"]
sim = QuantizationSimModel(onnx.load(model), path=tempfile.mkdtemp())  # the default configuration
if not strict:  # what strict mode would say, then the load AIMET's own 2.0.0 export needs
    try:
        load_encodings_to_sim(QuantizationSimModel(onnx.load(model), path=tempfile.mkdtemp()), encodings)
        print("STRICT ok")
    except AssertionError as exc:
        print("STRICT", str(exc).replace("\n", " | "))
try:
    mismatches = load_encodings_to_sim(sim, encodings, strict=strict)
except AssertionError as exc:
    print("MISMATCH", str(exc).replace("\n", " | "))
    sys.exit(1)
if mismatches and strict:
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


@pytest.fixture
def python():
    """The Python with aimet-onnx; the test is skipped without one."""
    found = _aimet_python()
    if found is None:
        pytest.skip("aimet-onnx is not installed (set QINSPECT_AIMET_PYTHON to a Python that has it)")
    return found


def _aimet_sqnr(python, model, enc, *extra) -> tuple[float, str]:
    run = subprocess.run([python, "-c", LOAD, str(model), str(enc), str(RESOURCES / "digits_test.npz"), *extra],
                         capture_output=True, text=True, timeout=600)
    print(run.stdout, run.stderr[-2000:])
    assert run.returncode == 0 and "MISMATCH" not in run.stdout
    return float(run.stdout.split("SQNR")[1]), run.stdout


def _our_sqnr(capsys, model, enc) -> float:
    """qinspect's simulated output SQNR of `enc` on the test data (qinspect compare --json)."""
    capsys.readouterr()
    assert main(["compare", str(model), "--encodings", str(enc), "--data", str(RESOURCES / "digits_test.npz"),
                 "--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out)["outputs"][0]["sqnr_db"]


@pytest.mark.slow
def test_aimet_strict_loader_takes_our_1_0_0_file(python, tmp_path, capsys):
    enc = tmp_path / "digits_1.0.0.json"
    assert main(["calibrate", str(RESOURCES / "digits_cnn.onnx"), "--data", str(RESOURCES / "digits_calib.npz"),
                 "-o", str(enc), "--format", "1.0.0", "-q"]) == 0
    doc = json.loads(enc.read_text())
    assert not [e for e in doc["param_encodings"] if e["name"].endswith(".bias")]  # the converter derives them
    sqnr, _ = _aimet_sqnr(python, RESOURCES / "digits_cnn.onnx", enc)
    ours = _our_sqnr(capsys, RESOURCES / "digits_cnn.onnx", enc)
    print(f"logits SQNR: AIMET's simulation of our file {sqnr:.2f} dB, qinspect's {ours:.2f} dB")
    assert abs(sqnr - ours) < 0.5


@pytest.mark.slow
def test_aimet_strict_loader_takes_the_qat_start_bundle(python, tmp_path, capsys):
    from qinspect.core.calib.calibrate import calibrate
    from qinspect.core.calib.data import open_data
    from qinspect.core.io.qat import write_qat_start
    from qinspect.core.plan import PrecisionPlan, TensorEdit, derive_encodings
    from qinspect.core.ptq.prepare import prepare_model
    index = prepare_model(str(RESOURCES / "digits_cnn.onnx"))
    with open_data(str(RESOURCES / "digits_calib.npz"), index.inputs) as data:
        stats = calibrate(index, data).stats
    plan = PrecisionPlan()
    plan.edits["fc1_relu_out"] = TensorEdit(range=(0.0, 20.0))  # frozen
    write_qat_start(tmp_path / "qat", index, derive_encodings(index, stats, plan), plan)
    sqnr, _ = _aimet_sqnr(python, tmp_path / "qat" / "model.onnx", tmp_path / "qat" / "encodings.json")
    ours = _our_sqnr(capsys, tmp_path / "qat" / "model.onnx", tmp_path / "qat" / "encodings.json")
    print(f"QAT bundle, logits SQNR: AIMET's simulation {sqnr:.2f} dB, qinspect's {ours:.2f} dB")
    assert abs(sqnr - ours) < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.0.0", "2.1.0"])
def test_aimet_loads_our_2_x_files_as_it_loads_its_own(version, python, tmp_path, capsys):
    enc = tmp_path / f"digits_{version}.json"
    assert main(["calibrate", str(RESOURCES / "digits_cnn.onnx"), "--data", str(RESOURCES / "digits_calib.npz"),
                 "-o", str(enc), "--format", version, "-q"]) == 0
    sqnr, out = _aimet_sqnr(python, RESOURCES / "digits_cnn.onnx", enc, "lenient")
    strict = out.split("STRICT")[1].split("SQNR")[0]
    # strict mode objects to the int32 bias entries only, as it does to AIMET's own 2.0.0 export
    complaints = [c.strip() for c in strict.split("|")[1:] if c.strip()]
    assert complaints and all(c.endswith(".bias:") or c.startswith("enabled: False, loaded encoding enabled: True")
                              for c in complaints), complaints
    ours = _our_sqnr(capsys, RESOURCES / "digits_cnn.onnx", enc)
    print(f"{version}, logits SQNR: AIMET's simulation of our file {sqnr:.2f} dB, qinspect's {ours:.2f} dB")
    assert abs(sqnr - ours) < 0.5
