"""Atomic file writes: a temp file in the target folder, then a rename, so a crash or a full disk
never leaves a half-written file where the old one was."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import QInspectError


def atomic_write(path, data: bytes | str, *, protect=()) -> Path:
    """Write `data` to `path` atomically. Refuse to overwrite any path listed in `protect`."""
    path = Path(path)
    for p in protect:
        if p is not None and path.resolve() == Path(p).resolve():
            raise QInspectError(f"{path}: refusing to overwrite the input file; choose another output path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise QInspectError(f"{path}: folder {folder} does not exist; create it or choose another path")
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise QInspectError(f"{path}: cannot write in {folder} ({exc.strerror}); choose another folder") from exc
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600 files; other tools and users should read ours
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise QInspectError(f"{path}: writing failed ({exc.strerror}); the previous file is unchanged") from exc
    return path
