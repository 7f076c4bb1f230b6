"""Mixed precision to a target from the command line: `calibrate --target-sqnr` writes the cheapest
plan found that meets it, and the exported QDQ model, run in onnxruntime with graph optimisations
off (the simulation's reference), confirms it. The model: a YOLOv8-style detector head (bench/
models.py, three strided convs, decoupled head, DFL softmax, anchor grid) that all-int8 misses."""
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench.models import detector
from qinspect.cli import main

SAMPLES = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("target")
    model = folder / "det.onnx"
    onnx.save(detector(width=8, size=320, classes=5, neck=False), model)
    x = np.random.default_rng(1).random((SAMPLES, 3, 320, 320), dtype=np.float32)
    np.savez(folder / "data.npz", input=x)
    return folder, model, folder / "data.npz", x


def output_sqnr(model_path, x, reference: dict) -> float:
    """-10 log10(mean over outputs of noise / signal), as qinspect measures it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))
    ratios = [float(((got[k] - v) ** 2).sum() / (v ** 2).sum()) for k, v in reference.items()]
    return -10 * np.log10(np.mean(ratios))


def printed(text: str, label: str) -> tuple[float, float]:
    m = re.search(rf"{label}\s+output SQNR\s+(-?[\d.]+) dB.*?cost ([\d.]+)", text)
    assert m, text
    return float(m.group(1)), float(m.group(2))


def test_target_sqnr_is_met_cheaper_than_all_16_bit_and_the_export_confirms_it(files, tmp_path, capsys):
    folder, model, data, x = files
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = dict(zip(["boxes", "scores"], session.run(["boxes", "scores"], {"input": x})))
    target = 40.0
    enc = tmp_path / "enc.json"
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(enc), "--target-sqnr", str(target),
                 "--target-samples", str(SAMPLES), "-q"]) == 0
    err = capsys.readouterr().err
    all8, cost8 = printed(err, "all int8")
    all16, cost16 = printed(err, "all int16")
    chosen, cost = printed(err, "chosen")
    assert all8 < target - 3 and all16 > target  # all-8-bit misses it; the ladder's end does not
    assert chosen >= target and cost < cost16
    qdq = tmp_path / "q.onnx"
    assert main(["export", str(model), "--encodings", str(enc), "--qdq", str(qdq), "-q"]) == 0
    runtime = output_sqnr(qdq, x, reference)
    print(f"\ndetector head, --target-sqnr {target}: all int8 {all8:.1f} dB (cost {cost8:.2f}), all int16 "
          f"{all16:.1f} dB (cost {cost16:.2f}), chosen {chosen:.1f} dB at cost {cost:.2f}; exported QDQ in "
          f"onnxruntime (no optimisations) {runtime:.1f} dB")
    assert runtime >= target - 0.5


def test_a_target_the_candidates_cannot_meet_names_what_limits_it(files, tmp_path, capsys):
    folder, model, data, x = files
    enc = tmp_path / "enc.json"
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(enc), "--target-sqnr", "150",
                 "--target-samples", "8", "-q"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach output SQNR >= 150 dB" in err and "what limits it:" in err
    assert "float32 would give +" in err and "add float16 or float32 to --candidates" in err
    assert not enc.exists()


@pytest.mark.parametrize("args, needle", [
    (["--candidates", "int8"], "give two or more"),
    (["--candidates", "int8,int12"], "int12 unknown"),
    (["--max-accuracy-drop", "1"], "needs labels"),
    (["--candidates", "int4,int8"], "--candidates: candidate int4: input: int4 activations do not run on qnn-htp"),
])
def test_bad_target_options_exit_2(files, tmp_path, capsys, args, needle):
    folder, model, data, x = files
    target = [] if "--max-accuracy-drop" in args else ["--target-sqnr", "30"]
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(tmp_path / "e.json"), "-q",
                 "--target-samples", "4"] + target + args) == 2
    assert needle in capsys.readouterr().err


def test_max_accuracy_drop_on_labelled_data(tmp_path, capsys):
    """The MobileNet-style example with per-tensor weights: all int8 is useless (a depthwise channel
    hundreds of times wider than the rest); the search moves what it must to int16."""
    from qinspect.gui.file_actions import EXAMPLE_DATA, EXAMPLE_MODEL

    model = EXAMPLE_MODEL.with_name("digits_mobile.onnx")
    enc, qdq = tmp_path / "enc.json", tmp_path / "q.onnx"
    assert main(["calibrate", str(model), "--data", str(EXAMPLE_DATA), "-o", str(enc), "--no-per-channel",
                 "--max-accuracy-drop", "1", "--target-samples", "200", "-q"]) == 0
    err = capsys.readouterr().err
    float_top1 = float(re.search(r"float\s+top-1 ([\d.]+)%", err).group(1))
    all8 = float(re.search(r"all int8 .*?top-1 ([\d.]+)%", err).group(1))
    chosen = float(re.search(r"chosen .*?top-1 ([\d.]+)%", err).group(1))
    _, cost16 = printed(err, "all int16")
    _, cost = printed(err, "chosen")
    assert all8 < float_top1 - 50 and chosen >= float_top1 - 1 and cost < cost16
    assert main(["export", str(model), "--encodings", str(enc), "--qdq", str(qdq), "-q"]) == 0
    data = np.load(EXAMPLE_DATA)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": data["input"]})[0]
    runtime = 100 * float((logits.argmax(1) == data["labels"]).mean())
    print(f"\nmobile example, per-tensor weights, --max-accuracy-drop 1: float {float_top1:.1f}%, all int8 {all8:.1f}%, "
          f"chosen {chosen:.1f}% at cost {cost:.2f} (all int16 {cost16:.2f}); exported QDQ in onnxruntime {runtime:.1f}%")
    assert runtime >= float_top1 - 1.5
