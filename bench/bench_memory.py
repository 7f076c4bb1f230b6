"""Peak memory of calibration against the number of samples (design section 7: under 10% growth
from 64 to 1024 samples). Each run is its own process, so peaks do not mix.

    python bench/bench_memory.py [--samples 64 1024] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_cnn(path: Path, width: int = 32, size: int = 64) -> None:
    """A narrow ResNet-like stack of Conv+Relu at `size`x`size`: activations dominate memory."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, cin = [], [], "input", 3
    for i in range(6):
        w = (rng.standard_normal((width, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(np.zeros(width, np.float32), f"conv{i}.bias")]
        nodes += [
            helper.make_node("Conv", [prev, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev, cin = f"r{i}", width
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["out"], name="gap"))
    graph = helper.make_graph(
        nodes, "bench_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", width, 1, 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, path)


def child(model: str, samples: int, batch: int) -> None:
    from qinspect.core.calibrate import calibrate
    from qinspect.core.data import open_data
    from qinspect.core.model import load_model

    index = load_model(model)
    data = open_data(f"random:{samples}", index.inputs)
    started = time.perf_counter()
    result = calibrate(index, data, batch_size=batch)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"samples": samples, "seconds": seconds, "peak_mib": peak_kib / 1024, "tensors": len(result.stats)}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "cnn.onnx"
        build_cnn(model)
        rows = []
        for n in args.samples:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(model), str(n), str(args.batch_size)],
                check=True, capture_output=True, text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{'samples':>8} {'seconds':>8} {'peak MiB':>9} {'peak vs first':>14} {'s/sample vs first':>18}")
    for r in rows:
        print(
            f"{r['samples']:>8} {r['seconds']:>8.2f} {r['peak_mib']:>9.1f} {r['peak_mib'] / base['peak_mib']:>14.3f}"
            f" {(r['seconds'] / r['samples']) / (base['seconds'] / base['samples']):>18.3f}"
        )
    growth = rows[-1]["peak_mib"] / base["peak_mib"] - 1
    print(f"peak memory growth {base['samples']} -> {rows[-1]['samples']} samples: {growth:+.1%} (target < +10%)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
