"""Analysis speed: sensitivity and the mixed-precision search against plain float inference, measured
in the same run.

    python bench/bench_analysis.py [--models detector,transformer] [--samples 4] [--json out.json]

For each model it calibrates on `--samples` random samples, then times:
- the floor: 2 x G plain float passes over the same samples (G = the quantizer groups sensitivity
  measures), from one onnxruntime session with default options, timed as G passes and doubled;
- `sensitivity` (both variants of every group, plus the float and plan runs);
- `pareto_search` to the end of the ladder int8 -> int16 (and how many simulations it ran).
It prints each as seconds and as a ratio to the floor; the check is sensitivity <= 1.0x.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, so qinspect imports without installing

import numpy as np
import onnx
import onnxruntime as ort

import models

MODEL_OPTIONS = {"detector": {"width": 16, "size": 320}, "transformer": {}}
SENSITIVITY_TARGET = 1.0


def _data(index, samples: int, folder: str) -> str:
    rng = np.random.default_rng(0)
    arrays = {}
    for inp in index.inputs:
        shape = [samples] + [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape[1:]]
        arrays[inp.name] = rng.random(shape, dtype=np.float32)
    path = os.path.join(folder, "data.npz")
    np.savez(path, **arrays)
    return path


def measure(kind: str, samples: int, search: bool) -> dict:
    from qinspect.core.analysis.search import pareto_search
    from qinspect.core.analysis.sensitivity import quantizer_groups, sensitivity
    from qinspect.core.calib.calibrate import calibrate
    from qinspect.core.calib.data import open_data
    from qinspect.core.plan import PrecisionPlan, derive_encodings
    from qinspect.core.ptq.prepare import prepare_model

    folder = tempfile.mkdtemp(prefix="qinspect-bench-")
    path = os.path.join(folder, kind + ".onnx")
    onnx.save(models.BUILDERS[kind](**MODEL_OPTIONS[kind]), path)
    index = prepare_model(path)
    data = _data(index, samples, folder)
    stats = calibrate(index, open_data(data, index.inputs)).stats
    plan = PrecisionPlan()
    encodings = derive_encodings(index, stats, plan)
    groups = quantizer_groups(index)

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(data))
    session.run(None, feeds)  # warm up
    started = time.perf_counter()
    for _ in range(len(groups)):
        session.run(None, feeds)
    floor = 2 * (time.perf_counter() - started)

    started = time.perf_counter()
    sensitivity(index, encodings, open_data(data, index.inputs), samples=samples, batch_size=samples)
    sens = time.perf_counter() - started
    row = {"model": kind, "groups": len(groups), "samples": samples, "floor_s": floor, "sensitivity_s": sens,
           "sensitivity_ratio": sens / floor}
    if search:
        started = time.perf_counter()
        points = pareto_search(index, stats, plan, open_data(data, index.inputs), candidates=("int8", "int16"),
                               samples=samples, batch_size=samples)
        row.update(search_s=time.perf_counter() - started, search_ratio=(time.perf_counter() - started) / floor,
                   search_points=len(points))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="detector,transformer")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--no-search", action="store_true", help="time sensitivity only")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows, ok = [], True
    for kind in args.models.split(","):
        row = measure(kind, args.samples, not args.no_search)
        rows.append(row)
        line = (f"{kind:>12}: {row['groups']} groups, {args.samples} samples: 2 x G float passes {row['floor_s']:.1f} s; "
                f"sensitivity {row['sensitivity_s']:.1f} s ({row['sensitivity_ratio']:.2f}x)")
        if "search_s" in row:
            line += f"; search int8/int16 {row['search_s']:.1f} s ({row['search_ratio']:.2f}x, {row['search_points']} points)"
        print(line, flush=True)
        passed = row["sensitivity_ratio"] <= SENSITIVITY_TARGET
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'} {kind}: sensitivity {row['sensitivity_ratio']:.2f}x of 2 x G float passes "
              f"(target <= {SENSITIVITY_TARGET:.1f}x)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
