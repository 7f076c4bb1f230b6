"""Hundreds of plot redraws must not kill the interpreter.

PySide6-Essentials 6.12.0 with pyqtgraph 0.13.7/0.14.0 aborts the process ("Fatal Python error:
none_dealloc", inside AxisItem painting) after a few dozen redraws, which is why pyproject pins
PySide6 below 6.12. A fatal abort would take pytest down with it, so the loop runs in a child
process and the test reads its exit status. If the pin is ever lifted, this test says whether
the new version is safe.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REDRAWS = 300

STRESS = r"""
import sys, time
import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QApplication

from qinspect.core.commands import CommandStack, EditTensors
from qinspect.core.graph.model import load_model
from qinspect.core.project import Project
from qinspect.core.quant.stats import TensorStats
from qinspect.gui.histogram import HistogramPanel
from tests.models import small_cnn

redraws = int(sys.argv[1])
app = QApplication([])
rng = np.random.default_rng(0)
project = Project()
project.open_model(load_model(small_cnn()))
project.set_stats({n: TensorStats.of(rng.standard_normal(5000) * 3 ** i)
                   for i, n in enumerate(project.index.activations())}, 5000)
stack = CommandStack(project)
panel = HistogramPanel(project, stack)
panel.resize(800, 600)
panel.show()
# A bare PlotWidget as well: the crash is in pyqtgraph's axes, not in qinspect's panel.
plot = pg.PlotWidget()
plot.resize(600, 400)
plot.show()
curve = plot.plot(stepMode="center")
names = list(project.index.targets)
edges = np.linspace(-1.0, 1.0, 2049)
start = time.perf_counter()
for i in range(redraws):
    # Alternate the panel (every kind of tensor) and the bare plot; new scales every time, so
    # the axes regenerate their tick pictures.
    if i % 2 == 0:
        panel.show_tensor(names[(i // 2) % len(names)])
    else:
        curve.setData(edges * (1 + i % 7), rng.random(2048) * 10.0 ** (i % 5))
    if i % 50 == 0:
        panel.log_check.toggle()
    if i % 60 == 0:
        stack.push(EditTensors(["logits"], bw=8 if i % 120 == 0 else 16))
    app.processEvents()
    if i % 6 == 0:
        panel.grab()
    elif i % 6 == 3:
        plot.grab()
print(f"{redraws} redraws in {time.perf_counter() - start:.1f} s", flush=True)
"""


def test_hundreds_of_redraws_do_not_abort():
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONFAULTHANDLER="1")
    result = subprocess.run(
        [sys.executable, "-c", STRESS, str(REDRAWS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(result.stdout.strip())
    detail = f"exit status {result.returncode}; stderr tail:\n{result.stderr[-3000:]}"
    assert "Fatal Python error" not in result.stderr, detail
    assert result.returncode == 0, detail
    assert f"{REDRAWS} redraws in" in result.stdout, detail
