"""PTQ steps in the project: each one undoable, sessions that reopen with them, refusals that say why."""
import numpy as np
import pytest

from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.commands import ApplyStep, CommandStack, EditTensors
from qinspect.core.errors import QInspectError
from qinspect.core.plan import Defaults, PrecisionPlan
from qinspect.core.project import Project
from qinspect.core.ptq.prepare import prepare_model
from qinspect.core.steps import parse_steps, run_step
from qinspect.gui.main_window import EXAMPLE_DATA, EXAMPLE_MODEL


def recalibrate(data):
    def run(index, progress):
        result = calibrate(index, data, progress=progress)
        return result.stats, result.samples
    return run


@pytest.fixture
def project():
    index = prepare_model(str(EXAMPLE_MODEL))
    p = Project(index, PrecisionPlan(Defaults(param_bw=4)))
    data = open_data(str(EXAMPLE_DATA), index.inputs)
    result = calibrate(index, data)
    p.set_stats(result.stats, result.samples, str(EXAMPLE_DATA))
    p.data = data
    return p


def step(project, name, **options):
    return run_step(name, project.index, project.plan, project.stats, project.data, options=options,
                    done=[r.step for r in project.steps], recalibrate=recalibrate(project.data))


def test_parse_steps_orders_and_names_what_is_unknown():
    assert parse_steps("adaround, cle,bias_correction") == ["cle", "adaround", "bias-correction"]
    with pytest.raises(ValueError, match="unknown PTQ step foo"):
        parse_steps("cle,foo")


def test_every_step_is_undone_by_one_undo(project):
    stack = CommandStack(project)
    states = []
    for name, options in (("cle", {}), ("seq-mse", {"samples": 32}), ("adaround", {"samples": 32, "iterations": 100}),
                          ("bias-correction", {"samples": 32})):
        states.append((project.index, dict(project.stats), dict(project.plan.edits), dict(project.encodings)))
        stack.push(ApplyStep(step(project, name, **options)))
        assert project.steps[-1].step == name and stack.undo_label == project.steps[-1].title
    assert project.index.ptq_values  # AdaRound's weights and the corrected biases
    assert any(e.encoding is not None for e in project.plan.edits.values())  # frozen weight encodings
    for index, stats, edits, encodings in reversed(states):
        stack.undo()
        assert project.index is index and project.plan.edits == edits
        assert project.stats.keys() == stats.keys() and all(project.stats[n] is stats[n] for n in stats)
        assert project.encodings == encodings
    assert project.steps == []
    stack.redo()  # redo puts the same result back, without computing it again
    assert project.steps[0].step == "cle"


def test_cle_recomputes_the_statistics_it_changed(project):
    before = dict(project.stats)
    outcome = step(project, "cle")
    assert outcome.stats is not None and outcome.samples == project.samples
    changed = [n for n in before if n in outcome.stats and outcome.stats[n].max != before[n].max]
    assert "conv1_relu_out" in changed  # conv1 -> relu -> conv2 was equalized
    assert any("conv1 -> conv2" in line for line in outcome.record.notes)


def test_a_session_with_steps_reopens_identically(project, tmp_path):
    stack = CommandStack(project)
    stack.push(ApplyStep(step(project, "cle")))
    stack.push(ApplyStep(step(project, "adaround", samples=32, iterations=100)))
    stack.push(ApplyStep(step(project, "bias-correction", samples=32)))
    stack.push(EditTensors(["fc1_relu_out"], bw=16))
    path = project.save_session(tmp_path / "s.qinspect")
    assert (tmp_path / "s.qinspect.model.onnx").is_file() and (tmp_path / "s.qinspect.values.npz").is_file()
    again = Project.from_session(path)
    assert again.index.path == project.index.path  # the user's file, not the sidecar
    assert [r.to_dict() for r in again.steps] == [r.to_dict() for r in project.steps]
    assert again.plan.to_dict() == project.plan.to_dict()
    assert sorted(again.index.ptq_values) == sorted(project.index.ptq_values)
    for name, value in project.index.ptq_values.items():
        np.testing.assert_array_equal(again.index.ptq_values[name], value)
    for name in project.index.weights() + project.index.biases():
        np.testing.assert_array_equal(again.index.initializer(name), project.index.initializer(name))
    assert again.encodings == project.encodings
    assert {n: s.to_dict() for n, s in again.stats.items()} == {n: s.to_dict() for n, s in project.stats.items()}
    # a missing sidecar is a clear error naming it, not a traceback
    (tmp_path / "s.qinspect.values.npz").unlink()
    with pytest.raises(QInspectError, match="s.qinspect.values.npz, which holds its PTQ steps' work, is missing"):
        Project.from_session(path)


def test_refusals_say_what_to_do(project):
    stack = CommandStack(project)
    stack.push(ApplyStep(step(project, "seq-mse", samples=16)))
    with pytest.raises(QInspectError, match="cross-layer equalization changes the weights SeqMSE worked on: undo SeqMSE first"):
        step(project, "cle")
    fresh = Project(prepare_model(str(EXAMPLE_MODEL)))
    with pytest.raises(QInspectError, match="AdaRound learns from the calibration data: calibrate first"):
        run_step("adaround", fresh.index, fresh.plan, fresh.stats, None)
