import numpy as np
import pytest
from onnx import TensorProto, helper

from qinspect.core.calib.calibrate import calibrate, plan_groups
from qinspect.core.calib.data import open_data
from qinspect.core.errors import Cancelled, DataError
from qinspect.core.graph.model import load_model
from tests.models import finish, small_cnn
from tests.helpers import Recorder




@pytest.fixture
def setup(tmp_path):
    index = load_model(small_cnn())
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return index, open_data(str(tmp_path / "x.npy"), index.inputs), x


def test_stats_cover_every_activation_and_weight(setup):
    index, data, x = setup
    progress = Recorder()
    result = calibrate(index, data, batch_size=4, progress=progress)
    assert set(index.activations()) <= set(result.stats)
    assert set(index.weights()) | set(index.biases()) <= set(result.stats)
    assert result.stats["input"].min == pytest.approx(x.min())
    assert result.stats["input"].count == x.size
    assert progress.calls[0] == (0, 10) and progress.calls[-1] == (10, 10)
    assert result.samples == 10 and result.passes == 1


def test_groups_give_the_same_stats_as_one_pass(setup):
    index, data, _ = setup
    one = calibrate(index, data, batch_size=4)
    many = calibrate(index, data, batch_size=4, group_bytes=1)
    assert many.passes == len(plan_groups(index, [n for n in index.activations() if n != "input"], 4, 1)) > 1
    for name, s in one.stats.items():
        assert (many.stats[name].min, many.stats[name].max, many.stats[name].count) == (s.min, s.max, s.count)
        np.testing.assert_array_equal(many.stats[name].counts, s.counts)


def test_cancel_raises_between_batches(setup):
    index, data, _ = setup
    with pytest.raises(Cancelled):
        calibrate(index, data, batch_size=1, progress=Recorder(cancel_after=3))


def test_nan_and_inf_activations_are_counted_not_ranged(tmp_path):
    # log(x) of x <= 0 gives NaN and -Inf inside the model.
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["y"], name="log"), helper.make_node("Abs", ["y"], ["z"], name="abs")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
    )
    index = load_model(finish(graph))
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0, 0.0, -1.0]] * 3, np.float32))
    result = calibrate(index, open_data(str(tmp_path / "x.npy"), index.inputs))
    y = result.stats["y"]
    assert y.nan_count == 3 and y.neginf_count == 3
    assert np.isfinite([y.min, y.max]).all() and y.max == pytest.approx(np.log(2.0))


def test_runtime_failure_names_the_data(tmp_path):
    # Declared [N, 4] but Reshape to 3 columns fails at run time for every batch.
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="r"), helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
        initializer=[shape],
    )
    index = load_model(finish(graph))
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    with pytest.raises(DataError, match="x.npy"):
        calibrate(index, open_data(str(tmp_path / "x.npy"), index.inputs))


def test_all_zero_and_one_element_tensors(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "zero"], ["y"], name="mul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])],
    )
    index = load_model(finish(graph))
    result = calibrate(index, open_data("random:3", index.inputs))
    y = result.stats["y"]
    assert y.min == 0 and y.max == 0 and y.count == 3
    from qinspect.core.plan import PrecisionPlan, derive_encodings

    enc = derive_encodings(index, result.stats, PrecisionPlan())["y"]
    assert enc.scale[0] > 0 and enc.offset == (0,)
