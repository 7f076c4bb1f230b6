"""UI latency benchmark (design section 7), offscreen.

For each model: the time from opening the file to a usable window, the longest stall of the UI
thread during calibration (a 10 ms QTimer; the largest gap between its ticks), and the time to
redraw the histogram after a selection change. Checks: stall < 100 ms, redraw < 50 ms,
usable < 2 s.

    python bench/bench_ui.py [--samples 64] [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, so qinspect imports without installing

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

import models  # noqa: E402  (bench/models.py)
from qinspect.gui import create_main_window, messages  # noqa: E402

TARGETS = {"stall_ms": 100.0, "redraw_ms": 50.0, "usable_s": 2.0}


def chain(path: str, nodes: int = 1000, channels: int = 8, size: int = 16) -> dict:
    """A plain chain of Conv+Relu pairs: `nodes` nodes, for the "1,000 nodes opens in 2 s" target."""
    rng = np.random.default_rng(0)
    graph_nodes, inits, prev = [], [], "input"
    for i in range(nodes // 2):
        w = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"),
                  numpy_helper.from_array(np.zeros(channels, np.float32), f"conv{i}.bias")]
        graph_nodes += [
            helper.make_node("Conv", [prev, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev = f"r{i}"
    graph = helper.make_graph(
        graph_nodes, "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", channels, size, size])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, path)
    return {"model": f"chain{nodes}", "path": path, "nodes": nodes}


def wait(signal, ms: int) -> tuple:
    loop = QEventLoop()
    got = []
    signal.connect(lambda *args: (got.append(args), loop.quit()))
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    return got[0] if got else None


def measure(info: dict, samples: int) -> dict:
    app = QApplication.instance()
    started = time.perf_counter()
    window = create_main_window(model=info["path"])
    window.show()
    app.processEvents()
    window.table.view.viewport().repaint()
    usable = time.perf_counter() - started

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    began = time.perf_counter()
    window.calibrate(f"random:{samples}", batch_size=8)
    ok = wait(window.calibrationFinished, 600_000)
    calibration = time.perf_counter() - began
    timer.stop()
    stall = float(np.max(np.diff(ticks))) * 1000 if len(ticks) > 1 else float("nan")

    # The live error re-measures in a worker after calibration; let it finish so the redraw
    # numbers are the panel's own, then time first visits and revisits of tensors separately.
    wait(window.errorUpdated, 60_000)
    window.wait_for_jobs(60_000)
    names = window.project.index.activations()[:20] + window.project.index.weights()[:10]
    redraws, first = [], []
    for i, name in enumerate(names * 2):
        t0 = time.perf_counter()
        window.table.select([name])
        window.histogram.repaint()  # a synchronous paint of the panel
        (first if i < len(names) else redraws).append((time.perf_counter() - t0) * 1000)
    window.cancel()
    window.wait_for_jobs(30_000)
    window.close()
    window.deleteLater()
    app.processEvents()
    return {
        "model": info["model"],
        "nodes": len(onnx.load(info["path"], load_external_data=False).graph.node),
        "calibrated": bool(ok and ok[0]),
        "usable_s": usable,
        "calibration_s": calibration,
        "stall_ms": stall,
        "redraw_ms_median": statistics.median(redraws),
        "redraw_ms_max": max(redraws),
        "first_view_ms_median": statistics.median(first),
        "first_view_ms_max": max(first),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="smaller models")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    messages.handler = lambda level, title, text: None  # no dialogs in a benchmark
    messages.answerer = lambda title, text, choices: "Discard"  # nor questions (unsaved work on close)
    sizes = models_options(args.quick)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        infos = [models.build(kind, str(Path(tmp) / f"{kind}.onnx"), **opts) for kind, opts in sizes.items()]
        infos.append(chain(str(Path(tmp) / "chain.onnx"), nodes=1000))
        for info in infos:
            rows.append(measure(info, args.samples))
            r = rows[-1]
            print(f"{r['model']:>12} {r['nodes']:>5} nodes: usable {r['usable_s']:.2f} s, calibration "
                  f"{r['calibration_s']:.1f} s, longest UI stall {r['stall_ms']:.0f} ms, histogram redraw "
                  f"median {r['redraw_ms_median']:.1f} ms / max {r['redraw_ms_max']:.1f} ms (first view of a tensor: "
                  f"median {r['first_view_ms_median']:.1f} / max {r['first_view_ms_max']:.1f} ms)", flush=True)
    print()
    checks = [
        ("longest UI stall during calibration", max(r["stall_ms"] for r in rows), TARGETS["stall_ms"], "ms"),
        ("histogram redraw after selection (max of medians)", max(r["redraw_ms_median"] for r in rows),
         TARGETS["redraw_ms"], "ms"),
        ("histogram redraw after selection (max)", max(r["redraw_ms_max"] for r in rows), TARGETS["redraw_ms"], "ms"),
        ("open to usable window", max(r["usable_s"] for r in rows), TARGETS["usable_s"], "s"),
    ]
    for label, value, target, unit in checks:
        print(f"{'PASS' if value < target else 'FAIL'} {label}: {value:.1f} {unit} (target < {target:g} {unit}, "
              f"{value / target:.2f}x of it)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    app.processEvents()
    return 0


def models_options(quick: bool) -> dict:
    from run import MODEL_OPTIONS  # bench/run.py's sizes, so both benchmarks use the same models

    return MODEL_OPTIONS["quick" if quick else "full"]


if __name__ == "__main__":
    sys.exit(main())
