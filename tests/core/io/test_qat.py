"""The QAT round trip: the start bundle (model, 1.0.0 encodings, the plan with frozen and float
tensors marked), a training run that moves weights and learns ranges (simulated here by editing the
files), and its end read back as a second configuration (`diff` with B's own model)."""
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qinspect.core.analysis.diff import diff
from qinspect.core.calib.calibrate import calibrate
from qinspect.core.calib.data import open_data
from qinspect.core.io.overrides import read_overrides
from qinspect.core.io.qat import write_qat_start
from qinspect.core.plan import PrecisionPlan, TensorEdit, derive_encodings
from qinspect.core.ptq.prepare import prepare_model

RESOURCES = Path(__file__).resolve().parents[3] / "resources"


def test_qat_round_trip(tmp_path):
    index = prepare_model(str(RESOURCES / "digits_cnn.onnx"))
    data = open_data(str(RESOURCES / "digits_calib.npz"), index.inputs)
    stats = calibrate(index, data).stats
    plan = PrecisionPlan()
    plan.edits["fc1_relu_out"] = TensorEdit(range=(0.0, 20.0))          # fixed by the user: frozen
    plan.edits["conv1_relu_out"] = TensorEdit(dtype="float", bw=16)      # stays float
    encodings = derive_encodings(index, stats, plan)
    files = write_qat_start(tmp_path / "qat", index, encodings, plan)
    assert [f.name for f in files] == ["model.onnx", "encodings.json", "qat_plan.json"]

    doc = json.loads((tmp_path / "qat" / "qat_plan.json").read_text())
    assert doc["frozen"] == ["fc1_relu_out"] and "conv1_relu_out" in doc["float"]
    assert doc["tensors"]["conv2.weight"] == {"kind": "weight", "dtype": "int", "bw": 8, "frozen": False}
    enc_doc = json.loads((tmp_path / "qat" / "encodings.json").read_text())
    assert enc_doc["version"] == "1.0.0"
    # no derived int32 biases: AIMET's default configuration keeps bias quantizers off (strict loader)
    assert not any(e["name"].endswith(".bias") for e in enc_doc["param_encodings"])

    # "training": weights move, a range is learned, the frozen one is kept
    model = onnx.load(str(tmp_path / "qat" / "model.onnx"))
    for t in model.graph.initializer:
        if t.name == "fc2.weight":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.05), t.name))
    onnx.save(model, str(tmp_path / "qat_model.onnx"))
    for e in enc_doc["activation_encodings"]:
        if e["name"] == "conv2_relu_out":
            e["scale"] = [e["scale"][0] * 0.8]
    (tmp_path / "qat_enc.json").write_text(json.dumps(enc_doc))

    index_b = prepare_model(str(tmp_path / "qat_model.onnx"))
    b, _ = read_overrides(tmp_path / "qat_enc.json", index_b)
    a, _ = read_overrides(tmp_path / "qat" / "encodings.json", index)
    result = diff(index, a, b, open_data(str(RESOURCES / "digits_test.npz"), index.inputs), index_b=index_b,
                  samples=64)
    rows = {t.name: t for t in result.tensors}
    assert {"range", "scale"} <= set(rows["conv2_relu_out"].changed)   # the learned range
    assert "sqnr" in rows["fc2.weight"].changed  # moved weights on the exported grid
    assert not {"range", "scale", "encoding"} & set(rows["fc1_relu_out"].changed)  # frozen: as exported
    assert rows["conv1_relu_out"].a.encoding == "float16"
