"""Calibration data: turn the user's DATA argument into onnxruntime feeds, one sample at a time.

Accepted forms (design.md section 5): a .npy file, a .npz file, a QNN-style input list .txt of .raw
files, a folder of images, or random:N. File-backed sources read one sample per call, so memory stays
flat in the number of samples. Every feed is checked against the model input it feeds; problems are
raised as a one-line DataError naming the file, the input, what was expected and what to do.

The source contract (`DataSource`, `check_feed`) is in `data_source.py`; input lists and image
folders are in `data_files.py`.
"""
from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from .data_files import ImageFolderSource, InputListSource
from .data_source import DataSource, _fits, _is_static, _one_line, _only_input, _shape_str
from .data_source import check_feed  # noqa: F401  (imported from here by other modules and tests)
from ..errors import DataError

ACCEPTED = ("a .npy file, a .npz file, an input list .txt, a folder of images "
            "(.png .jpg .jpeg .bmp .npy) or random:N")
ZIP_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error)  # a damaged .npz can raise any of these
DYNAMIC_DIM = 8  # random data: size of a dynamic dim that is not the batch axis


def _layout(where: str, inp, shape) -> tuple[int, tuple, int]:
    """How a stored array of `shape` splits into samples for `inp`: (count, sample shape, rows).

    rank r+1 is a stack (rows 0: sample i is x[i]); rank r is cut along its batch axis into chunks of
    the input's static batch size, or of 1 when it is dynamic (sample i is x[i*rows:(i+1)*rows]).
    """
    want = tuple(inp.shape)
    r = len(want)
    if len(shape) == r + 1 and _fits(want, shape[1:]):
        return shape[0], tuple(shape[1:]), 0
    if r == 0 and len(shape) == 0:
        return 1, (), 0
    if r >= 1 and len(shape) == r:
        rows = want[0] if _is_static(want[0]) else 1
        if rows > 0 and shape[0] % rows == 0 and _fits(want, (rows,) + tuple(shape[1:])):
            return shape[0] // rows, (rows,) + tuple(shape[1:]), rows
    stack = _shape_str(("S",) + want)
    joined = f" or {_shape_str((f'S*{want[0]}' if _is_static(want[0]) else 'S',) + want[1:])}" if r else ""
    raise DataError(f"{where}: input '{inp.name}' expects {np.dtype(inp.dtype).name} of shape "
                    f"{_shape_str(want)} but the array has shape {_shape_str(shape)}; save S samples "
                    f"as an array of shape {stack}{joined}")


