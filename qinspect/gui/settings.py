"""Persistent settings (recent files). QINSPECT_CONFIG_DIR overrides the folder, which tests use
so that every test starts from the defaults."""
from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

MAX_RECENT = 10


def settings() -> QSettings:
    folder = os.environ.get("QINSPECT_CONFIG_DIR") or QStandardPaths.writableLocation(QStandardPaths.AppConfigLocation)
    return QSettings(str(Path(folder or ".") / "qinspect.ini"), QSettings.IniFormat)


def recent_files() -> list[str]:
    value = settings().value("recentFiles", [])
    if isinstance(value, str):  # QSettings returns a lone string for a one-item list
        value = [value]
    return [v for v in value or [] if v]


def add_recent_file(path: str) -> list[str]:
    path = str(Path(path).resolve())
    files = [path] + [f for f in recent_files() if f != path]
    files = files[:MAX_RECENT]
    s = settings()
    s.setValue("recentFiles", files)
    s.sync()
    return files
