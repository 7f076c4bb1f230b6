"""Atomic file writes: a temp file in the target folder, then a rename, so a crash or a full disk
never leaves a half-written file where the old one was."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

from ..errors import QInspectError

_FIXES = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
    errno.EROFS: "the folder is on a read-only file system; choose another folder",
    errno.EACCES: "no permission to write there; choose another folder",
    errno.EPERM: "no permission to write there; choose another folder",
    errno.EISDIR: "that path is a folder; choose a file name",
}


def write_error(path, exc: OSError, started: bool = True) -> QInspectError:
    """The one-line error for a failed write of `path`: its cause and what to do."""
    why = exc.strerror or type(exc).__name__
    fix = _FIXES.get(exc.errno, "choose another folder or try again")
    kept = "; the previous file is unchanged" if started and os.path.exists(path) else ""
    return QInspectError(f"{path}: writing failed ({why}){kept}; {fix}")


def check_target(path, protect=()) -> Path:
    """`path` as a Path, refusing input files in `protect` and folders that do not exist."""
    path = Path(path)
    for p in protect:
        if p is not None and path.resolve() == Path(p).resolve():
            raise QInspectError(f"{path}: refusing to overwrite the input file; choose another output path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise QInspectError(f"{path}: folder {folder} {what}; create it or choose another path")
    if path.is_dir():
        raise QInspectError(f"{path}: is a folder; choose a file name")
    return path


def atomic_write(path, data: bytes | str, *, protect=()) -> Path:
    """Write `data` to `path` atomically. Refuse to overwrite any path listed in `protect`.

    On any failure (disk full, read-only folder, interruption) the temp file is removed and the
    previous file at `path`, if any, is left as it was.
    """
    path = check_target(path, protect)
    folder = path.parent if str(path.parent) else Path(".")
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise write_error(path, exc, started=False) from exc
    try:
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600 files; other tools and users should read ours
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
    return path


def read_json(path, error=QInspectError, fix: str = "fix the file or write it again"):
    """Parse a JSON file; every failure is one `error` naming the file, the cause and `fix`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror}); check the path") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text JSON file (not UTF-8); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None
