"""Calibration data: turn the user's DATA argument into onnxruntime feeds, one sample at a time.

Accepted forms (design.md section 5): a .npy file, a .npz file, a QNN-style input list .txt of .raw
files, a folder of images, or random:N. File-backed sources read one sample per call, so memory stays
flat in the number of samples. Every feed is checked against the model input it feeds; problems are
raised as a one-line DataError naming the file, the input, what was expected and what to do.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from typing import Iterator

import numpy as np

from .errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".npy")
ACCEPTED = ("a .npy file, a .npz file, an input list .txt, a folder of images "
            "(.png .jpg .jpeg .bmp .npy) or random:N")
ZIP_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error)  # a damaged .npz can raise any of these
DYNAMIC_DIM = 8  # random data: size of a dynamic dim that is not the batch axis


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


class InputListSource(DataSource):
    """A QNN-style input list: a line per sample, `path` or `name:=path` pairs, of .raw (or .npy) files.

    A .raw holds the input's shape with dynamic dims as 1, in float32 for float inputs (the QNN
    convention) and in the input's own dtype otherwise.
    """

    def __init__(self, path: str, inputs, limit: int | None = None):
        super().__init__(inputs)
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        names = [inp.name for inp in self.inputs]
        self._rows: list[dict[str, str]] = []
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read the input list ({_one_line(err)})") from err
        for lineno, line in enumerate(lines, 1):
            if limit is not None and len(self._rows) >= limit:
                break
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{lineno}"
            if ":=" in line:
                row = {}
                for token in line.split():
                    name, sep, file = token.partition(":=")
                    if not sep or not name or not file:
                        raise DataError(f"{where}: '{token}' is not name:=path; write every pair as name:=path")
                    row[name] = file
                missing = [n for n in names if n not in row]
                extra = [n for n in row if n not in names]
                if missing or extra:
                    raise DataError(f"{where}: line must name every input ({', '.join(names)}) once; "
                                    f"missing {', '.join(missing) or 'none'}, unknown {', '.join(extra) or 'none'}")
            else:
                inp = _only_input(where, self.inputs, "a line with a single path")
                row = {inp.name: line}
            row = {n: p if os.path.isabs(p) else os.path.join(folder, p) for n, p in row.items()}
            for inp in self.inputs:
                self._check_file(where, inp, row[inp.name])
            self._rows.append(row)
        self._n = len(self._rows)

    @staticmethod
    def _raw_spec(inp) -> tuple[np.dtype, tuple]:
        want = np.dtype(inp.dtype)
        dtype = np.dtype(np.float32) if want.kind == "f" else want
        return dtype, tuple(d if _is_static(d) else 1 for d in inp.shape)

    def _check_file(self, where: str, inp, file: str) -> None:
        # Checked at open (a stat per file) so a bad file fails before calibration starts.
        if not os.path.isfile(file):
            raise DataError(f"{where}: file {file} for input '{inp.name}' does not exist; "
                            f"paths are relative to the list's folder")
        if file.lower().endswith(".npy"):
            return
        dtype, shape = self._raw_spec(inp)
        count = int(np.prod(shape, dtype=np.int64))
        size = os.path.getsize(file)
        if size != count * dtype.itemsize:
            raise DataError(f"{file}: input '{inp.name}' expects {count} {dtype.name} values "
                            f"({count * dtype.itemsize} bytes, shape {_shape_str(shape)}) but the file "
                            f"has {size} bytes; write the input's shape with dynamic dims as 1")

    def _read(self, i):
        out = {}
        for inp in self.inputs:
            file = self._rows[i][inp.name]
            try:
                if file.lower().endswith(".npy"):
                    out[inp.name] = np.load(file, allow_pickle=False)
                else:
                    dtype, shape = self._raw_spec(inp)
                    out[inp.name] = np.fromfile(file, dtype=dtype).reshape(shape)
            except (OSError, ValueError) as err:
                raise DataError(f"{file}: cannot read data for input '{inp.name}' ({_one_line(err)})") from err
        return out

    def _where(self, i, name):
        return self._rows[i][name]


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) triangle-filter weights, widened when shrinking so it averages (as PIL's BILINEAR
    does) instead of aliasing; pixel centres at i + 0.5."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / support)
    return w / w.sum(axis=1, keepdims=True)  # float64: a flat image stays exactly flat


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) float image; done in numpy so .npy and decoded images resize alike."""
    h, w = size
    if img.shape[:2] != (h, w):
        img = np.tensordot(_resize_weights(img.shape[0], h), img, axes=(1, 0))
        img = np.tensordot(_resize_weights(img.shape[1], w), img, axes=(1, 1)).transpose(1, 0, 2)
    return img.astype(np.float32)


