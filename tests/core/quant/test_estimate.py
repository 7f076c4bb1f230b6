import math
import time

import numpy as np
import pytest

from qinspect.core.quant.encoding import clip_bounds, compute_encoding, float_encoding
from qinspect.core.quant.estimate import channel_encoding, channels_error, histogram_error, values_error
from qinspect.core.quant.stats import TensorStats, channel_stats

RNG = np.random.default_rng(0)
SAMPLES = {
    "normal": RNG.standard_normal(100_000),
    "uniform": RNG.uniform(-0.3, 2.0, 100_000),
    "shifted_laplace": RNG.laplace(size=100_000) * 0.01 + 2.0,
    # Half the values exactly zero: a point mass the estimate must not smear over a bin.
    "relu": np.maximum(RNG.standard_normal(100_000) * 3.0, 0.0),
}


def brute_force(x, enc):
    err = x - enc.quantize_dequantize(x)
    mse = float(np.mean(err**2))
    sqnr = 10 * math.log10(np.mean(x**2) / mse) if mse > 0 else math.inf
    return mse, sqnr


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("bw", [4, 8, 16])
@pytest.mark.parametrize("clip", [False, True])
def test_matches_raw_samples(name, bw, clip):
    x = SAMPLES[name]
    lo, hi = (np.quantile(x, 0.01), np.quantile(x, 0.99)) if clip else (x.min(), x.max())
    enc = compute_encoding(lo, hi, bw)
    est = histogram_error(TensorStats.of(x), enc)
    mse, sqnr = brute_force(x, enc)
    assert est.mse == pytest.approx(mse, rel=0.03)
    assert est.sqnr_db == pytest.approx(sqnr, abs=0.15)
    lo_clip, hi_clip = clip_bounds(enc)  # clipped: beyond half a step past the grid's ends
    outside = np.mean((x < lo_clip[0]) | (x > hi_clip[0]))
    assert est.clipped_fraction == pytest.approx(outside, abs=1e-3)


def test_symmetric_encoding():
    x = SAMPLES["normal"]
    enc = compute_encoding(-2.5, 2.5, 8, symmetric=True)
    assert histogram_error(TensorStats.of(x), enc).mse == pytest.approx(brute_force(x, enc)[0], rel=0.03)


@pytest.mark.parametrize("symmetric", [False, True])
def test_monotonic_in_bitwidth(symmetric):
    stats = TensorStats.of(SAMPLES["uniform"])
    ests = [histogram_error(stats, compute_encoding(stats.min, stats.max, bw, symmetric=symmetric)) for bw in (4, 8, 16, 32)]
    mses = [e.mse for e in ests]
    sqnrs = [e.sqnr_db for e in ests]
    assert mses == sorted(mses, reverse=True) and len(set(mses)) == 4
    assert sqnrs == sorted(sqnrs)


def test_clipped_fraction_matches_stats():
    stats = TensorStats.of(SAMPLES["normal"])
    for lo, hi in [(-1.0, 1.0), (-0.2, 3.0), (-5.0, 5.0), (0.0, 0.5)]:
        enc = compute_encoding(lo, hi, 8)
        est = histogram_error(stats, enc)
        lo_clip, hi_clip = clip_bounds(enc)
        assert est.clipped_fraction == pytest.approx(stats.clipped_fraction(lo_clip[0], hi_clip[0]), abs=1e-12)


@pytest.mark.parametrize("name", ["shifted_laplace", "uniform_pm1"])
def test_float16_cast_error(name):
    # uniform_pm1: power-of-two bin widths, where the float16 grid repeats bin after bin.
    x = SAMPLES[name] if name in SAMPLES else RNG.uniform(-1.0, 1.0, 400_000)
    x = x.astype(np.float32).astype(np.float64)
    est = histogram_error(TensorStats.of(x), float_encoding(16))
    mse, sqnr = brute_force(x, float_encoding(16))
    assert est.mse == pytest.approx(mse, rel=0.03)
    assert est.clipped_fraction == 0.0
    big = TensorStats.of(np.array([1.0, 1e5, -2e5]))
    assert histogram_error(big, float_encoding(16)).clipped_fraction > 0.5
    assert histogram_error(TensorStats.of(x), float_encoding(32)).sqnr_db == math.inf


def test_empty_and_constant():
    for stats in (None, TensorStats(), TensorStats.of(np.array([np.nan, np.inf]))):
        est = histogram_error(stats, compute_encoding(-1, 1, 8))
        assert all(math.isnan(v) for v in est)
    const = TensorStats.of(np.full(10, 0.3))
    enc = compute_encoding(-1, 1, 8)
    est = histogram_error(const, enc)
    assert est.mse == pytest.approx(brute_force(np.full(10, 0.3), enc)[0], rel=1e-6)
    zeros = histogram_error(TensorStats.of(np.zeros(5)), enc)
    assert zeros.mse == 0.0 and zeros.sqnr_db == math.inf


def test_per_channel():
    w = RNG.standard_normal((6, 3, 3, 3)) * np.arange(1, 7)[:, None, None, None]
    lo, hi = w.min(axis=(1, 2, 3)), w.max(axis=(1, 2, 3))
    enc = compute_encoding(lo, hi, 4, symmetric=True, axis=0)
    with pytest.raises(ValueError, match="per-channel"):
        histogram_error(TensorStats.of(w), enc)
    one = channel_encoding(enc, 2)
    assert one.axis is None and one.scale == (enc.scale[2],)
    # Few values per channel: the histogram is far from smooth, so only a loose check.
    est = channels_error(channel_stats(w, 0), enc)
    assert est.mse == pytest.approx(brute_force(w, enc)[0], rel=0.25)
    assert est.clipped_fraction == pytest.approx(0.0, abs=1e-3)
    exact = values_error(w, enc)
    assert exact.mse == pytest.approx(brute_force(w, enc)[0], rel=1e-12) and exact.clipped_fraction == 0.0
    tight = compute_encoding(lo / 2, hi / 2, 4, symmetric=True, axis=0)
    assert values_error(w, tight).clipped_fraction > 0.1


def test_values_error_matches_histogram_estimate():
    x = SAMPLES["normal"]
    enc = compute_encoding(-2.0, 2.0, 8)
    exact = values_error(x, enc)
    assert exact.mse == pytest.approx(brute_force(x, enc)[0], rel=1e-12)
    assert exact.clipped_fraction == pytest.approx(np.mean(np.abs(x) > 2.0), abs=1e-3)
    assert histogram_error(TensorStats.of(x), enc).sqnr_db == pytest.approx(exact.sqnr_db, abs=0.15)


def test_speed_is_reported():
    stats = TensorStats.of(RNG.uniform(-1, 1, 1_000_000))
    assert (stats.counts > 0).sum() == 2048
    enc = compute_encoding(-0.9, 0.9, 8)
    for e in (enc, float_encoding(16)):
        start = time.perf_counter()
        for _ in range(100):
            histogram_error(stats, e)
        print(f"histogram_error {e.dtype}{e.bw}, 2048 bins: {(time.perf_counter() - start) * 10:.3f} ms")
