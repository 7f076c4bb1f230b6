import pytest

from qinspect.core.commands import CommandStack, EditTensors
from qinspect.core.errors import ModelError
from qinspect.core.plan import derive_encodings
from qinspect.core.project import Project
from tests.helpers import cnn_project


@pytest.fixture
def project(tmp_path):
    return cnn_project(tmp_path, 300, lambda i, n: i + 1)


def test_events_and_incremental_encodings_match_full_derivation(project):
    events = []
    project.subscribe(lambda event, names: events.append((event, names)))
    assert project.encodings["conv2_out"].bw == 8
    project.apply_edit(["conv2_out", "conv2.weight"], {"bw": 16})
    # the edited tensors and the bias that follows their scales, so views refresh all three rows
    assert events == [("plan", ["conv2.bias", "conv2.weight", "conv2_out"])]
    assert project.encodings == derive_encodings(project.index, project.stats, project.plan)
    assert project.encodings["conv2.bias"].scale[0] == pytest.approx(
        project.encoding("pool_out").scale[0] * project.encodings["conv2.weight"].scale[0]
    )


def test_bad_edit_changes_nothing(project):
    before = dict(project.encodings)
    with pytest.raises(ValueError, match="ghost"):
        project.apply_edit(["conv2_out", "ghost"], {"bw": 16})
    with pytest.raises(ValueError, match="bitwidth 5"):
        project.apply_edit(["conv2_out"], {"bw": 5})
    assert project.encodings == before and project.plan.edited() == []


def test_undo_redo(project):
    stack = CommandStack(project)
    original = dict(project.encodings)
    stack.push(EditTensors(["logits"], bw=16))
    stack.push(EditTensors(["logits"], range=(-1.0, 1.0)))
    assert stack.undo_label.startswith("set range")
    stack.undo()
    assert project.encodings["logits"].bw == 16
    stack.undo()
    assert project.encodings == original and not stack.can_undo
    stack.redo()
    stack.redo()
    assert project.plan.edit("logits").range == (-1.0, 1.0)
    stack.push(EditTensors(["input"], dtype="float"))
    assert not stack.can_redo


def test_failed_command_is_not_recorded(project):
    stack = CommandStack(project)
    with pytest.raises(ValueError):
        stack.push(EditTensors(["input"], bw=3))
    assert not stack.can_undo


def test_failed_open_keeps_state(project, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    before = project.index
    with pytest.raises(ModelError):
        project.open_model(str(bad))
    assert project.index is before and project.stats


def test_session_round_trip(project, tmp_path):
    project.apply_edit(["logits"], {"bw": 16})
    project.data_spec = "random:4"
    path = project.save_session(tmp_path / "s.qinspect")
    back = Project.from_session(path)
    assert back.encodings == project.encodings
    assert back.data_spec == "random:4"


def test_size_bytes(project):
    q, f = project.size_bytes()
    assert 0 < q < f
    project.apply_edit(project.index.weights(), {"bw": 16})
    assert project.size_bytes()[0] > q


def test_set_edits_is_one_undoable_step(project):
    from qinspect.core.commands import SetEdits

    stack = CommandStack(project)
    original = dict(project.encodings)
    stack.push(SetEdits({"logits": {"bw": 16}, "input": {"dtype": "float"}}, "import"))
    assert project.encodings["logits"].bw == 16 and project.encodings["input"].is_float
    stack.undo()
    assert project.encodings == original
