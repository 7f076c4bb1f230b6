"""TensorStats: streaming histogram growth, merging, non-finite values and serialisation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qinspect.core.quant.stats import TensorStats, channel_stats, rebin


def _batches(x: np.ndarray, n: int):
    return np.array_split(x, n)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_small_batches_equal_one_histogram_over_final_edges(dtype):
    rng = np.random.default_rng(0)
    # Batches that widen the range to both sides over time, so the histogram grows many times.
    spreads = [(0.01, 0), (0.1, 1), (1, -2), (5, 3), (50, -20)]
    x = np.concatenate([rng.normal(scale=s, size=500) + m for s, m in spreads])
    x = x.astype(dtype)
    stats = TensorStats(bins=256)
    for batch in _batches(x, 200):
        stats.update(batch)
    assert stats.count == x.size
    assert stats.counts.sum() == x.size
    assert stats.min == x.min() and stats.max == x.max()
    assert stats.lo <= stats.min and stats.hi >= stats.max
    ref, _ = np.histogram(x.astype(np.float64), bins=stats.edges)
    assert np.max(np.abs(stats.counts - ref)) <= 1


def test_growth_keeps_total_count_and_old_counts_in_place():
    stats = TensorStats(bins=64)
    stats.update(np.linspace(0.0, 1.0, 1000))
    before = stats.counts.copy()
    stats.update(np.array([3.5]))  # grows to the right only
    assert stats.count == 1001 and stats.counts.sum() == 1001
    # Old bins merged whole: pairs (factor 2 or more) of old bins sum into one new bin.
    assert stats.lo == 0.0 and stats.hi >= 3.5
    factor = round((stats.hi - stats.lo) / 1.0)
    assert np.allclose(stats.counts[: 64 // factor], before.reshape(-1, factor).sum(axis=1))


@pytest.mark.parametrize("new", [[-0.5], [-100.0, -90.0], [50.0, 60.0], [-1e4, 1e4]])
def test_growth_to_either_side_covers_old_and_new(new):
    # A batch wholly left of the current range used to give an index error (the grown range
    # was sized from the new batch's max only and did not cover the old range).
    stats = TensorStats(bins=128)
    old = np.linspace(0.0, 1.0, 300)
    stats.update(old)
    stats.update(np.asarray(new))
    everything = np.concatenate([old, new])
    assert stats.count == everything.size and stats.counts.sum() == everything.size
    assert stats.lo <= everything.min() and stats.hi >= everything.max()
    ref, _ = np.histogram(everything, bins=stats.edges)
    assert np.max(np.abs(stats.counts - ref)) <= 1


def _coarse(stats: TensorStats, edges: np.ndarray) -> np.ndarray:
    return rebin(stats.counts, stats.edges, edges)


def test_merge_of_shards_equals_stats_of_concatenation():
    rng = np.random.default_rng(3)
    a = rng.normal(loc=-1.0, scale=0.5, size=20000)
    b = rng.gamma(2.0, 2.0, size=30000)
    merged = TensorStats.of(a)
    merged.merge(TensorStats.of(b))
    whole = TensorStats.of(np.concatenate([a, b]))
    assert merged.count == whole.count == a.size + b.size
    assert merged.min == whole.min and merged.max == whole.max
    assert merged.counts.sum() == pytest.approx(whole.count)
    # Histograms agree after rebinning onto a common coarse grid (proportional spreading moves
    # at most part of one fine bin across each coarse edge).
    edges = np.linspace(whole.min, whole.max, 65)
    diff = np.abs(_coarse(merged, edges) - _coarse(whole, edges))
    assert diff.max() <= 0.005 * whole.count


def test_merge_into_empty_and_of_empty():
    x = np.arange(10.0)
    empty = TensorStats(bins=32)
    empty.merge(TensorStats.of(x, bins=32))
    ref = TensorStats.of(x, bins=32)
    assert empty.count == 10 and empty.min == 0 and empty.max == 9
    np.testing.assert_allclose(empty.counts, ref.counts)
    nan_only = TensorStats.of(np.array([np.nan, np.inf]), bins=32)
    ref.merge(nan_only)
    assert ref.count == 10 and ref.nan_count == 1 and ref.posinf_count == 1


def test_nan_and_inf_are_counted_and_never_reach_min_max():
    stats = TensorStats()
    stats.update(np.array([1.0, np.nan, -2.0, np.inf, 3.0, -np.inf, np.nan], dtype=np.float32))
    assert stats.count == 3
    assert (stats.nan_count, stats.posinf_count, stats.neginf_count) == (2, 1, 1)
    assert stats.nonfinite_count == 4
    assert stats.min == -2.0 and stats.max == 3.0
    assert np.isfinite(stats.lo) and np.isfinite(stats.hi)
    assert stats.counts.sum() == 3


def test_all_nan_batch_leaves_count_zero():
    stats = TensorStats(bins=16)
    stats.update(np.full(5, np.nan))
    assert stats.count == 0 and stats.empty and stats.nan_count == 5
    assert stats.counts.sum() == 0
    assert stats.clipped_fraction(-1.0, 1.0) == 0.0
    # Later finite data starts the histogram normally.
    stats.update(np.array([1.0, 2.0]))
    assert stats.count == 2 and stats.min == 1.0 and stats.max == 2.0


def test_constant_data_gets_a_usable_histogram():
    stats = TensorStats.of(np.full(100, 2.5))
    assert stats.min == stats.max == 2.5
    assert stats.lo < 2.5 < stats.hi
    assert stats.counts.sum() == 100


def test_to_dict_from_dict_round_trip():
    rng = np.random.default_rng(4)
    stats = TensorStats(bins=64)
    stats.update(np.concatenate([rng.normal(size=1000), [np.nan, np.inf, -np.inf]]))
    stats.update(rng.normal(loc=5, size=100))
    d = json.loads(json.dumps(stats.to_dict()))
    back = TensorStats.from_dict(d)
    for key in ("bins", "count", "nan_count", "posinf_count", "neginf_count", "min", "max", "lo", "hi"):
        assert getattr(back, key) == getattr(stats, key), key
    np.testing.assert_array_equal(back.counts, stats.counts)
    # Empty statistics round-trip too (min/max serialised as None).
    empty = TensorStats.from_dict(json.loads(json.dumps(TensorStats(bins=8).to_dict())))
    assert empty.empty and empty.min == np.inf and empty.max == -np.inf


def test_clipped_fraction():
    x = np.linspace(-1.0, 1.0, 100001)
    stats = TensorStats.of(x)
    assert stats.clipped_fraction(-1.0, 1.0) == pytest.approx(0.0, abs=1e-9)
    assert stats.clipped_fraction(-0.5, 0.5) == pytest.approx(0.5, abs=1e-3)
    assert stats.clipped_fraction(0.0, 1.0) == pytest.approx(0.5, abs=1e-3)
    assert stats.clipped_fraction(-2.0, 2.0) == pytest.approx(0.0, abs=1e-9)


def test_rebin_keeps_total():
    counts = np.array([1.0, 2.0, 3.0, 4.0])
    edges = np.linspace(0.0, 4.0, 5)
    out = rebin(counts, edges, np.linspace(-1.0, 5.0, 13))
    assert out.sum() == pytest.approx(counts.sum())
    np.testing.assert_allclose(rebin(counts, edges, edges), counts)


def test_channel_stats():
    w = np.arange(24.0).reshape(2, 3, 4)
    per = channel_stats(w, axis=1, bins=16)
    assert len(per) == 3
    for c, s in enumerate(per):
        assert s.min == w[:, c].min() and s.max == w[:, c].max() and s.count == 8


def test_denormal_range_does_not_overflow():
    """A deep chain can decay activations to denormals; bins / width then overflows float32."""
    from qinspect.core.quant.stats import TensorStats

    x = np.array([1e-40, 2e-40, 3e-40, 0.0], dtype=np.float32)
    s = TensorStats.of(x)
    s.update(x * 2)
    assert s.count == 8 and s.counts.sum() == 8
    assert s.max == pytest.approx(6e-40, rel=1e-2)


def test_subsampled_histogram_keeps_exact_counts_and_extremes():
    from qinspect.core.quant.stats import TensorStats

    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((8, 16, 32, 32)).astype(np.float32) for _ in range(6)]
    exact, sampled = TensorStats(), TensorStats(sample=4096)
    for b in batches:
        exact.update(b)
        sampled.update(b)
    assert sampled.sampled and not exact.sampled
    assert (sampled.count, sampled.min, sampled.max) == (exact.count, exact.min, exact.max)
    assert sampled.counts.sum() == pytest.approx(exact.count)
    # the sampled histogram estimates the exact one: compare their CDFs
    cdf_s = np.cumsum(sampled.counts) / sampled.counts.sum()
    cdf_e = np.interp(sampled.edges[1:], exact.edges, np.concatenate([[0], np.cumsum(exact.counts)])) / exact.count
    assert np.abs(cdf_s - cdf_e).max() < 0.02


def test_update_all_with_a_pool_equals_updates_in_order():
    from concurrent.futures import ThreadPoolExecutor

    from qinspect.core.quant.stats import TensorStats, update_all

    rng = np.random.default_rng(6)
    values = [rng.standard_normal(n).astype(np.float32) * (i + 1) for i, n in enumerate([10, 5000, 300000, 7, 20000])]
    in_order = [TensorStats() for _ in values]
    for s, v in zip(in_order, values):
        s.update(v)
    pooled = [TensorStats() for _ in values]
    with ThreadPoolExecutor(max_workers=2) as pool:
        update_all(list(zip(pooled, values)), pool, 3)
    for a, b in zip(in_order, pooled):
        assert (a.count, a.min, a.max, a.lo, a.hi) == (b.count, b.min, b.max, b.lo, b.hi)
        np.testing.assert_array_equal(a.counts, b.counts)


def test_scan_reads_min_max_and_subsample_across_blocks():
    from qinspect.core.quant.stats import _SCAN_BLOCK, _scan

    rng = np.random.default_rng(7)
    x = rng.standard_normal(3 * _SCAN_BLOCK + 1234).astype(np.float32)
    x[2 * _SCAN_BLOCK + 5] = 9.5  # the extremes in later blocks
    x[_SCAN_BLOCK - 1] = -8.25
    for start, step in [(0, 61), (37, 61), (60, 61), (5, 131071), (0, 0)]:
        lo, hi, part = _scan(x, start, step)
        assert (lo, hi) == (-8.25, 9.5)
        if step:
            np.testing.assert_array_equal(part, x[start::step])
        else:
            assert part is None
    x[3 * _SCAN_BLOCK + 3] = np.nan  # in the last, short block
    lo, hi, _ = _scan(x, 0, 61)
    assert np.isnan(lo) and np.isnan(hi)


@pytest.mark.parametrize("fn, decreasing", [
    (lambda v: v + np.float32(1.0), False),
    (lambda v: np.float32(3.0) - v, True),
    (lambda v: v * np.float32(-0.7071), True),
    (lambda v: v / np.float32(1.4142135), False),
])
def test_derived_statistics_equal_reading_the_values(fn, decreasing):
    """A tensor that is a monotone op of another gets, without being read, the statistics that
    reading it gives: same min, max, count and histogram, batch after batch (subsampled or not)."""
    rng = np.random.default_rng(8)
    for sample, size in [(1024, (4, 37, 53)), (None, (3, 100))]:
        source, derived, read = (TensorStats(256, sample) for _ in range(3))
        for k in range(5):
            x = (rng.standard_normal(size) * (k + 1) + k).astype(np.float32)
            seen = source.update(x)
            assert derived.update_derived(seen, fn, decreasing) is not None
            read.update(fn(x))
        assert (derived.count, derived.min, derived.max, derived.lo, derived.hi) == \
               (read.count, read.min, read.max, read.lo, read.hi)
        assert derived.sampled == read.sampled == (sample is not None)
        np.testing.assert_array_equal(derived.counts, read.counts)


def test_derived_statistics_refuse_an_overflow():
    source, derived = TensorStats(64, 32), TensorStats(64, 32)
    seen = source.update(np.linspace(-1e30, 1e30, 1000, dtype=np.float32))
    assert derived.update_derived(seen, lambda v: v * np.float32(1e10)) is None
    assert derived.count == 0 and derived.counts.sum() == 0
    # a batch with NaN/Inf gives nothing to derive from
    assert source.update(np.array([1.0, np.nan, 2.0], np.float32)) is None


def test_a_batch_with_nan_is_still_subsampled_and_counted():
    x = np.random.default_rng(9).standard_normal(50_000).astype(np.float32)
    x[::1000] = np.nan
    x[7] = np.inf
    stats = TensorStats(128, 1024)
    assert stats.update(x) is None
    finite = x[np.isfinite(x)]
    assert (stats.nan_count, stats.posinf_count, stats.count) == (50, 1, finite.size)
    assert (stats.min, stats.max) == (finite.min(), finite.max())
    assert stats.sampled and stats.counts.sum() == pytest.approx(finite.size)
