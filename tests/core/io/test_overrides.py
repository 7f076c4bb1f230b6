import json

import numpy as np
import pytest

from qinspect.core.quant.encoding import compute_encoding, float_encoding
from qinspect.core.errors import OverridesError
from qinspect.core.io.overrides import (
    VERSIONS,
    apply_overrides,
    format_warnings,
    overrides_dict,
    parse_overrides,
    read_overrides,
    write_overrides,
)
from qinspect.core.graph.model import load_model
from qinspect.core.plan import PrecisionPlan, derive_encodings
from qinspect.core.quant.stats import TensorStats
from tests.models import small_cnn


@pytest.fixture
def index():
    return load_model(small_cnn())


@pytest.fixture
def encodings(index):
    rng = np.random.default_rng(1)
    stats = {name: TensorStats.of(rng.standard_normal(500) * (i + 1)) for i, name in enumerate(index.activations())}
    plan = PrecisionPlan()
    plan.set("conv2_out", bw=16)
    plan.set("sig_out", dtype="float", bw=16)
    plan.set("logits", symmetric=True)
    plan.set("conv2.weight", bw=4)
    return derive_encodings(index, stats, plan)


def kinds(index, encodings):
    return {name: index.targets[name].kind for name in encodings}


def same(a, b):
    assert a.bw == b.bw and a.dtype == b.dtype
    if a.is_float:
        return
    assert a.symmetric == b.symmetric
    assert a.offset == b.offset
    np.testing.assert_allclose(a.scale, b.scale, rtol=1e-9)
    assert (a.axis is None) == (b.axis is None)
    if a.axis is not None:
        assert a.axis == b.axis


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_every_version(tmp_path, index, encodings, version):
    path = write_overrides(tmp_path / f"enc_{version}.json", encodings, kinds(index, encodings), version)
    back, warnings = read_overrides(path, index)
    assert warnings == []
    expected = {n: e for n, e in encodings.items() if not (version in ("2.0.0", "2.1.0") and e.is_float)}
    assert set(back) == set(expected)
    for name, enc in expected.items():
        same(enc, back[name])


def test_0_6_1_layout_and_per_channel(index, encodings):
    doc = overrides_dict(encodings, kinds(index, encodings), "0.6.1")
    assert set(doc["activation_encodings"]) == set(index.activations()) & set(encodings)
    conv1 = doc["param_encodings"]["conv1.weight"]
    assert len(conv1) == 4
    for entry in conv1:
        assert entry["is_symmetric"] == "True" and entry["offset"] == -128
        assert entry["min"] == pytest.approx(entry["offset"] * entry["scale"])
        assert entry["max"] == pytest.approx(entry["min"] + 255 * entry["scale"])
    assert doc["activation_encodings"]["sig_out"] == [{"bitwidth": 16, "dtype": "float"}]
    assert doc["param_encodings"]["conv1.bias"][0]["bitwidth"] == 32


def test_2_0_0_zero_points(index, encodings):
    doc = overrides_dict(encodings, kinds(index, encodings), "2.0.0")
    by_name = {e["name"]: e for e in doc["encodings"]}
    assert "sig_out" not in by_name  # float tensors have no entry
    act = encodings["input"]
    assert by_name["input"]["output_dtype"] == "uint8"
    assert by_name["input"]["y_zero_point"] == -act.offset[0]
    w = by_name["conv1.weight"]
    assert w["output_dtype"] == "int8" and w["axis"] == 0 and "y_zero_point" not in w
    assert by_name["conv2.weight"]["output_dtype"] == "int4"
    assert by_name["conv1.bias"]["output_dtype"] == "int32"


def test_0_6_1_worked_example_entry():
    enc = compute_encoding(-1.8, 0.5, 8)
    doc = overrides_dict({"input": enc}, {"input": "activation"}, "0.6.1")
    entry = doc["activation_encodings"]["input"][0]
    assert entry["offset"] == -200 and entry["is_symmetric"] == "False"
    assert entry["min"] == pytest.approx(-1.8039215686274508)
    assert entry["max"] == pytest.approx(0.49607843137254903)
    assert entry["scale"] == pytest.approx(0.009019607843137253)


