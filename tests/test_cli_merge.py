"""Sharded calibration: `calibrate --save-stats` on each shard, `merge` adds them up. Three shards
give the min/max and tf encodings of one run on all the data, and histograms within the merge's
re-binning error (a bin of the coarser grid)."""
import json
from pathlib import Path

import numpy as np
import pytest

from qinspect.cli import main
from qinspect.core.io.session import load_session
from qinspect.core.io.stats_file import load_stats

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MODEL = str(RESOURCES / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    x = np.load(RESOURCES / "digits_calib.npz")["input"]
    np.save(folder / "all.npy", x)
    for i, part in enumerate(np.array_split(x, 3)):  # 67, 67, 66 samples: batches of 8 straddle the cuts
        np.save(folder / f"part{i}.npy", part)
    return folder


def _calibrate(folder, data, *extra):
    assert main(["calibrate", MODEL, "--data", str(folder / data), "--exact-histograms", "-q", *extra]) == 0


def test_three_shards_merge_to_one_run(shards, tmp_path):
    for i in range(3):
        _calibrate(shards, f"part{i}.npy", "--save-stats", str(tmp_path / f"part{i}.qstats"))
    _calibrate(shards, "all.npy", "-o", str(tmp_path / "one.json"), "--session", str(tmp_path / "one.qinspect"))
    parts = sorted(str(p) for p in tmp_path.glob("part*.qstats"))
    assert main(["merge", *parts, "-o", str(tmp_path / "merged.qinspect"), "--encodings", str(tmp_path / "merged.json"),
                 "-q"]) == 0

    one, merged = load_session(tmp_path / "one.qinspect"), load_session(tmp_path / "merged.qinspect")
    assert merged.samples == one.samples == 200
    assert set(merged.stats) == set(one.stats)
    for name, s in one.stats.items():
        m = merged.stats[name]
        assert (m.count, m.min, m.max, m.nan_count) == (s.count, s.min, s.max, s.nan_count), name
        # histograms: the same total, and cumulative counts within one bin of the coarser grid
        assert m.counts.sum() == pytest.approx(s.counts.sum())
        width = max((m.hi - m.lo), (s.hi - s.lo)) / m.bins
        for q in (0.01, 0.1, 0.5, 0.9, 0.99):
            assert abs(_quantile(m, q) - _quantile(s, q)) <= 2 * width + 1e-12, (name, q)
    # the tf encodings (min/max) are the very same
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "merged.json").read_text())
    assert a["activation_encodings"] == b["activation_encodings"]
    assert a["param_encodings"] == b["param_encodings"]
    # weights are counted once, not once per shard
    shard = load_stats(parts[0])
    w = shard.constants[0]
    assert merged.stats[w].count == shard.stats[w].count


def _quantile(stats, q):
    cum = np.concatenate([[0.0], np.cumsum(stats.counts)])
    return float(np.interp(q * cum[-1], cum, stats.edges))


def test_shards_of_other_models_or_settings_are_refused(shards, tmp_path, capsys):
    _calibrate(shards, "part0.npy", "--save-stats", str(tmp_path / "a.qstats"))
    _calibrate(shards, "part1.npy", "--save-stats", str(tmp_path / "b.qstats"), "--target", "ort-cpu")
    assert main(["merge", str(tmp_path / "a.qstats"), str(tmp_path / "b.qstats"), "-o", str(tmp_path / "m.qinspect"),
                 "-q"]) == 2
    assert "another model or target" in capsys.readouterr().err
    assert not (tmp_path / "m.qinspect").exists()
    (tmp_path / "bad.qstats").write_text("{}")
    assert main(["merge", str(tmp_path / "bad.qstats"), "-o", str(tmp_path / "m.qinspect"), "-q"]) == 2
    assert "not a qinspect statistics file" in capsys.readouterr().err
    assert main(["calibrate", MODEL, "--data", str(shards / "part0.npy"), "-q"]) == 2
    assert "--save-stats" in capsys.readouterr().err
