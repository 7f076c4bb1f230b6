import os

# GUI tests run without a display; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


import pytest


@pytest.fixture
def messages(monkeypatch):
    """Collect user-facing messages instead of showing dialogs (a modal dialog would hang a test)."""
    from qinspect.gui import messages as module

    seen: list[tuple[str, str, str]] = []
    monkeypatch.setattr(module, "handler", lambda level, title, text: seen.append((level, title, text)))
    return seen


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Each test starts from default QSettings (recent files etc.) in its own folder."""
    monkeypatch.setenv("QINSPECT_CONFIG_DIR", str(tmp_path / "config"))