def _read_header(f, where: str):
    """(shape, fortran_order, dtype) from a .npy header, leaving `f` at the start of the data."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{where}: not a readable .npy array ({_one_line(err)}); save it with np.save") from err
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects, not numbers; save a numeric array")
    return tuple(shape), fortran, dtype


class NpySource(DataSource):
    """A .npy file for a one-input model, memory-mapped so only the samples in use are read."""

    def __init__(self, path: str, inputs):
        super().__init__(inputs)
        self.path = path
        self._inp = _only_input(path, self.inputs, "a .npy file")
        try:
            with open(path, "rb") as f:  # header first: np.load would try to unpickle a non-.npy file
                shape, _, dtype = _read_header(f, path)
                start = f.tell()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if os.path.getsize(path) < start + nbytes:
                raise DataError(f"{path}: the file is truncated (header says {_shape_str(shape)} {dtype.name}); "
                                f"save it again")
            # 0-d and empty arrays cannot be memory-mapped; both are tiny.
            self._arr = np.load(path, mmap_mode="r" if shape and nbytes else None, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable .npy file ({_one_line(err)})") from err
        self._n, _, self._rows = _layout(path, self._inp, self._arr.shape)

    def _read(self, i):
        if self._arr.ndim == 0:
            part = self._arr
        elif self._rows:
            part = self._arr[i * self._rows:(i + 1) * self._rows]
        else:
            part = self._arr[i]
        return {self._inp.name: np.array(part)}  # copy: a plain in-memory array, not a memmap view

    def _where(self, i, name):
        return self.path


class _NpzMember:
    """One array of a .npz, read a sample at a time from its (possibly compressed) zip stream."""

    def __init__(self, zf: zipfile.ZipFile, member: str, where: str):
        self.stream = zf.open(member)
        shape, fortran, dtype = _read_header(self.stream, where)
        self.shape, self.dtype, self.start = tuple(shape), dtype, self.stream.tell()
        # Fortran-ordered samples are not contiguous in the file: load that array whole (rare).
        self.whole = None
        if fortran:
            self.stream.seek(0)
            try:
                self.whole = np.lib.format.read_array(self.stream, allow_pickle=False)
            except ValueError as err:
                raise DataError(f"{where}: not a readable array ({_one_line(err)})") from err

    def _seek(self, pos: int) -> None:
        # ZipExtFile.seek decompresses its way forward in 16 MB reads; skip in 1 MB steps so a jump
        # costs time but not memory. Sequential reads are already in place and skip nothing.
        if pos < self.stream.tell():
            self.stream.seek(0)
        while (gap := pos - self.stream.tell()) > 0:
            if not self.stream.read(min(gap, 1 << 20)):
                break

    def read(self, i: int, sample_shape: tuple, rows: int, where: str) -> np.ndarray:
        if self.whole is not None:
            a = self.whole
            return np.array(a if a.ndim == 0 else a[i * rows:(i + 1) * rows] if rows else a[i])
        nbytes = int(np.prod(sample_shape, dtype=np.int64)) * self.dtype.itemsize
        self._seek(self.start + i * nbytes)
        buf = self.stream.read(nbytes)
        if len(buf) != nbytes:
            raise DataError(f"{where}: array is truncated at sample {i}; save the .npz again")
        return np.frombuffer(bytearray(buf), self.dtype).reshape(sample_shape)


class NpzSource(DataSource):
    """A .npz with one array per input name (and optionally `labels`, kept aside, not fed)."""

    def __init__(self, path: str, inputs):
        super().__init__(inputs)
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except ZIP_ERRORS as err:
            raise DataError(f"{path}: not a readable .npz file ({_one_line(err)})") from err
        try:
            self._open_members()
        except ZIP_ERRORS as err:
            self.close()
            raise DataError(f"{path}: not a readable .npz file ({_one_line(err)}); save it again") from err
        except BaseException:
            self.close()
            raise

    def _open_members(self):
        path = self.path
        members = {m[:-4] if m.endswith(".npy") else m: m for m in self._zip.namelist()}
        names = [inp.name for inp in self.inputs]
        missing = [n for n in names if n not in members]
        extra = [k for k in members if k not in names and k != "labels"]
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unexpected {', '.join(extra)}"] if extra else [])
            raise DataError(f"{path}: arrays must be named after the model inputs ({', '.join(names)}): "
                            f"{'; '.join(parts)}; save with np.savez(file, **{{input_name: array}})")
        self._members, self._layouts = {}, {}
        for inp in self.inputs:
            member = _NpzMember(self._zip, members[inp.name], f"{path}['{inp.name}']")
            self._members[inp.name] = member
            self._layouts[inp.name] = _layout(f"{path}['{inp.name}']", inp, member.shape)
        counts = {name: lay[0] for name, lay in self._layouts.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
            raise DataError(f"{path}: inputs have different sample counts ({listed}); "
                            f"give every input the same number of samples")
        self._n = next(iter(counts.values()), 0)
        if "labels" in members and "labels" not in names:
            with self._zip.open(members["labels"]) as f:
                try:
                    self.labels = np.lib.format.read_array(f, allow_pickle=False)
                except ValueError as err:
                    raise DataError(f"{path}: 'labels' is not a readable array ({_one_line(err)})") from err

    def _read(self, i):
        out = {}
        for name, member in self._members.items():
            _, sample_shape, rows = self._layouts[name]
            try:
                out[name] = member.read(i, sample_shape, rows, f"{self.path}['{name}']")
            except ZIP_ERRORS as err:
                raise DataError(f"{self.path}: cannot read '{name}' ({_one_line(err)}); save it again") from err
        return out

    def _where(self, i, name):
        return f"{self.path}['{name}']"

    def close(self):
        for member in getattr(self, "_members", {}).values():
            member.stream.close()
        self._zip.close()


class RandomSource(DataSource):
    """N deterministic samples: standard normal floats, ints in [0, 10), random bools.

    Sample i depends only on (seed, i), so any sample can be re-made in any order.
    """

    def __init__(self, spec: str, inputs, count: int, seed: int = 0):
        super().__init__(inputs)
        self.spec, self.seed, self._n = spec, seed, count
        sizes: dict[str, int] = {}  # a named dynamic dim gets one size across all inputs
        self._shapes = {}
        for inp in self.inputs:
            if np.dtype(inp.dtype).kind not in "biuf":
                raise DataError(f"{spec}: random data cannot fill input '{inp.name}' of type "
                                f"{np.dtype(inp.dtype).name}; give real data")
            dims = []
            for k, d in enumerate(inp.shape):
                if _is_static(d):
                    dims.append(int(d))
                else:
                    size = 1 if k == 0 else DYNAMIC_DIM
                    dims.append(sizes.setdefault(d, size) if isinstance(d, str) and d else size)
            self._shapes[inp.name] = tuple(dims)

    def _read(self, i):
        rng = np.random.default_rng([self.seed, i])
        out = {}
        for inp in self.inputs:
            want, shape = np.dtype(inp.dtype), self._shapes[inp.name]
            if want.kind == "f":
                out[inp.name] = rng.standard_normal(shape).astype(want)
            elif want.kind == "b":
                out[inp.name] = rng.random(shape) < 0.5
            else:
                out[inp.name] = rng.integers(0, 10, shape).astype(want)
        return out

    def _where(self, i, name):
        return self.spec


def open_data(spec: str, inputs, *, samples: int | None = None, image_size: tuple[int, int] | None = None,
              mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
              layout: str = "NCHW", channels: str = "rgb", seed: int = 0) -> DataSource:
    """Open the user's DATA for `inputs` (objects with name, dtype, shape).

    `samples` caps the number of samples. Image options apply to image folders only. The first
    sample is read and checked here so a mismatch fails before a long calibration starts.
    """
    spec = os.fspath(spec)
    inputs = list(inputs)
    if samples is not None and (not isinstance(samples, (int, np.integer)) or samples < 0):
        raise DataError(f"samples must be a whole number (a cap on how many to use), got {samples!r}")
    if spec.startswith("random:"):
        count = spec[len("random:"):]
        if not count.isdigit():
            raise DataError(f"{spec}: random data is written random:N with N a whole number, e.g. random:16")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError(f"{spec}: seed must be a whole number of at least 0, got {seed!r}")
        source: DataSource = RandomSource(spec, inputs, int(count), seed)
    elif os.path.isdir(spec):
        source = ImageFolderSource(spec, inputs, image_size=image_size, mean=mean, std=std,
                                   layout=layout, channels=channels)
    elif not os.path.exists(spec):
        raise DataError(f"{spec}: no such file or folder; DATA is {ACCEPTED}")
    else:
        ext = os.path.splitext(spec)[1].lower()
        if ext == ".npy":
            source = NpySource(spec, inputs)
        elif ext == ".npz":
            source = NpzSource(spec, inputs)
        elif ext == ".txt":
            source = InputListSource(spec, inputs, limit=samples)
        else:
            raise DataError(f"{spec}: unknown kind of data file '{ext or 'no extension'}'; DATA is {ACCEPTED}")
    source.name = spec
    try:
        total = len(source)
        if samples is not None:
            source._n = min(source._n, int(samples))
        if len(source) == 0:
            raise DataError(f"{spec}: holds no samples{' (samples=0)' if samples == 0 else ''}; "
                            f"calibration needs at least one")
        if source.labels is not None and source.labels.ndim >= 1 and len(source.labels) == total:
            source.labels = source.labels[:len(source)]
        source.sample(0)
    except BaseException:
        source.close()
        raise
    return source
