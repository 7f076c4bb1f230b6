"""External tensor data: the input model's data files, and the data file an export writes."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from ..errors import QInspectError
from ..graph.edit import all_graphs

ALIGN = 4096  # data offsets on page boundaries, so onnxruntime can map tensors instead of copying
_CHUNK = 16 << 20


def _external_input_files(index) -> list[str]:
    """External data files of the input model, which an export must never overwrite."""
    if not index.path:
        return []
    base = os.path.dirname(os.path.abspath(index.path))
    try:
        if os.path.getsize(index.path) > 64 << 20:
            return []  # an inline model; a model with external data has a small .onnx file
        raw = onnx.load(index.path, load_external_data=False)
    except Exception:
        return []
    files = set()
    for g in all_graphs(raw.graph):
        for t in g.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), "")
                files.add(os.path.join(base, loc))
    return sorted(files)


def _write_data(model: onnx.ModelProto, data_path: Path, location: str, source_dir: str | None,
                threshold: int = 1024) -> bool:
    """Move the tensor data of `model` into one file at `data_path`, recorded under `location`:
    tensors of `threshold` bytes or more held in the proto, and tensors still stored in the input
    model's external files under `source_dir` (copied in chunks). True if the file got any data."""
    from ..graph.model import FIXED_SIZE_TYPES, _all_tensors, _external_info

    wrote = False
    with open(data_path, "wb") as out:
        for t in _all_tensors(model.graph):
            if t.data_location == TensorProto.EXTERNAL:
                info = _external_info(t)
                if source_dir is None:
                    raise QInspectError(f"tensor '{t.name}' refers to external data that was not loaded; "
                                        "please report this with the model")
                length = int(info.get("length", 0) or 0) or len(numpy_helper.to_array(t, source_dir).tobytes())
                pos = _pad(out)
                with open(os.path.join(source_dir, info.get("location", "")), "rb") as src:
                    src.seek(int(info.get("offset", 0) or 0))
                    left = length
                    while left:
                        chunk = src.read(min(left, _CHUNK))
                        if not chunk:
                            raise QInspectError(f"external data of tensor '{t.name}' is truncated; re-export the "
                                                "input model")
                        out.write(chunk)
                        left -= len(chunk)
            else:
                if not t.HasField("raw_data") and t.data_type in FIXED_SIZE_TYPES and t.ByteSize() >= threshold:
                    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))  # typed fields -> raw
                if not t.HasField("raw_data") or len(t.raw_data) < threshold:
                    continue
                length = len(t.raw_data)
                pos = _pad(out)
                out.write(t.raw_data)
                t.ClearField("raw_data")
            del t.external_data[:]
            for key, value in (("location", location), ("offset", str(pos)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            t.data_location = TensorProto.EXTERNAL
            wrote = True
    return wrote


def _pad(out) -> int:
    pos = out.tell()
    if pos % ALIGN:
        out.write(b"\0" * (ALIGN - pos % ALIGN))
    return out.tell()
