"""Feeds and the data source contract: `check_feed` checks one array against a model input, and
`DataSource` is the base of every kind of calibration data (`data.py` opens them)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import DataError


def _is_static(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0


def _shape_str(shape) -> str:
    dims = [str(d) if _is_static(d) else (d if isinstance(d, str) and d else "?") for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _fits(shape, actual) -> bool:
    return len(shape) == len(actual) and all(not _is_static(d) or d == a for d, a in zip(shape, actual))


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def check_feed(where: str, inp, arr) -> np.ndarray:
    """Return `arr` as a feed for `inp`, converted to its dtype when no value changes.

    float -> float is always converted (float64 data for a float32 input is normal); any other
    conversion (int <-> float, narrowing ints, bool) only when every value survives the round trip.
    NaN and Inf pass for float inputs: calibration counts them.
    """
    arr = np.asarray(arr)
    want = np.dtype(inp.dtype)
    expected = f"{want.name} of shape {_shape_str(inp.shape)}"
    if not _fits(tuple(inp.shape), arr.shape):
        raise DataError(f"{where}: input '{inp.name}' expects {expected} but a sample has shape "
                        f"{_shape_str(arr.shape)}; give data of the input's shape")
    have = arr.dtype
    if have == want:
        return arr
    if want.kind == "f" and have.kind == "f":
        return arr.astype(want)
    if want.kind in "biuf" and have.kind in "biuf":
        with np.errstate(invalid="ignore", over="ignore"):
            out = arr.astype(want)
            lost = out.astype(have) != arr
        if not lost.any():
            return out
        example = arr[lost].flat[0]
        raise DataError(f"{where}: input '{inp.name}' expects {expected} but the data are {have.name} "
                        f"with values {want.name} cannot hold exactly (e.g. {example}); "
                        f"save the data as {want.name}")
    if want.kind in "OUS" and have.kind in "OUS":
        return arr
    raise DataError(f"{where}: input '{inp.name}' expects {expected} but the data are {have.name}; "
                    f"save the data as {want.name}")


class DataSource:
    """Samples for a model's inputs. Subclasses implement `_read(i)` and `_where(i, name)`."""

    labels: np.ndarray | None = None
    name: str = "calibration data"  # the DATA the user gave, for messages (set by open_data)

    def __init__(self, inputs):
        self.inputs = list(inputs)
        self._n = 0
        # Outputs the data names (a QNN input list's %tensor and #layer lines): what to compare.
        self.output_tensors: list[str] = []
        self.output_layers: list[str] = []

    def __len__(self) -> int:
        return self._n

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """One sample's feed, checked against the inputs."""
        if not 0 <= i < self._n:
            raise IndexError(f"sample {i} out of range (0..{self._n - 1})")
        raw = self._read(i)
        return {inp.name: check_feed(self._where(i, inp.name), inp, raw[inp.name]) for inp in self.inputs}

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of up to `batch_size` samples concatenated on axis 0 when every input's first dim is
        dynamic; otherwise one sample per feed, since a fixed batch axis cannot grow."""
        return (feed for _, feed in self.counted_batches(batch_size))

    def counted_batches(self, batch_size: int = 1) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Like `batches`, with the number of samples in each feed (for progress)."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DataError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
        return self._batches(int(batch_size))  # not a generator itself, so a bad size fails at once

    def _batches(self, batch_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        growable = bool(self.inputs) and all(
            len(inp.shape) >= 1 and not _is_static(inp.shape[0]) for inp in self.inputs)
        if not growable or batch_size == 1:
            for i in range(self._n):
                yield 1, self.sample(i)
            return
        pending: list[dict[str, np.ndarray]] = []
        for i in range(self._n):
            feed = self.sample(i)
            # Samples whose other dynamic dims differ cannot share a batch: start a new one.
            if pending and (len(pending) == batch_size or any(
                    feed[k].shape[1:] != pending[0][k].shape[1:] for k in feed)):
                yield len(pending), _concat(pending)
                pending = []
            pending.append(feed)
        if pending:
            yield len(pending), _concat(pending)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self, i: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _where(self, i: int, name: str) -> str:
        raise NotImplementedError


def _concat(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds) == 1:
        return feeds[0]
    return {k: np.concatenate([f[k] for f in feeds], axis=0) for k in feeds[0]}


def _only_input(where: str, inputs, form: str):
    if len(inputs) != 1:
        names = ", ".join(inp.name for inp in inputs) or "none"
        raise DataError(f"{where}: {form} can only feed a one-input model, this one has inputs {names}; "
                        f"use a .npz file or an input list with name:=path pairs")
    return inputs[0]
