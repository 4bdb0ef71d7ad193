"""Numba's on-disk cache of the engine's kernels, kept in step with the engine's sources.

Numba checks a cached function against its own source file only. A cached caller (e.g.
``gates.recurrent_segment``) has its callees (``kernels.accumulate_event`` and below) linked
in, so after ``kernels.py`` or ``simd.py`` changes the caller still runs the old callees; a
stale caller once crashed the test suite with a segmentation fault. :func:`refresh`, called
when :mod:`dualsparse.engine` is imported, deletes the cached kernels whenever any source
file of the engine differs from the ones they were compiled from (a digest kept beside
them). A read-only installation is left alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Name of the digest file in the engine's ``__pycache__``.
STAMP = "numba-sources.sha256"


def sources_digest(folder: Path) -> str:
    """SHA-256 over the names and bytes of the ``*.py`` files in ``folder`` (sorted)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def refresh(folder: str | os.PathLike[str] | None = None) -> bool:
    """Delete ``folder/__pycache__/*.nbi|*.nbc`` if the sources of ``folder`` (default: the
    engine) changed since the digest was last written, then write the digest; return whether
    anything was deleted. Errors writing (a read-only installation) are ignored."""
    folder = Path(folder) if folder is not None else Path(__file__).parent
    cache = folder / "__pycache__"
    digest = sources_digest(folder)
    stamp = cache / STAMP
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    removed = False
    try:
        for path in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            path.unlink(missing_ok=True)
            removed = True
        cache.mkdir(exist_ok=True)
        tmp = cache / f".{STAMP}.{os.getpid()}"
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    except OSError:
        pass
    return removed


__all__ = ["STAMP", "refresh", "sources_digest"]
