"""Small test doubles shared by several test modules."""


class Recorder:
    """A core Progress that records (done, total) and can ask to cancel after some updates."""

    def __init__(self, cancel_after=None):
        self.calls = []
        self.cancel_after = cancel_after

    def update(self, done, total, message=""):
        self.calls.append((done, total))

    def cancelled(self):
        return self.cancel_after is not None and len(self.calls) > self.cancel_after


def cnn_project(tmp_path, values: int, spread):
    """A Project on tests.models.small_cnn (opened from a file), each activation given random
    statistics of `values` standard-normal values times `spread(i, name)`."""
    import numpy as np
    import onnx

    from qinspect.core.project import Project
    from qinspect.core.quant.stats import TensorStats
    from tests.models import small_cnn

    path = tmp_path / "cnn.onnx"
    onnx.save_model(small_cnn(), path)
    project = Project()
    project.open_model(str(path))
    rng = np.random.default_rng(0)
    project.set_stats({n: TensorStats.of(rng.standard_normal(values) * spread(i, n))
                       for i, n in enumerate(project.index.activations())}, values)
    return project


def cpu_independent(warnings):
    """Export warnings that do not depend on the CPU running the tests: the u8s8 saturation warning
    appears only where onnxruntime's kernels saturate (x86 without VNNI), and is tested on its own."""
    return [w for w in warnings if "u8s8" not in w]


def runs_as_simulated(capsys, model, encodings, target: str, tmp_path, samples: int = 64) -> dict:
    """Export `encodings` as a QDQ model for `target`, run it in onnxruntime (default session options)
    on the example's test data through `qinspect compare --runtime`, and check that its output SQNR is
    the simulation's within 0.1 dB. Returns the exported model's path and the first output's numbers."""
    import json
    from pathlib import Path

    import pytest

    from qinspect.cli import main

    data = Path(__file__).resolve().parent.parent / "resources" / "digits_test.npz"
    qdq = tmp_path / f"{Path(str(encodings)).stem}_qdq.onnx"
    assert main(["export", str(model), "--encodings", str(encodings), "--qdq", str(qdq), "--target", target,
                 "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", str(model), "--encodings", str(encodings), "--data", str(data), "--samples",
                 str(samples), "--target", target, "--runtime", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)["outputs"][0]
    assert out["runtime_sqnr_db"] == pytest.approx(out["sqnr_db"], abs=0.1)
    return {"qdq": qdq, **out}
