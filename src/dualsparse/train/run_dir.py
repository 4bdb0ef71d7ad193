"""Run folders: never replace a run by accident, and one training process per folder.

* :func:`prepare_run_dir` checks an output folder before any work is spent: it refuses a
  folder that already holds a run unless the run is resumed or ``overwrite`` is given, a path
  that is a file, and a folder that cannot be written.
* :class:`RunLock` is a lock file ``.dualsparse.lock`` in the run folder holding the owner's
  pid and host; a second process refuses the folder while the owner lives. A lock left by a
  dead process on this host (or an empty lock file older than :data:`STALE_EMPTY_S`) is stale
  and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

LOCK_NAME = ".dualsparse.lock"
#: files that mark a folder as holding a run (besides checkpoint tensor files); a sweep
#: runner's ``config.json``/``metrics.json`` beside them are not the run's and stay
RUN_FILES = ("latest.json", "best.json", "model.json", "results.json", "metrics.csv")
#: tensor-file prefixes of the checkpoints a run writes
RUN_TAGS = ("latest", "best", "model")
STALE_EMPTY_S = 30.0


class RunLockedError(ValueError):
    """The run folder is locked by another live process."""


def run_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The files of a run in ``directory`` (pointers, tensor files, metrics), sorted."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [d / n for n in RUN_FILES if (d / n).is_file()]
    for tag in RUN_TAGS:
        found.extend(d.glob(f"{tag}-*.safetensors"))
    return sorted(found)


def check_writable(directory: str | os.PathLike[str], flag: str) -> Path:
    """Create ``directory`` (and parents) and check that a file can be written in it;
    ``ValueError`` naming ``flag`` and the path otherwise."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ValueError(f"{flag} {d} is a file, not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {d} is not writable: {exc.strerror or exc}") from None
    return d


def check_output_file(path: str | os.PathLike[str], flag: str, overwrite: bool = False
                      ) -> Path:
    """Check before the work that result file ``path`` can be written: not an existing file
    (unless ``overwrite``), not a folder, its folder writable."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p} is a folder, not a file")
    if p.exists() and not overwrite:
        raise ValueError(f"{flag} {p} already exists; pass --overwrite to replace it or "
                         "choose another name")
    check_writable(p.parent if str(p.parent) else Path("."), flag)
    return p


def prepare_run_dir(directory: str | os.PathLike[str], *, resume: bool, overwrite: bool,
                    flag: str = "--save") -> Path:
    """Check run folder ``directory`` before training (see the module docstring).

    ``resume`` needs a ``latest`` checkpoint there; otherwise a folder holding a run is
    refused unless ``overwrite``. Returns the folder (created).
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ValueError(f"{flag} {d} is a file, not a folder")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if resume:
        if not (d / "latest.json").is_file():
            raise ValueError(f"--resume: {flag} {d} has no latest checkpoint (latest.json)")
    elif run_files(d) and not overwrite:
        names = ", ".join(p.name for p in run_files(d)[:4])
        raise ValueError(f"{flag} {d} already holds a run ({names}); pass --resume to continue "
                         "it, --overwrite to replace it, or choose another folder")
    return check_writable(d, flag)


def clear_run(directory: str | os.PathLike[str], also: tuple[str, ...] = ()) -> list[Path]:
    """Delete the run files of ``directory`` and the files named in ``also`` (``--overwrite``,
    with the lock held); returns what was deleted. Other files are left alone."""
    removed = run_files(directory) + [Path(directory) / n for n in also
                                      if (Path(directory) / n).is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive lock on run folder ``directory`` (a context manager); ``flag`` names the
    folder's option in errors."""

    def __init__(self, directory: str | os.PathLike[str], flag: str = "--save") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.flag = flag
        self.info = {"pid": os.getpid(), "host": socket.gethostname()}
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        """The lock file's content; None if it is unreadable (e.g. empty)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stale(self, owner: dict[str, Any] | None) -> bool:
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            return age > STALE_EMPTY_S
        pid = owner.get("pid")
        return (owner.get("host") == self.info["host"] and isinstance(pid, int)
                and not _pid_alive(pid))

    def acquire(self) -> RunLock:
        """Take the lock; :class:`RunLockedError` if a live process holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if self._stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                who = (f"pid {owner.get('pid')} on {owner.get('host')}" if owner
                       else "another process")
                raise RunLockedError(
                    f"{self.flag} {self.directory} is in use by {who} (lock file {self.path}); "
                    "wait for it to finish, or delete the lock file if that process is "
                    "gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump({**self.info, "started": time.time()}, f)
            self.held = True
            return self
        raise RunLockedError(f"{self.flag} {self.directory}: could not take the lock "
                             f"{self.path} (it keeps changing)")

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == self.info["pid"]:
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


__all__ = ["LOCK_NAME", "RUN_FILES", "RunLock", "RunLockedError", "check_output_file",
           "check_writable", "clear_run", "prepare_run_dir", "run_files"]
