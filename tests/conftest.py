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


class _Answers:
    """Answers the window's questions (unsaved changes) without a dialog."""

    def __init__(self):
        self.answer, self.asked = "Discard", []

    def __call__(self, title, text, choices):
        self.asked.append((title, text, choices))
        return self.answer


_ANSWERS = _Answers()


@pytest.fixture(scope="session", autouse=True)
def _no_question_waits():
    """Set for the whole run, never undone: pytest-qt closes windows after function fixtures are torn
    down, and a window with unsaved work asks before it closes (a real dialog would wait forever)."""
    from qinspect.gui import messages as module

    module.answerer = _ANSWERS


@pytest.fixture(autouse=True)
def questions(_no_question_waits):
    """Every question is answered "Discard" unless a test sets `questions.answer`; the questions
    asked are in `questions.asked`."""
    _ANSWERS.answer, _ANSWERS.asked = "Discard", []
    return _ANSWERS


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Each test starts from default QSettings (recent files etc.) in its own folder."""
    monkeypatch.setenv("QINSPECT_CONFIG_DIR", str(tmp_path / "config"))
