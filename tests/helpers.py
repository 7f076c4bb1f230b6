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
