"""`qinspect diff` with sessions for A and B (two sessions side by side): each side's own encodings, and
its own model when its PTQ steps rewrote it; the same numbers as with the sessions' encodings files."""
import json
from pathlib import Path

import pytest

from qinspect.cli import main

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
MODEL, CALIB, TEST = (str(RESOURCES / n) for n in ("digits_cnn.onnx", "digits_calib.npz", "digits_test.npz"))


def _calibrate(tmp_path, name, *extra):
    enc, session = tmp_path / f"{name}.json", tmp_path / f"{name}.qinspect"
    assert main(["calibrate", MODEL, "--data", CALIB, "-o", str(enc), "--session", str(session), "--format",
                 "1.0.0", "-q", *extra]) == 0
    return enc, session


def _diff(capsys, a, b, *extra):
    capsys.readouterr()
    code = main(["diff", MODEL, "--a", str(a), "--b", str(b), "--data", TEST, "--samples", "32", "--json", "-q",
                 *extra])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else out.err)


def test_two_sessions_side_by_side_equal_their_files(tmp_path, capsys):
    enc_a, ses_a = _calibrate(tmp_path, "a")
    enc_b, ses_b = _calibrate(tmp_path, "b", "--act-bw", "16")
    code, sessions = _diff(capsys, ses_a, ses_b)
    assert code == 0
    code, files = _diff(capsys, enc_a, enc_b)
    assert code == 0
    rows = {t["name"]: t for t in sessions["tensors"]}
    assert rows["conv1_relu_out"]["a"]["bw"] == 8 and rows["conv1_relu_out"]["b"]["bw"] == 16
    assert sessions["outputs"] == files["outputs"]
    assert sessions["tensors"] == files["tensors"]


def test_a_session_s_ptq_steps_bring_its_own_model(tmp_path, capsys):
    _, ses_a = _calibrate(tmp_path, "a")
    _, ses_b = _calibrate(tmp_path, "cle", "--ptq", "cle")
    code, result = _diff(capsys, ses_a, ses_b)
    assert code == 0
    rows = {t["name"]: t for t in result["tensors"]}
    # CLE rescaled the weights of B's own model: their ranges differ from A's
    assert "range" in rows["conv1.weight"]["changed"] or "scale" in rows["conv1.weight"]["changed"]
    code, err = _diff(capsys, ses_a, ses_b, "--b-model", MODEL)
    assert code == 2 and "leave out --b-model" in err


def test_a_session_of_another_target_or_a_broken_one_is_refused(tmp_path, capsys):
    _, ses_a = _calibrate(tmp_path, "a")
    _, cpu = _calibrate(tmp_path, "cpu", "--target", "ort-cpu")
    code, err = _diff(capsys, ses_a, cpu)
    assert code == 2 and "--target ort-cpu" in err and "cpu.qinspect" in err
    broken = tmp_path / "broken.qinspect"
    broken.write_text("{not json")
    code, err = _diff(capsys, ses_a, broken)
    assert code == 2 and "broken.qinspect" in err and "Traceback" not in err
