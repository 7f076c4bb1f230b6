"""PTQ step run times on the bench models (issue 14), offline.

For each model: calibrate on `random:N` data (the baseline: one float pass over the samples,
measured in the same run), then cross-layer equalization (with its recalibration), and SeqMSE,
AdaRound and bias correction each from the equalized state. Each time is printed with its ratio to
the calibration. A ResNet-18-sized model (11.7 M parameters, 224x224) checks AdaRound's target:
"minutes on 2 cores" (here: under 10 minutes).

    python bench/bench_ptq.py [--quick] [--samples 32] [--iterations 1000] [--no-resnet18] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, so qinspect imports without installing

import models  # noqa: E402  (bench/models.py)
from qinspect.core.calib.calibrate import calibrate  # noqa: E402
from qinspect.core.calib.data import open_data  # noqa: E402
from qinspect.core.plan import PrecisionPlan  # noqa: E402
from qinspect.core.ptq.prepare import prepare_model  # noqa: E402
from qinspect.core.steps import ORDER, run_step  # noqa: E402

ADAROUND_TARGET_S = 600.0  # "minutes on 2 cores" for a ResNet-18-sized model
RESNET18 = {"widths": [64, 128, 256, 512], "blocks": [2, 2, 2, 2], "size": 224}


def measure(info: dict, samples: int, iterations: int) -> dict:
    index = prepare_model(info["path"])
    data = open_data(f"random:{samples}", index.inputs)
    started = time.perf_counter()
    result = calibrate(index, data)
    baseline = time.perf_counter() - started
    plan = PrecisionPlan()

    def recalibrate(new, progress):
        r = calibrate(new, data, progress=progress)
        return r.stats, r.samples

    row = {"model": info["model"], "parameters": info["parameters"], "samples": samples, "calibration_s": baseline}
    cle = run_step("cle", index, plan, result.stats, data, recalibrate=recalibrate)
    row["cle_s"] = cle.record.seconds
    index, stats = cle.index, cle.stats
    for step in ORDER[1:]:
        options = {"samples": samples}
        if step == "adaround":
            options["iterations"] = iterations
        outcome = run_step(step, index, plan, stats, data, options=options, done=["cle"])
        row[f"{step}_s"] = outcome.record.seconds
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the smaller bench models")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--iterations", type=int, default=1000, help="AdaRound iterations per layer")
    p.add_argument("--no-resnet18", action="store_true", help="skip the ResNet-18-sized model (the longest part)")
    p.add_argument("--models", nargs="+", help="only these (resnet, mobilenet, transformer, resnet18)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    from run import MODEL_OPTIONS  # bench/run.py's sizes, so the benchmarks use the same models

    sizes = dict(MODEL_OPTIONS["quick" if args.quick else "full"])
    if not args.no_resnet18:
        sizes["resnet18"] = RESNET18
    if args.models:
        sizes = {k: v for k, v in sizes.items() if k in args.models}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in sizes.items():
            kind = "resnet" if name == "resnet18" else name
            info = models.build(kind, str(Path(tmp) / f"{name}.onnx"), **options)
            info["model"] = name
            row = measure(info, args.samples, args.iterations)
            rows.append(row)
            base = row["calibration_s"]
            steps = ", ".join(f"{s} {row[f'{s}_s']:.1f} s ({row[f'{s}_s'] / base:.1f}x)" for s in ORDER)
            print(f"{name:>12} {row['parameters'] / 1e6:5.1f} M params, {args.samples} samples: calibration "
                  f"{base:.1f} s; {steps}", flush=True)
    print()
    failed = 0
    for row in rows:
        if row["model"] == "resnet18":
            value = row["adaround_s"]
            failed += value >= ADAROUND_TARGET_S
            print(f"{'PASS' if value < ADAROUND_TARGET_S else 'FAIL'} AdaRound on the ResNet-18-sized model "
                  f"({args.iterations} iterations per layer, {args.samples} samples): {value:.0f} s "
                  f"(target < {ADAROUND_TARGET_S:.0f} s, {value / ADAROUND_TARGET_S:.2f}x of it)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
