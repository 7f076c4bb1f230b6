"""Peak memory of calibration against the number of samples (design section 7: under 10% growth
from 64 to 1024 samples), each run in its own process. A shortcut into the full suite (`run.py`):
qinspect's calibration and plain onnxruntime with the same tensors exposed, on the ResNet-style model.

    python bench/bench_memory.py [--samples 64 1024] [--batch-size 8] [--models resnet] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", nargs="+", default=["64", "1024"])
    p.add_argument("--batch-size", default="8")
    p.add_argument("--models", nargs="+", default=["resnet"])
    p.add_argument("--json")
    args = p.parse_args()
    argv = ["--samples", *args.samples, "--batch-size", args.batch_size, "--models", *args.models,
            "--methods", "exposed", "qinspect", "--accuracy-samples", "0"]
    return run.main(argv + (["--json", args.json] if args.json else []))


if __name__ == "__main__":
    sys.exit(main())
