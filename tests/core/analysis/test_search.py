"""Mixed precision search: a monotone Pareto front whose points apply as one undoable edit each."""
from pathlib import Path

import numpy as np
import pytest

from qinspect.core.calib.calibrate import calibrate
from qinspect.core.commands import CommandStack, SetEdits
from qinspect.core.analysis.cost import plan_cost
from qinspect.core.calib.data import open_data
from qinspect.core.errors import Cancelled
from qinspect.core.graph.model import load_model
from qinspect.core.plan import PrecisionPlan
from qinspect.core.project import Project
from qinspect.core.analysis.search import pareto_search
from qinspect.core.analysis.sensitivity import OutputEvaluator
from tests.core.analysis.test_sensitivity import Recorder, outlier_mlp

RESOURCES = Path(__file__).resolve().parents[3] / "resources"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    index = load_model(outlier_mlp())
    x = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    np.save(folder / "x.npy", x)
    data = open_data(str(folder / "x.npy"), index.inputs)
    return index, data, calibrate(index, data).stats


def test_front_is_monotone_and_each_point_applies_as_one_undoable_edit(mlp):
    index, data, stats = mlp
    project = Project(index)
    project.set_stats(stats)
    stack = CommandStack(project)
    original = dict(project.encodings)
    start_cost = plan_cost(index, original)
    points = pareto_search(index, stats, project.plan, data)
    assert len(points) >= 3
    costs = [p.cost for p in points]
    sqnrs = [p.output_sqnr for p in points]
    assert costs[0] == 1.0 and points[0].changes == {} and points[0].label == "all int8"
    assert all(b > a for a, b in zip(costs, costs[1:])), costs        # cost up
    assert all(b > a for a, b in zip(sqnrs, sqnrs[1:])), sqnrs        # error down
    # guided by sensitivity: the outlier layer is the first promotion, and it is a big one
    assert points[1].precisions["fc2"] != "int8" and sqnrs[1] > sqnrs[0] + 15
    assert all(lv == "int8" for g, lv in points[1].precisions.items() if g != "fc2")
    ev = OutputEvaluator(index, data, 16)
    try:
        for p in points[1:]:
            stack.push(SetEdits(p.changes, p.label))
            assert stack.undo_label == p.label
            sqnr, _ = ev.evaluate(project.encodings)
            assert sqnr == pytest.approx(p.output_sqnr, abs=1e-9)
            cost = plan_cost(index, project.encodings)
            assert cost.bit_ops / start_cost.bit_ops == pytest.approx(p.cost)
            assert cost.param_bytes == pytest.approx(p.param_bytes)
            stack.undo()
            assert project.encodings == original and not project.plan.edits
    finally:
        ev.close()


def test_max_steps_candidates_and_cancel(mlp):
    index, data, stats = mlp
    points = pareto_search(index, stats, PrecisionPlan(), data, candidates=("int16", "int8"), max_steps=1, samples=8)
    assert len(points) == 2 and points[1].precisions["fc2"] == "int16"
    assert set(points[1].changes) == {"fc2.weight", "relu2"}  # the bias stays int32, no edit needed
    assert points[1].label == "int8 + int16: fc2"
    with pytest.raises(ValueError, match="candidate"):
        pareto_search(index, stats, PrecisionPlan(), data, candidates=("int8", "bf16"))
    with pytest.raises(Cancelled):
        pareto_search(index, stats, PrecisionPlan(), data, progress=Recorder(cancel_after=4))


def test_search_starts_from_the_cheapest_plan_of_an_edited_plan(mlp):
    """A plan with 16-bit tensors: the search's first point puts them back to int8, relative to it."""
    index, data, stats = mlp
    plan = PrecisionPlan()
    plan.set("fc1.weight", bw=16)
    points = pareto_search(index, stats, plan, data, max_steps=2, samples=8)
    assert points[0].changes == {"fc1.weight": {"dtype": "int", "bw": 8, "encoding": None}}
    assert points[0].cost == 1.0


def test_example_front_with_accuracy():
    index = load_model(str(RESOURCES / "digits_cnn.onnx"))
    data = open_data(str(RESOURCES / "digits_calib.npz"), index.inputs)
    stats = calibrate(index, data).stats
    points = pareto_search(index, stats, PrecisionPlan(), data)
    assert len(points) >= 3 and all(p.accuracy is not None for p in points)
    assert [p.cost for p in points] == sorted(p.cost for p in points)
    assert points[-1].output_sqnr > points[0].output_sqnr + 10
