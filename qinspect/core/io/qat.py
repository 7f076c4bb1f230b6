"""What a quantization-aware training run starts from, in one folder: the float model as the target
runs it (BatchNormalization folded, PTQ steps applied), its encodings as a 1.0.0 file that
aimet-onnx's `load_encodings_to_sim` takes in its default strict mode (no int32 bias encodings the
converter derives, nor the float ones QNN's float rule gives: AIMET's default configuration keeps
bias quantizers off and refuses them; `qat_plan.json` still lists them; a bias the user edited is
kept and needs them on), and `qat_plan.json`, the precision plan in words a
training script can follow: each tensor's dtype and bitwidth, which stay float, and which encodings
are *frozen* (a range or an encoding the user fixed, or one the model already had: load them with
`allow_overwrite=False`, or `requires_grad=False` when learning ranges).

What the run ends with comes back as a second configuration (`qat_result_files` finds the model and
its encodings in the folder the run saved them to): `qinspect diff MODEL --a ENC.json --b
QAT_ENC.json --b-model QAT_MODEL.onnx` (and the window opens either).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..plan import _fixed_by_user
from .files import atomic_write
from .overrides import file_encodings, quantizer_args, write_overrides
from .qdq import save_model

PLAN_FILE = "qat_plan.json"


def qat_plan(index, encodings: dict, plan) -> dict:
    """The plan as `qat_plan.json` holds it."""
    tensors, frozen, floats = {}, [], []
    for name, enc in encodings.items():
        target = index.targets.get(name)
        if target is None or enc is None:
            continue
        fixed = _fixed_by_user(index, plan, name)
        tensors[name] = {"kind": target.kind, "dtype": enc.dtype, "bw": enc.bw, "frozen": fixed}
        if fixed:
            frozen.append(name)
        if enc.is_float:
            floats.append(name)
    return {"format": "qinspect-qat-start", "schema_version": 1, "target": plan.target,
            "model": "model.onnx", "encodings": "encodings.json",
            "frozen": frozen, "float": floats, "tensors": tensors}


def write_qat_start(folder, index, encodings: dict, plan, *, protect=()) -> list[Path]:
    """Write model.onnx, encodings.json (1.0.0, biases included) and qat_plan.json into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    protect = [p for p in (index.path, *protect) if p]
    model = save_model(index, folder / "model.onnx", protect=protect)
    written = file_encodings(index, encodings, target=plan.target, bias_encodings=False, version="1.0.0")
    edited = {n for n, e in plan.edits.items() if not e.is_empty()}
    # a bias a rule made float is for the converter; AIMET's sim keeps biases float with its quantizer off
    written = {n: e for n, e in written.items() if index.targets[n].kind != "bias" or n in edited}
    kinds = {n: index.targets[n].kind for n in written}
    enc = write_overrides(folder / "encodings.json", written, kinds, "1.0.0", quantizer_args(plan.defaults),
                          protect=protect, target=plan.target)
    doc = qat_plan(index, encodings, plan)
    plan_file = atomic_write(folder / PLAN_FILE, json.dumps(doc, indent=1) + "\n", protect=protect)
    return [model, enc, plan_file]


def qat_result_files(folder) -> tuple[Path, Path]:
    """The fine-tuned model and its encodings in the folder a QAT run saved them to: one ONNX model
    and one encodings file (.json or AIMET's .encodings; `qat_plan.json` is not one). Raises
    QInspectError naming the folder, what it holds, and the fix when that is not exactly one each."""
    from ..errors import QInspectError

    folder = Path(folder)
    if not folder.is_dir():
        raise QInspectError(f"{folder}: not a folder; choose the folder the QAT run saved its model and encodings to")
    models = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".onnx" and p.is_file())
    encodings = sorted(p for p in folder.iterdir() if p.is_file() and p.name != PLAN_FILE
                       and p.suffix.lower() in (".json", ".encodings"))
    fix = "or compare with Compare > B model… and the encodings file"
    if len(models) != 1:
        found = ", ".join(p.name for p in models) or "none"
        raise QInspectError(f"{folder}: needs one .onnx model, holds {found}; keep only the fine-tuned one, {fix}")
    if len(encodings) != 1:
        found = ", ".join(p.name for p in encodings) or "none"
        raise QInspectError(f"{folder}: needs one encodings file (.json or .encodings), holds {found}; keep only "
                            f"the fine-tuned run's, {fix}")
    return models[0], encodings[0]
