"""The bundled example model and data (regenerate with `python resources/make_example.py`)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MODEL = RESOURCES / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def test_split():
    with np.load(RESOURCES / "digits_test.npz") as f:
        return f["input"], f["labels"]


def test_model_is_valid_and_loadable_by_onnxruntime():
    model = onnx.load(MODEL)
    onnx.checker.check_model(model)
    assert model.ir_version == 8
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 13)}
    assert model.doc_string
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert MODEL.stat().st_size < 200_000


def test_model_accuracy_on_test_split(test_split):
    x, y = test_split
    assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
    assert y.dtype == np.int64 and y.shape == (len(x),)
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": x})
    assert logits.shape == (len(x), 10)
    assert np.isfinite(logits).all()
    accuracy = float((logits.argmax(1) == y).mean())
    assert accuracy >= 0.95, accuracy


def test_model_accepts_any_batch_size(test_split):
    x, _ = test_split
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    full = sess.run(["logits"], {"input": x[:5]})[0]
    one = sess.run(["logits"], {"input": x[:1]})[0]
    assert one.shape == (1, 10)
    np.testing.assert_allclose(one, full[:1], rtol=1e-5, atol=1e-5)


def test_calibration_split():
    with np.load(RESOURCES / "digits_calib.npz") as f:
        assert set(f.files) == {"input", "labels"}
        x, y = f["input"], f["labels"]
    assert x.dtype == np.float32 and x.shape == (200, 1, 8, 8)
    assert y.dtype == np.int64 and y.shape == (200,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) <= set(range(10))
    assert len(np.unique(y)) == 10  # stratified: every class is represented


def test_mobile_example_runs_and_is_accurate(test_split):
    """digits_mobile.onnx (regenerate with `python resources/make_mobile.py`): MobileNet-style, for CLE."""
    path = RESOURCES / "digits_mobile.onnx"
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert model.ir_version == 8
    assert path.stat().st_size < 200_000
    nodes = model.graph.node
    assert all(n.name for n in nodes)
    assert sum(n.op_type == "BatchNormalization" for n in nodes) >= 1
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    depthwise = [n for n in nodes if n.op_type == "Conv"
                 and next((a.i for a in n.attribute if a.name == "group"), 1) == weights[n.input[1]][0] > 1
                 and weights[n.input[1]][1] == 1]
    assert len(depthwise) >= 2, [n.name for n in depthwise]

    x, y = test_split
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": x})
    assert logits.shape == (len(x), 10)
    accuracy = float((logits.argmax(1) == y).mean())
    assert accuracy >= 0.95, accuracy
