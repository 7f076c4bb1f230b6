"""Blown-up range detection (core/diagnostics.py): masks and outliers are flagged with a fix, ordinary
tensors (wide, large-valued, sparse) are not."""
import numpy as np
import pytest

from qinspect.core.calib.diagnostics import check_stats
from qinspect.core.quant.stats import TensorStats

rng = np.random.default_rng(0)
normal = rng.standard_normal(20000).astype(np.float32)


@pytest.mark.parametrize("name, values", [
    ("gaussian", normal),
    ("large but dense (sample rates)", rng.uniform(8000, 48000, 50).astype(np.float32)),
    ("huge and dense", (normal * 1e6).astype(np.float32)),
    ("sparse relu", np.where(rng.random(20000) < 0.9995, 0, np.abs(normal)).astype(np.float32)),
    ("laplace tails", rng.laplace(size=20000).astype(np.float32)),
])
def test_ordinary_tensors_are_not_flagged(name, values):
    assert check_stats(name, TensorStats.of(values)) is None


def test_mask_sentinels_suggest_float32():
    values = np.where(rng.random(20000) < 0.3, np.float32(-1e9), normal)
    w = check_stats("scores", TensorStats.of(values))
    assert w.kind == "blown_range" and w.float_bw == 32 and w.percentile is None  # 30% are masked
    assert w.message.startswith("scores: range [-1e+09,") and "attention mask" in w.message
    assert "float32 (its values exceed float16's 65504)" in w.message


def test_rare_outliers_suggest_a_percentile_range():
    values = normal.copy()
    values[:3] = [400.0, -350.0, 500.0]
    w = check_stats("act", TensorStats.of(values))
    assert w.kind == "blown_range" and w.float_bw == 16 and w.percentile is not None and w.percentile >= 99.9
    lo, hi = w.percentile_range
    assert -10 < lo < 0 < hi < 10 and "percentile range" in w.message and "a few outliers" in w.message


def test_only_nan_values():
    w = check_stats("t", TensorStats.of(np.full(5, np.nan, np.float32)))
    assert w.kind == "no_finite_values" and "all 5 values were NaN or Inf" in w.message