def _read_image(path: str, gray: bool) -> np.ndarray:
    """An (H, W, 1 or 3) float32 image in 0..255, RGB order."""
    if path.lower().endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable .npy image ({_one_line(err)})") from err
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.dtype.kind not in "biuf":
            raise DataError(f"{path}: an .npy image must be numbers of shape (H, W) or (H, W, 1|3|4) "
                            f"in 0..255, got {a.dtype.name} {_shape_str(a.shape)}")
        a = a[:, :, :3].astype(np.float32)
        if gray and a.shape[2] == 3:  # ITU-R 601 luma, as Pillow's convert("L")
            a = a @ np.array([[0.299], [0.587], [0.114]], np.float32)
        elif not gray and a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        return a
    try:
        from PIL import Image
    except ImportError as err:
        raise DataError(f"{path}: reading .png/.jpg/.bmp images needs Pillow; run `pip install pillow` "
                        f"or save the images as .npy") from err
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read this image ({_one_line(err)}); replace or remove it") from err
    return a[:, :, None] if a.ndim == 2 else a


class ImageFolderSource(DataSource):
    """A folder of images for a one-input image model, decoded and preprocessed one sample at a time."""

    def __init__(self, folder: str, inputs, *, image_size=None, mean=None, std=None,
                 layout: str = "NCHW", channels: str = "rgb"):
        super().__init__(inputs)
        self.folder = folder
        inp = self._inp = _only_input(folder, self.inputs, "an image folder")
        self.layout, self.channels = str(layout).upper(), str(channels).lower()
        if self.layout not in ("NCHW", "NHWC"):
            raise DataError(f"{folder}: layout must be NCHW or NHWC, got {layout!r}")
        if self.channels not in ("rgb", "bgr", "gray"):
            raise DataError(f"{folder}: channels must be rgb, bgr or gray, got {channels!r}")
        shape = tuple(inp.shape)
        if len(shape) not in (3, 4):
            raise DataError(f"{folder}: input '{inp.name}' has shape {_shape_str(shape)}, not an image "
                            f"(N, C, H, W) / (N, H, W, C) or without N; use .npy, .npz or an input list")
        off = len(shape) - 3  # 1 when there is a batch axis
        c_at, h_at, w_at = (off, off + 1, off + 2) if self.layout == "NCHW" else (off + 2, off, off + 1)
        n_chan = 1 if self.channels == "gray" else 3
        if _is_static(shape[c_at]) and shape[c_at] != n_chan:
            raise DataError(f"{folder}: input '{inp.name}' of shape {_shape_str(shape)} has {shape[c_at]} "
                            f"channels in layout {self.layout} but channels='{self.channels}' gives {n_chan}; "
                            f"check layout and channels")
        if image_size is None:
            if not (_is_static(shape[h_at]) and _is_static(shape[w_at])):
                raise DataError(f"{folder}: input '{inp.name}' of shape {_shape_str(shape)} has a dynamic "
                                f"height or width; give an image size (H, W)")
            image_size = (shape[h_at], shape[w_at])
        if len(image_size) != 2 or not all(_is_static(s) and s > 0 for s in image_size):
            raise DataError(f"{folder}: image size must be two positive whole numbers (H, W), got {image_size!r}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self._int = np.dtype(inp.dtype).kind in "biu"
        if self._int and (mean is not None or std is not None):
            raise DataError(f"{folder}: input '{inp.name}' is {np.dtype(inp.dtype).name}, fed raw 0..255 "
                            f"pixels; drop mean and std")
        self._mean = self._per_channel("mean", mean, 0.0, n_chan)
        self._std = self._per_channel("std", std, 1.0, n_chan)
        if np.any(self._std == 0):
            raise DataError(f"{folder}: std must not be 0, got {std!r}")
        # A static batch axis above 1 takes that many images per sample (a tail that does not fill one is unused).
        self._per = shape[0] if off and _is_static(shape[0]) and shape[0] > 0 else 1
        try:
            names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))
        except OSError as err:
            raise DataError(f"{folder}: cannot list the folder ({_one_line(err)})") from err
        self.files = [os.path.join(folder, f) for f in names]
        self._n = len(self.files) // self._per
        if not self._n:
            raise DataError(f"{folder}: found {len(self.files)} images ({' '.join(IMAGE_EXTS)}) but input "
                            f"'{inp.name}' takes {self._per} per sample; add images or give another DATA")

    def _per_channel(self, what, values, default, n_chan):
        a = np.asarray(default if values is None else values, dtype=np.float32).reshape(-1)
        if a.size not in (1, n_chan):
            raise DataError(f"{self.folder}: {what} needs 1 or {n_chan} values (one per channel, in "
                            f"{self.channels} order), got {values!r}")
        return a

    def _one(self, path: str) -> np.ndarray:
        img = _resize(_read_image(path, self.channels == "gray"), self.image_size)
        if self.channels == "bgr":
            img = img[:, :, ::-1]
        if self._int:
            img = np.clip(np.round(img), 0, 255)
        else:
            img = (img / 255.0 - self._mean) / self._std
        if self.layout == "NCHW":
            img = img.transpose(2, 0, 1)
        img = np.ascontiguousarray(img, dtype=np.float32)
        return img[None] if len(self._inp.shape) == 4 else img

    def _read(self, i):
        files = self.files[i * self._per:(i + 1) * self._per]
        parts = [self._one(f) for f in files]
        return {self._inp.name: parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)}

    def _where(self, i, name):
        return self.files[i * self._per]


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
