"""Calibration reads the next batch of data in a background thread while it works on the current one:
the batches must come in order, errors where their batch would have been, and no thread may outlive
the calibration (a cancel, an error)."""
import threading

import numpy as np
import pytest

from qinspect.core.calib import calibrate as calib
from qinspect.core.calib.data import open_data
from qinspect.core.errors import Cancelled, DataError
from qinspect.core.graph.model import load_model
from tests.helpers import Recorder
from tests.models import small_cnn


def _data_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("qinspect-data", "qinspect-weights")]


def _source(n, fail_at=None, log=None):
    try:
        for i in range(n):
            if i == fail_at:
                raise DataError(f"sample {i} is broken")
            if log is not None:
                log.append(i)
            yield i
    finally:
        if log is not None:
            log.append("closed")


def test_items_come_in_order():
    assert list(calib._prefetched(_source(50))) == list(range(50))
    assert list(calib._prefetched(_source(0))) == []
    assert not _data_threads()


def test_an_error_of_the_data_comes_after_the_batches_before_it():
    got = []
    with pytest.raises(DataError, match="sample 7"):
        for item in calib._prefetched(_source(20, fail_at=7)):
            got.append(item)
    assert got == list(range(7))
    assert not _data_threads()


def test_stopping_early_stops_the_thread_and_closes_the_source():
    log = []
    ahead = calib._prefetched(_source(1000, log=log))
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert not _data_threads()
    assert log[-1] == "closed" and len(log) <= 3 + 2 + 1  # at most the queued and the one being read


def test_at_most_one_item_is_made_ahead_of_the_callers():
    made = []

    def source():
        for i in range(30):
            made.append(i)
            yield i

    for i in calib._prefetched(source(), ahead=1):
        assert len(made) <= i + 2  # the caller's item and one made ahead
        threading.Event().wait(0.002)  # a slow caller: the thread would run ahead if it could
    assert made == list(range(30))


def test_a_failing_batch_comes_with_its_feeds(setup, monkeypatch):
    index, data = setup
    calls = []

    def failing(session, feeds, names, source):
        calls.append(feeds)
        if len(calls) == 2:
            raise DataError("onnxruntime failed")
        return [np.zeros(1)] * len(names)

    monkeypatch.setattr(calib, "_run", failing)
    runs = calib._prefetched(calib._runs(data.counted_batches(4), None, ["a"], "src"))
    next(runs)
    with pytest.raises(DataError) as err:
        next(runs)
    assert err.value.feeds is calls[1]
    runs.close()
    assert not _data_threads()


def test_big_batches_run_in_line_with_their_data_read_ahead(setup, monkeypatch):
    index, data = setup
    threads = set()
    run = calib._run

    def recording(*args):
        threads.add(threading.current_thread().name)
        return run(*args)

    monkeypatch.setattr(calib, "_run", recording)
    calib.calibrate(index, data, batch_size=4)
    assert threads == {"qinspect-data"}
    threads.clear()
    calib.calibrate(index, data, batch_size=4, group_bytes=1)  # one tensor per pass, each too big for two
    assert threads == {threading.current_thread().name}


def test_one_core_reads_in_line(monkeypatch):
    monkeypatch.setattr(calib.os, "cpu_count", lambda: 1)
    seen = []

    def source():
        for i in range(3):
            seen.append(threading.current_thread().name)
            yield i

    assert list(calib._prefetched(source())) == [0, 1, 2]
    assert set(seen) == {threading.current_thread().name}


@pytest.fixture
def setup(tmp_path):
    index = load_model(small_cnn())
    x = np.random.default_rng(5).standard_normal((13, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return index, open_data(str(tmp_path / "x.npy"), index.inputs)


def test_read_ahead_gives_the_stats_of_reading_in_line(setup, monkeypatch):
    index, data = setup
    ahead = calib.calibrate(index, data, batch_size=4)
    monkeypatch.setattr(calib, "_prefetched", lambda items, ahead=1: iter(items))
    in_line = calib.calibrate(index, data, batch_size=4)
    assert set(ahead.stats) == set(in_line.stats)
    for name, s in in_line.stats.items():
        a = ahead.stats[name]
        assert (a.count, a.min, a.max, a.lo, a.hi) == (s.count, s.min, s.max, s.lo, s.hi)
        np.testing.assert_array_equal(a.counts, s.counts)


def test_weights_get_their_exact_stats_and_warnings_in_the_background(setup):
    index, data = setup
    result = calib.calibrate(index, data, batch_size=4)
    for name in list(index.weights()) + list(index.biases()):
        want = calib.TensorStats.of(index.initializer(name))
        got = result.stats[name]
        assert (got.count, got.min, got.max, got.sampled) == (want.count, want.min, want.max, False)
        np.testing.assert_array_equal(got.counts, want.counts)
    assert not _data_threads()


def test_an_error_in_the_background_reaches_the_caller(setup, monkeypatch):
    index, data = setup

    def broken(values, index, bins, stop):
        raise ValueError("broken weight")

    monkeypatch.setattr(calib, "_constant_stats", broken)
    with pytest.raises(ValueError, match="broken weight"):
        calib.calibrate(index, data, batch_size=4)


def test_cancel_leaves_no_reading_thread(setup):
    index, data = setup
    with pytest.raises(Cancelled):
        calib.calibrate(index, data, batch_size=1, progress=Recorder(cancel_after=3))
    assert not _data_threads()
