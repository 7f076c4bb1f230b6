"""Calibration data read from many files: a QNN-style input list of .raw/.npy files, and a folder of
images decoded and preprocessed one sample at a time (`data.py` opens them)."""
from __future__ import annotations

import os

import numpy as np

from .data_source import DataSource, _is_static, _one_line, _only_input, _shape_str
from ..errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".npy")


class InputListSource(DataSource):
    """A QNN-style input list: a line per sample, `path` or `name:=path` pairs, of .raw (or .npy) files.

    A .raw holds the input's shape with dynamic dims as 1, in float32 for float inputs (the QNN
    convention) and in the input's own dtype otherwise. Lines that start with `%` name output
    tensors and lines that start with `#` output layers (nodes), as the QNN tools take them: they go
    to `output_tensors` and `output_layers`, which the comparison then measures as the outputs.
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
            if not line:
                continue
            if line[0] in "%#":  # output tensor (%) or layer (#) names, space separated
                names_out = self.output_tensors if line[0] == "%" else self.output_layers
                names_out.extend(n for n in line[1:].split() if n not in names_out)
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
