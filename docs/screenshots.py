"""Regenerate the README screenshots offscreen: python docs/screenshots.py"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from qinspect.gui import create_main_window, messages  # noqa: E402
from qinspect.gui.main_window import EXAMPLE_DATA  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"


def settle(ms: int = 200) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait_for(signal, ms: int = 60_000) -> None:
    loop = QEventLoop()
    signal.connect(lambda *args: loop.quit())
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    messages.handler = lambda level, title, text: print(f"{level}: {title}: {text}", file=sys.stderr)
    messages.answerer = lambda title, text, choices: "Discard"  # closing asks about unsaved work
    window = create_main_window()
    window.resize(1500, 900)
    window.show()
    window.calibrate(str(EXAMPLE_DATA))
    wait_for(window.calibrationFinished)
    wait_for(window.errorUpdated)
    OUT.mkdir(exist_ok=True)
    window.table.select(["fc1_relu_out"])
    settle()
    window.grab().save(str(OUT / "main_window.png"))
    window.sensitivity.run()
    wait_for(window.sensitivity.runFinished)
    window._show_dock(window.sensitivity_dock)
    settle()
    window.grab().save(str(OUT / "sensitivity.png"))
    window.table.select(["conv2.weight"])
    settle()
    window.grab().save(str(OUT / "weights_per_channel.png"))
    window.close()
    app.processEvents()
    print(f"wrote screenshots to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
