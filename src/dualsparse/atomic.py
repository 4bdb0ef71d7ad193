"""Atomic file writes: readers see the old file or the complete new one, never a partial one.

Every writer puts the data in a temporary file in the target folder, fsyncs it, renames it
onto the target (``os.replace``) and fsyncs the folder; on any error the temporary file is
removed and the target is left as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that needs a file name (e.g.
    safetensors' ``save_file``); when the block ends without error the file is fsynced
    and renamed onto ``path``, otherwise deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary binary file, then move it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = True,
                      allow_nan: bool = True) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (``allow_nan=False`` refuses
    NaN/inf, which strict JSON readers reject)."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=allow_nan) + "\n"
    return atomic_write_text(path, text)


__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text"]
