"""The runtime check: the exported model in onnxruntime with default session options, next to the simulation."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qinspect.cli import main
from qinspect.core.analysis.compare import compare
from qinspect.core.analysis.runtime import explain
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.plan import PrecisionPlan, derive_encodings
from qinspect.core.ptq.prepare import prepare_model
from qinspect.core.targets.cpu import cpu_flags, u8s8_saturates

ROOT = Path(__file__).resolve().parents[3]
RESOURCES = ROOT / "resources"
QEMU = shutil.which("qemu-x86_64")


def digits(target):
    index = prepare_model(RESOURCES / "digits_cnn.onnx", target)
    stats = calibrate(index, open_data(str(RESOURCES / "digits_calib.npz"), index.inputs), batch_size=64).stats
    encodings = derive_encodings(index, stats, PrecisionPlan(target=target))
    result = compare(index, encodings, open_data(str(RESOURCES / "digits_test.npz"), index.inputs), batch_size=64,
                     runtime=True, target=target)
    return index, encodings, result


def test_ort_cpu_export_does_what_compare_says_on_this_cpu():
    _, _, result = digits("ort-cpu")
    out = result.outputs["logits"]
    rt = result.runtime.outputs["logits"]
    simulated_mse = out.rel_error ** 2
    runtime_mse = 10 ** (-rt / 10)  # relative MSE of the exported model in a default session
    print(f"\ndigits ort-cpu on {result.runtime.cpu}: relative MSE compare {simulated_mse:.3g}, "
          f"onnxruntime default session {runtime_mse:.3g}; SQNR {out.sqnr_db:.2f} vs {rt:.2f} dB")
    assert runtime_mse <= 2 * simulated_mse
    assert abs(out.sqnr_db - rt) <= 1.0 and result.runtime.agrees() and result.runtime.causes == []


def test_default_target_reports_the_gap_and_its_cause_where_the_cpu_saturates():
    index, encodings, result = digits("qnn-htp")
    check = result.runtime
    print("\n" + "\n".join(check.lines()))
    if u8s8_saturates():
        assert not check.agrees() and any(c.startswith("u8s8 saturation") for c in check.causes)
    else:  # VNNI (or not x86): onnxruntime's kernels compute what the simulation says
        assert check.agrees()
    # Whatever this CPU is, the explanation a CPU without VNNI would get names the fix.
    causes = explain(index, encodings, ["CPUExecutionProvider"], flags={"avx2", "fma"})
    assert len(causes) == 1 and "--target ort-cpu" in causes[0] and "conv1.weight" in causes[0]
    assert explain(index, encodings, ["CPUExecutionProvider"], flags={"avx2", "avx512_vnni"}) == []


def test_cpu_features_decide_saturation():
    assert u8s8_saturates({"avx2", "fma"}, "x86_64") is True
    assert u8s8_saturates({"avx2", "avx512bw"}, "x86_64") is True  # AVX-512 without VNNI: vpmaddubsw too
    assert u8s8_saturates({"avx2", "avx_vnni"}, "x86_64") is False
    assert u8s8_saturates({"sse4_2"}, "x86_64") is False  # widening SSE2 kernels on Linux
    assert u8s8_saturates(set(), "aarch64") is False
    flags = cpu_flags()
    assert flags is None or isinstance(flags, set)


def test_compare_runtime_json_has_runtime_sqnr_per_output(tmp_path, capsys):
    enc = tmp_path / "enc.json"
    assert main(["calibrate", str(RESOURCES / "digits_cnn.onnx"), "--data", str(RESOURCES / "digits_calib.npz"),
                 "-o", str(enc), "--target", "ort-cpu", "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", str(RESOURCES / "digits_cnn.onnx"), "--encodings", str(enc), "--data",
                 str(RESOURCES / "digits_test.npz"), "--target", "ort-cpu", "--runtime", "--json", "-q"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    (logits,) = doc["outputs"]
    assert math.isfinite(logits["runtime_sqnr_db"]) and abs(logits["runtime_sqnr_db"] - logits["sqnr_db"]) <= 1.0
    assert doc["runtime"]["agrees"] and doc["runtime"]["target"] == "ort-cpu" and doc["target"] == "ort-cpu"
    assert "runtime: onnxruntime" in captured.err and "default session options" in captured.err


def _under_haswell(args, cwd):
    """qinspect on an emulated AVX2 CPU without VNNI (qemu user mode): what such a machine's onnxruntime does."""
    python = os.path.realpath(sys.executable)  # qemu runs the interpreter itself, not a launcher script
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [QEMU, "-cpu", "Haswell", python, "-m", "qinspect.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None or os.uname().machine != "x86_64", reason="needs qemu-x86_64 (Debian's qemu-user)")
def test_on_a_cpu_without_vnni_ort_cpu_agrees_and_the_default_target_names_the_cause(tmp_path):
    model, calib, test = (str(RESOURCES / n) for n in ("digits_cnn.onnx", "digits_calib.npz", "digits_test.npz"))
    for target in ("ort-cpu", "qnn-htp"):
        enc = str(tmp_path / f"{target}.json")
        assert main(["calibrate", model, "--data", calib, "-o", enc, "--target", target, "-q"]) == 0
        run = _under_haswell(["compare", model, "--encodings", enc, "--data", test, "--target", target,
                              "--runtime", "--json", "-q"], tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
        doc = json.loads(run.stdout)
        check = doc["runtime"]
        (logits,) = doc["outputs"]
        print(f"\nqemu Haswell, {target}: simulated {logits['sqnr_db']:.1f} dB, runtime {logits['runtime_sqnr_db']:.1f} "
              f"dB, cpu {check['cpu']}, causes {check['causes']}")
        assert "without VNNI" in check["cpu"]
        if target == "ort-cpu":
            assert check["agrees"] and abs(logits["runtime_sqnr_db"] - logits["sqnr_db"]) <= 1.0
        else:
            assert not check["agrees"] and check["causes"][0].startswith("u8s8 saturation")
    export = _under_haswell(["export", model, "--encodings", str(tmp_path / "qnn-htp.json"), "--qdq",
                             str(tmp_path / "q.onnx")], tmp_path)
    assert export.returncode == 0 and "warning: 5 8-bit weight(s) use codes beyond +-64" in export.stderr
    assert "this CPU (x86_64 AVX2 without VNNI) is one" in export.stderr
