"""The engine's fast paths give the numbers of a whole simulation: tails stripped of the reference's
pass-through quantizers with its weights as constants, tails run several at once, and the four-op
fake quantizer."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bench.models import detector
from qinspect.core.analysis import sensitivity as sens
from qinspect.core.analysis.engine import OutputEvaluator
from qinspect.core.analysis.simulate import PARAM, Simulator
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.errors import Cancelled
from qinspect.core.graph.model import load_model
from qinspect.core.plan import PrecisionPlan, derive_encodings
from qinspect.core.quant.encoding import Encoding
from qinspect.core.quant.qparams import onnx_qparams
from tests.helpers import Recorder
from tests.models import finish


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    path = folder / "det.onnx"
    onnx.save(detector(width=8, size=128, classes=3, neck=False), path)
    index = load_model(str(path))
    x = np.random.default_rng(3).random((6, 3, 128, 128), dtype=np.float32)
    np.save(folder / "x.npy", x)
    data = open_data(str(folder / "x.npy"), index.inputs)
    base = sens.complete_encodings(index, derive_encodings(index, calibrate(index, data).stats, PrecisionPlan()))
    return index, data, base


def _variants(index, base):
    groups = [g for g in sens.quantizer_groups(index)
              if any(sens.is_quantizing(index, t, base.get(t)) for t in g.tensors)]
    nothing = sens.QuantGroup("", "", [])
    return groups, nothing


def test_stripped_and_parallel_tails_give_the_whole_simulations_numbers(det):
    index, data, base = det
    groups, nothing = _variants(index, base)
    ev = OutputEvaluator(index, data, 6, batch_size=3)
    whole = OutputEvaluator(index, data, 6, batch_size=3)
    try:
        ev.set_reference("plan", base, specialise=True)
        ev.set_reference("float", *sens._variant_only_quantized(index, base, nothing), specialise=True)
        for variant, ref in ((sens._variant_only_quantized, "float"), (sens._variant_only_float, "plan")):
            got = ev.evaluate_all((variant(index, base, g) for g in groups), ref)
            want = [whole.evaluate(*variant(index, base, g)) for g in groups]
            for g, (a, _), (b, _) in zip(groups, got, want):
                # Constant weights let onnxruntime use other convolution kernels (another summation
                # order), which can move a value across a rounding boundary now and then.
                assert a == pytest.approx(b, abs=0.05), g.name
        stripped = [e for e in ev._segments._stripped.values() if e[2] is not None]  # (token, fixed, tail)
        assert stripped, "no stripped tail was used"
        # a stripped tail reads none of the quantizer parameters it dropped, nor its baked weights
        for _, fixed, (session, names, _) in stripped:
            assert fixed and not (fixed & names)
        # the plan has no pass-through quantizers: what its tails fixed are 8-bit ones made Q/DQ pairs
        assert any(key[1] == "plan" and any(p.startswith(PARAM) for p in e[1])
                   for key, e in ev._segments._stripped.items() if e[2] is not None)
        assert ev.partial_runs >= len(groups)
    finally:
        ev.close()
        whole.close()


def test_evaluate_all_reports_in_order_and_stops_on_cancel(det):
    index, data, base = det
    groups, nothing = _variants(index, base)
    ev = OutputEvaluator(index, data, 6, batch_size=3)
    try:
        ev.set_reference("plan", base)
        seen = []
        results = ev.evaluate_all((sens._variant_only_float(index, base, g) for g in groups), "plan",
                                  on_result=lambda i, r: seen.append(i))
        assert sorted(seen) == list(range(len(groups))) and len(results) == len(groups)
        assert all(r is not None for r in results)
        rec, made = Recorder(cancel_after=3), []

        def variants():
            for g in groups:
                made.append(g)
                yield sens._variant_only_float(index, base, g)

        with pytest.raises(Cancelled):
            ev.evaluate_all(variants(), "plan", progress=rec, on_result=lambda i, r: rec.update(i + 1, len(groups)))
        assert len(made) < len(groups)  # it stopped making variants
        assert len(rec.calls) <= 3 + 2 * 2  # at most the tails under way when it was asked to stop
    finally:
        ev.close()


def _one_quantizer_model():
    """x * 1 -> y (exact for every value, NaN and Inf included) -> Neg -> z."""
    one = onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [helper.make_node("Mul", ["x", "one"], ["y"], name="times_one"),
             helper.make_node("Neg", ["y"], ["z"], name="neg")]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None])], [one])
    return load_model(finish(graph))


@pytest.mark.parametrize("enc", [
    Encoding(bw=8, scale=(0.1,), offset=(-128,)),               # uint8 zero point 128
    Encoding(bw=8, scale=(0.05,), offset=(-3,)),
    Encoding(bw=16, scale=(1e-3,), offset=(-30000,)),
    Encoding(bw=4, scale=(0.5,), offset=(0,)),
])
def test_the_four_op_quantizer_is_the_six_op_rule(enc):
    index = _one_quantizer_model()
    sim = Simulator(index, {"y": enc}, names=["z"])
    assert any(n.op_type == "Clip" for n in sim.model.graph.node)
    assert not any(n.op_type == "Sub" for n in sim.model.graph.node)  # the four-op form
    assert PARAM + "y::lo" in sim.feeds
    qp = onnx_qparams(enc)
    s = np.float32(qp.scale.reshape(-1)[0])
    zp = np.float32(np.asarray(qp.zero_point).reshape(-1)[0])
    k = np.arange(-70000, 70000, 7, dtype=np.float32)
    x = np.concatenate([k * s, (k + 0.5) * s, [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e30]]).astype(np.float32)
    got = -sim.run({"x": x}, ["z"])[0]
    with np.errstate(over="ignore", invalid="ignore"):
        want = ((np.clip(np.round(x / s) + zp, qp.qmin, qp.qmax) - zp) * s).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_a_model_too_big_for_specialised_tails_runs_plain_ones(det, monkeypatch):
    from qinspect.core.analysis import engine

    index, data, base = det
    groups, nothing = _variants(index, base)
    monkeypatch.setattr(engine, "SPECIALISED_WEIGHTS_BUDGET", 0)
    ev = OutputEvaluator(index, data, 6, batch_size=3)
    try:
        ev.set_reference("plan", base, specialise=True)
        got = ev.evaluate_all((sens._variant_only_float(index, base, g) for g in groups[:5]), "plan")
        assert all(r is not None for r in got) and not ev._segments._stripped
    finally:
        ev.close()