def test_partial_override_applies_on_defaults(tmp_path, index, encodings):
    partial = {
        "version": "0.6.1",
        "activation_encodings": {"conv2_out": [{"bitwidth": 16, "dtype": "float"}]},
        "param_encodings": {},
    }
    path = tmp_path / "user.json"
    path.write_text(json.dumps(partial))
    read, _ = read_overrides(path, index)
    plan = PrecisionPlan()
    apply_overrides(plan, read)
    rng = np.random.default_rng(0)
    stats = {name: TensorStats.of(rng.standard_normal(100)) for name in index.activations()}
    derived = derive_encodings(index, stats, plan)
    assert derived["conv2_out"] == float_encoding(16)
    assert derived["input"].bw == 8 and not derived["input"].is_float
    assert plan.edited() == ["conv2_out"]


def test_errors_list_every_offending_entry(tmp_path, index):
    doc = {
        "version": "0.6.1",
        "activation_encodings": {
            "nope_a": [{"bitwidth": 8, "dtype": "int", "min": -1, "max": 1, "is_symmetric": "False"}],
            "input": [{"bitwidth": 7, "dtype": "int", "min": -1, "max": 1}],
            "conv2_out": [{"bitwidth": 8, "dtype": "int", "min": 2, "max": 1}],
        },
        "param_encodings": {"nope_b": [{"bitwidth": 16, "dtype": "float"}]},
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(OverridesError) as err:
        read_overrides(path, index)
    message = str(err.value)
    for needle in ("bad.json", "nope_a", "nope_b", "input: bitwidth 7", "conv2_out: min 2"):
        assert needle in message


def test_channel_count_mismatch(index):
    doc = {"version": "1.0.0", "activation_encodings": [], "param_encodings": [
        {"name": "conv1.weight", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": True,
         "scale": [0.1, 0.1], "offset": [-128.0, -128.0]}]}
    with pytest.raises(OverridesError, match="conv1.weight: 2 channel encodings but the tensor has 4"):
        parse_overrides(doc, index)


@pytest.mark.parametrize(
    "text, needle",
    [("{not json", "not valid JSON"), ('{"version": "9.9.9"}', "unknown version"), ("[1, 2]", "JSON object")],
)
def test_invalid_files(tmp_path, index, text, needle):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(OverridesError, match=needle):
        read_overrides(path, index)


def test_non_target_names_are_warnings(index):
    doc = {"version": "0.6.1", "activation_encodings": {"pool_out": [{"bitwidth": 16, "dtype": "float"}]}, "param_encodings": {}}
    encodings, warnings = parse_overrides(doc, index)
    assert encodings == {} and "pool_out" in warnings[0]


def test_write_refuses_input_and_missing_folder(tmp_path):
    enc = {"t": compute_encoding(-1, 1)}
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    from qinspect.core.errors import QInspectError

    with pytest.raises(QInspectError, match="input file"):
        write_overrides(model, enc, {"t": "activation"}, protect=[model])
    assert model.read_bytes() == b"model"
    with pytest.raises(QInspectError, match="does not exist"):
        write_overrides(tmp_path / "missing" / "x.json", enc, {"t": "activation"})


@pytest.fixture
def strict_and_unsigned(index):
    """Strict symmetric weights and activations, and an unsigned symmetric never-negative activation."""
    rng = np.random.default_rng(2)
    stats = {name: TensorStats.of(rng.standard_normal(500) * (i + 1)) for i, name in enumerate(index.activations())}
    stats["sig_out"] = TensorStats.of(rng.uniform(0.1, 0.9, 500))
    plan = PrecisionPlan()
    plan.defaults.strict_symmetric = True
    plan.set("logits", symmetric=True)
    plan.set("sig_out", symmetric=True, unsigned=True, strict=False)
    return derive_encodings(index, stats, plan)


@pytest.mark.parametrize("version", VERSIONS)
def test_strict_and_unsigned_symmetric_round_trip(tmp_path, index, strict_and_unsigned, version):
    enc = strict_and_unsigned
    assert enc["conv1.weight"].strict and enc["logits"].strict and set(enc["logits"].offset) == {-127}
    assert enc["sig_out"].offset == (0,) and not enc["sig_out"].strict  # unsigned: the grid starts at 0
    path = write_overrides(tmp_path / f"e_{version}.json", enc, kinds(index, enc), version)
    back, _ = read_overrides(path, index)
    for name in ("conv1.weight", "logits", "sig_out", "input"):
        a, b = enc[name], back[name]
        np.testing.assert_allclose(b.scale, a.scale, rtol=1e-9, err_msg=f"{version} {name}")
        if version in ("2.0.0", "2.1.0") and a.strict:  # ONNX has no narrow range: the same grid plus one point
            assert set(b.offset) == {-128} and not b.strict
            continue
        assert (b.offset, b.strict) == (a.offset, a.strict), (version, name)
    warnings = format_warnings(enc, version)
    if version == "1.0.0":
        assert warnings == []
    else:  # each of the others says what it cannot carry
        assert any("strict" in w and "conv1.weight" in w for w in warnings)


def test_strict_from_the_command_line(tmp_path, capsys):
    from qinspect.cli import main

    model = tmp_path / "m.onnx"
    import onnx

    onnx.save_model(small_cnn(), model)
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal((8, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "e.json"
    assert main(["calibrate", str(model), "--data", str(tmp_path / "x.npy"), "-o", str(out), "--format", "1.0.0",
                 "--strict-symmetric", "--unsigned-symmetric", "-q"]) == 0
    doc = json.loads(out.read_text())
    w = next(e for e in doc["param_encodings"] if e["name"] == "conv1.weight")
    assert set(w["offset"]) == {-127}  # what AIMET reads as strict
    acts = {e["name"]: e for e in doc["activation_encodings"]}
    assert acts["input"]["is_sym"] is False  # strict and unsigned refine symmetric tensors only


def test_partial_2_0_0_is_refused_with_the_alternative(tmp_path, index, encodings):
    with pytest.raises(OverridesError, match="export all tensors in 2.0.0, or the edited ones in 1.0.0"):
        write_overrides(tmp_path / "p.json", encodings, kinds(index, encodings), "2.0.0", partial=True)
    assert not (tmp_path / "p.json").exists()
    write_overrides(tmp_path / "p.json", encodings, kinds(index, encodings), "1.0.0", partial=True)
    warnings = format_warnings(encodings, "2.0.0")
    assert any("2.0.0 cannot state float" in w and "sig_out" in w for w in warnings)


def test_2_0_0_keeps_the_bias_encodings_the_converter_would_otherwise_leave_float(index, encodings):
    from qinspect.core.io.overrides import file_encodings

    kept = file_encodings(index, encodings, target="qnn-htp", version="2.0.0")
    left = file_encodings(index, encodings, target="qnn-htp", version="1.0.0")
    assert "conv1.bias" in kept and "conv1.bias" not in left


def test_2_1_0_is_written_and_read_as_the_onnx_aligned_format(tmp_path, index, encodings):
    path = write_overrides(tmp_path / "e.json", encodings, kinds(index, encodings), "2.1.0")
    doc = json.loads(path.read_text())
    assert doc["version"] == "2.1.0" and "encodings" in doc
    assert doc["encodings"] == overrides_dict(encodings, kinds(index, encodings), "2.0.0")["encodings"]
    back, _ = read_overrides(path, index)
    for name, enc in encodings.items():
        if not enc.is_float:
            same(enc, back[name])


@pytest.mark.parametrize("entry, why", [
    ({"name": "conv1.weight", "output_dtype": "int4", "y_scale": [[0.1, 0.2]] * 4, "axis": 1, "block_size": 16},
     "block-wise encodings (block_size 16)"),
    ({"name": "conv1.weight", "output_dtype": "int4", "per_channel_float_scale": [[0.1]] * 4,
      "per_block_int_scale": [[3, 4]] * 4, "axis": 1, "block_size": 16}, "LPBQ encodings"),
    ({"name": "conv1.weight", "output_dtype": "int4", "y_scale": {"x": [3, 4], "x_scale": [0.1], "axis": 0}},
     "double-quantized scales (a 2.1.0 meta encoding)"),
])
def test_block_and_lpbq_encodings_are_refused_with_the_fix(index, entry, why):
    with pytest.raises(OverridesError) as err:
        parse_overrides({"version": "2.1.0", "encodings": [entry]}, index)
    assert why in str(err.value) and "conv1.weight" in str(err.value) and "per-channel" in str(err.value)


@pytest.mark.parametrize("enc_type, why", [("PER_BLOCK", "block-wise encodings (PER_BLOCK)"), ("LPBQ", "LPBQ encodings")])
def test_1_0_0_block_and_lpbq_entries_are_refused_with_the_fix(index, enc_type, why):
    entry = {"name": "conv1.weight", "dtype": "INT", "enc_type": enc_type, "bw": 4, "is_sym": True,
             "block_size": 16, "scale": [0.1] * 8, "offset": [-8] * 8}
    with pytest.raises(OverridesError) as err:
        parse_overrides({"version": "1.0.0", "activation_encodings": [], "param_encodings": [entry]}, index)
    assert why in str(err.value) and "PER_CHANNEL" in str(err.value)
