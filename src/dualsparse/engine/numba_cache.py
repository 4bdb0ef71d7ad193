"""Numba's on-disk cache of the engine's kernels, one directory per version of the sources.

Numba checks a cached function against its own source file only. A cached caller (e.g.
``gates.recurrent_segment``) has its callees (``kernels.accumulate_event`` and below) linked
in, so after ``kernels.py`` changes the caller still runs the old callees; a stale caller
crashed the test suite with a segmentation fault twice. Deleting the cache when the sources
change is not enough: a process started before the edit (a sweep in the background) still
runs, compiles and writes the *old* code's entries after the deletion, and they look valid
to every later process (gates.py did not change).

So the kernels are cached in a directory named after a SHA-256 of all the engine's source
files (:func:`cache_dir`): processes running different sources never share entries.
:func:`engine_cache` sets it while :mod:`dualsparse.engine` imports its kernel modules (numba
picks a function's cache directory when the function is decorated) and restores numba's
setting afterwards; :func:`prune` deletes the directories of other versions once unused for
a day. A user's
``NUMBA_CACHE_DIR`` is kept as the root. Where the directory cannot be written (a read-only
installation), numba falls back to its usual locations.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from numba.core import config

#: Prefix of the per-version cache directories.
PREFIX = "numba-"
#: The digest file of the single cache directory used before (deleted by :func:`prune`).
LEGACY_STAMP = "numba-sources.sha256"
#: :func:`prune` keeps other versions' directories written to within this many seconds.
MAX_AGE_S = 24 * 3600.0


def sources_digest(folder: Path) -> str:
    """SHA-256 over the names and bytes of the ``*.py`` files in ``folder`` (sorted)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _last_write(path: Path) -> float:
    """Latest modification time of ``path`` and everything below it."""
    return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))])


def _root(folder: Path, user_root: str) -> Path:
    return Path(user_root) / "dualsparse-engine" if user_root else folder / "__pycache__"


def cache_dir(folder: str | os.PathLike[str] | None = None, user_root: str = "") -> Path:
    """The cache directory of the current sources of ``folder`` (default: the engine):
    ``<root>/numba-<first 16 hex digits of the digest>``, the root being ``folder/__pycache__``
    or ``<user_root>/dualsparse-engine``."""
    folder = Path(folder) if folder is not None else Path(__file__).parent
    return _root(folder, user_root) / f"{PREFIX}{sources_digest(folder)[:16]}"


def prune(keep: Path, folder: str | os.PathLike[str] | None = None,
          max_age_s: float = MAX_AGE_S) -> list[Path]:
    """Delete the cache directories beside ``keep`` (:func:`cache_dir` of the current
    sources) of other source versions unused for ``max_age_s`` seconds (a process still
    running older sources may be writing into its own), and numba's cache files of the
    engine left directly in ``folder/__pycache__`` (from before per-version directories);
    return what was deleted. Errors (a read-only installation) are ignored."""
    folder = Path(folder) if folder is not None else Path(__file__).parent
    gone: list[Path] = []
    now = time.time()
    for path in sorted(keep.parent.glob(f"{PREFIX}*")):
        with contextlib.suppress(OSError):
            if path != keep and path.is_dir() and now - _last_write(path) > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
                gone.append(path)
    legacy = folder / "__pycache__"
    for path in [*legacy.glob("*.nbi"), *legacy.glob("*.nbc"), *legacy.glob(LEGACY_STAMP)]:
        with contextlib.suppress(OSError):
            path.unlink()
            gone.append(path)
    return gone


@contextlib.contextmanager
def engine_cache(folder: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Within the block, numba caches newly decorated functions in :func:`cache_dir` (the
    previous ``numba.config.CACHE_DIR`` is restored on exit); other versions' directories
    are pruned first."""
    user_root = config.CACHE_DIR or ""
    path = cache_dir(folder, user_root)
    prune(path, folder)
    config.CACHE_DIR = str(path)
    try:
        yield path
    finally:
        config.CACHE_DIR = user_root


__all__ = ["MAX_AGE_S", "PREFIX", "cache_dir", "engine_cache", "prune", "sources_digest"]
