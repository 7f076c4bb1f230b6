"""Screenshots of the window as a person sees it, in a real X server, at two screen sizes.

    python docs/screenshots.py              # starts Xvfb (and openbox, for title bars) per size
    python docs/screenshots.py --install    # first installs them: apt-get install xvfb openbox
    python docs/screenshots.py --sizes 1366x768 --model other.onnx   # another model: its graph only

For each size it starts `Xvfb` on a free display with that screen, a window manager if one is
installed (the title bar shows the unsaved-changes marker; the window is maximised as on a
desktop), and runs this file again inside it (`--inside`), which walks the workflow and grabs
the whole X screen (dialogs and tooltips included) into `docs/img/<W>x<H>/`:

    01_open          the bundled example, just opened
    02_calibrate     the calibration dialog
    03_relu_spike    a Relu's output after calibration: the spike at zero, labelled
    04_edit          conv2's weights at 4 bits: the table, the status bar and the title follow
    05_sensitivity   the sensitivity ranking
    06_graph         the graph, a node found by name
    07_per_tensor    the MobileNet-style example with per-tensor 8-bit weights: a depthwise layer's
                     channel ranges hundreds of times apart, the output SQNR gone
    08_ptq_dialog    Analysis > PTQ steps > Cross-layer equalization: its options
    09_cle           after it: the same layer, before (dashed) and after, the status bar's change
    10_target        the bundled example again, Mixed precision: the front over int8/int16, then
                     "Meet target" at 45 dB (all int8 gives 37.6): the plan applied, the outcome
    11_compare       the Compare panel: that plan (A) against an all-int8 file with its own model (B,
                     as a QAT run leaves them: conv2's weights moved), differences marked, conv2's
                     weights drawn: A's and B's values overlaid with both ranges

With --model, only `01_open` and `06_graph` of that model are taken (no data needed), into
`docs/img/<W>x<H>-<model name>/`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "img"
SIZES = ("1366x768", "1920x1080")
RELU_OUTPUT = "conv1_relu_out"  # the bundled example's first Relu
MOBILE = "digits_mobile.onnx"  # beside the example; depthwise layers for CLE
DEPTHWISE_WEIGHT = "dw2.weight"
TARGET_SQNR = 45.0  # dB: the example's all-int8 plan gives 37.6
MOVED_WEIGHT = "conv2.weight"  # what the "fine-tuned" B model of 11_compare changes


# --- outside: X servers ---------------------------------------------------------------------------
def install() -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "xvfb", "openbox"], check=True)


def free_display() -> int:
    n = 90
    while Path(f"/tmp/.X11-unix/X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists():
        n += 1
    return n


def run_in_xvfb(size: str, extra: list[str]) -> int:
    if shutil.which("Xvfb") is None:
        print("Xvfb is not installed: run with --install (apt-get install xvfb openbox)", file=sys.stderr)
        return 2
    n = free_display()
    w, h = size.split("x")
    server = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", f"{w}x{h}x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, DISPLAY=f":{n}", QT_QPA_PLATFORM="xcb")
    wm = None
    try:
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{n}").exists():
            if time.monotonic() > deadline or server.poll() is not None:
                print(f"Xvfb :{n} did not start", file=sys.stderr)
                return 2
            time.sleep(0.1)
        if shutil.which("openbox"):
            wm = subprocess.Popen(["openbox"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        else:
            print("no window manager (openbox): no title bars in the pictures", file=sys.stderr)
        return subprocess.run([sys.executable, __file__, "--inside", size] + extra, env=env, timeout=600).returncode
    finally:
        for proc in (wm, server):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


# --- inside: the walk -----------------------------------------------------------------------------
def walk(size: str, model: str | None) -> int:
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from qinspect.gui import create_main_window, messages
    from qinspect.gui.calibration_dialog import CalibrationDialog

    def settle(ms: int = 500) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def wait_for(signal, ms: int = 120_000) -> None:
        loop = QEventLoop()
        signal.connect(lambda *args: loop.quit())
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    app = QApplication.instance() or QApplication(sys.argv[:1])
    problems = []
    messages.handler = lambda level, title, text: (problems.append(f"{level}: {title}: {text}"),
                                                   print(problems[-1], file=sys.stderr))
    messages.answerer = lambda title, text, choices: "Discard"  # closing asks about unsaved work
    folder = OUT / (size if model is None else f"{size}-{Path(model).stem}")
    folder.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        settle()
        app.primaryScreen().grabWindow(0).save(str(folder / f"{name}.png"))
        print(f"  {folder.relative_to(OUT.parent.parent)}/{name}.png")

    window = create_main_window()
    if model is not None and not window.open_model(model):
        return 1
    window.showMaximized()
    settle(1500)
    shot("01_open")
    if model is None:
        window.actionCalibrate.trigger()
        dialog = next(d for d in window.findChildren(CalibrationDialog) if d.isVisible())
        shot("02_calibrate")
        dialog.accept()
        wait_for(window.calibrationFinished)
        wait_for(window.errorUpdated)
        window.table.select([RELU_OUTPUT])
        shot("03_relu_spike")
        window.table.select(["conv2.weight"])
        combo = window.editor.bitwidth_combo
        combo.setCurrentIndex(combo.findData(4))  # as a user picks 4 in the Bitwidth box
        wait_for(window.errorUpdated)
        shot("04_edit")
        window.actionRunSensitivity.trigger()
        wait_for(window.sensitivity.runFinished)
        shot("05_sensitivity")
    window._show_dock(window.graph_dock)
    panel = window.graph_panel
    panel.find_edit.setText("conv2" if model is None else panel.view.node_names()[len(panel.view.node_names()) // 2])
    panel.find_edit.returnPressed.emit()
    shot("06_graph")
    if model is None:
        ptq_walk(window, shot, wait_for)
        target_walk(window, shot, wait_for)
    window.close()
    app.processEvents()
    return 1 if any(p.startswith("error") for p in problems) else 0


def ptq_walk(window, shot, wait_for) -> None:
    from qinspect.gui.file_actions import EXAMPLE_DATA, EXAMPLE_MODEL
    from qinspect.gui.ptq_dialog import PtqDialog

    window.open_model(str(EXAMPLE_MODEL.with_name(MOBILE)))
    window.calibrate(str(EXAMPLE_DATA))
    wait_for(window.calibrationFinished)
    wait_for(window.errorUpdated)
    weights = window.project.index.weights()
    window.table.select(weights)
    window.editor.per_channel_check.click()  # as a user unticks Per channel for all weights
    wait_for(window.errorUpdated)
    window.table.select([DEPTHWISE_WEIGHT])
    shot("07_per_tensor")
    window.ptq_actions["cle"].trigger()
    dialog = next(d for d in window.findChildren(PtqDialog) if d.isVisible())
    shot("08_ptq_dialog")
    dialog.accept()
    wait_for(window.ptqFinished)
    wait_for(window.errorUpdated)
    window.table.select([DEPTHWISE_WEIGHT])
    shot("09_cle")


def target_walk(window, shot, wait_for) -> None:
    from qinspect.gui.file_actions import EXAMPLE_DATA, EXAMPLE_MODEL

    window.open_model(str(EXAMPLE_MODEL))
    window.calibrate(str(EXAMPLE_DATA))
    wait_for(window.calibrationFinished)
    wait_for(window.errorUpdated)
    panel = window.pareto
    window._show_dock(window.pareto_dock)
    for name, check in panel.candidate_checks.items():
        check.setChecked(name in ("int8", "int16"))
    window.actionParetoSearch.trigger()
    wait_for(panel.searchFinished)
    panel.target_row.sqnr_spin.setValue(TARGET_SQNR)
    panel.target_row.meet_button.click()
    wait_for(panel.targetFinished)
    wait_for(window.errorUpdated)
    window.table.select(["conv2_relu_out"])  # one of the activations it moved to 16 bits
    shot("10_target")
    # Compare: the mixed plan (A) against all-int8 (B) on a "fine-tuned" model, both written here as
    # a QAT run would leave them: B's conv2 weights moved, its encodings calibrated on them.
    import tempfile

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from qinspect.cli import main as cli

    folder = Path(tempfile.mkdtemp(prefix="qinspect-shot-"))
    b_model, b = folder / "finetuned.onnx", folder / "all_int8.json"
    model = onnx.load(str(EXAMPLE_MODEL))
    for t in model.graph.initializer:
        if t.name == MOVED_WEIGHT:
            w = numpy_helper.to_array(t)
            noise = np.random.default_rng(0).normal(0.0, 0.1 * float(w.std()), w.shape)
            t.CopyFrom(numpy_helper.from_array((1.2 * w + noise).astype(w.dtype), t.name))
    onnx.save(model, str(b_model))
    cli(["calibrate", str(b_model), "--data", str(EXAMPLE_DATA), "-o", str(b), "-q"])
    window._show_dock(window.compare_dock)
    window.compare.compare_with(b, model=b_model)
    wait_for(window.compare.compared)
    window.compare.select(MOVED_WEIGHT)
    shot("11_compare")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="apt-get install xvfb openbox first")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma separated WxH (default %(default)s)")
    parser.add_argument("--model", help="an ONNX model to open instead of the example (graph only)")
    parser.add_argument("--inside", metavar="WxH", help=argparse.SUPPRESS)  # already in the X server
    args = parser.parse_args(argv)
    model = str(Path(args.model).resolve()) if args.model else None
    if args.inside:
        return walk(args.inside, model)
    if args.install:
        install()
    extra = ["--model", model] if model else []
    for size in args.sizes.split(","):
        print(f"{size}:")
        code = run_in_xvfb(size.strip(), extra)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
