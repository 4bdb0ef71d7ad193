"""Fetching and verifying corpus files: sha256 checks and atomic, verified downloads.

Environment: ``$DUALSPARSE_DATA`` (a folder of corpora) and ``$DUALSPARSE_DATA_URL`` (a mirror)
are named in the error messages here and read by :mod:`dualsparse.data.corpora`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dualsparse.atomic import atomic_path

logger = logging.getLogger(__name__)

ENV_DATA = "DUALSPARSE_DATA"
ENV_CACHE = "DUALSPARSE_CACHE"
ENV_URL = "DUALSPARSE_DATA_URL"
_CHUNK_BYTES = 1 << 20


class DataError(RuntimeError):
    """Base class for corpus errors (bad checksum, failed download)."""


class ChecksumError(DataError):
    """A file's sha256 differs from the expected value."""


class DownloadError(DataError):
    """A file could not be downloaded (network error, HTTP error status)."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lowercase hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike[str], expected: str, *, hint: str = "") -> None:
    """Raise :class:`ChecksumError` naming file, expected and actual hash if they differ."""
    actual = sha256_file(path)
    if actual != expected.lower():
        fix = hint or (
            "Delete the file and load the corpus again to re-download it, "
            "or replace it with the original (see docs/data.md)."
        )
        raise ChecksumError(
            f"sha256 mismatch for {path}\n  expected {expected.lower()}\n  actual   {actual}\n{fix}"
        )


def _fetch(url: str, out: Path, timeout_s: float) -> str:
    """Stream ``url`` into ``out`` (fsynced); return the sha256 of the bytes written."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "dualsparse-data/1"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response, open(out, "wb") as f:
        for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def download_file(
    url: str, dest: str | os.PathLike[str], sha256: str, timeout_s: float = 60.0
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``sha256`` before it appears.

    Bytes go to a temp file in ``dest``'s folder, which is renamed onto ``dest`` only if the hash
    matches; on any error the temp file is removed and ``dest`` is left untouched.
    Raises :class:`DownloadError` (network/HTTP) or :class:`ChecksumError` (wrong bytes).
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"unsupported URL scheme {scheme!r} in {url!r}")
    logger.info("downloading %s -> %s", url, dest)
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            actual = _fetch(url, tmp, timeout_s)
        except urllib.error.HTTPError as exc:
            raise DownloadError(
                f"download of {url} failed: HTTP {exc.code} {exc.reason}. "
                f"Check the URL / ${ENV_URL}, or place the file at {dest} by hand."
            ) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise DownloadError(
                f"download of {url} failed: {exc}. Check the network connection, or place the "
                f"file at {dest} by hand (or set ${ENV_DATA})."
            ) from exc
        if actual != sha256.lower():
            raise ChecksumError(
                f"sha256 mismatch for download of {url} (intended for {dest})\n"
                f"  expected {sha256.lower()}\n  actual   {actual}\n"
                "Nothing was saved. The source or mirror serves different bytes; "
                f"use the canonical source or fix the mirror (${ENV_URL})."
            )
    return dest


__all__ = [
    "ENV_CACHE",
    "ENV_DATA",
    "ENV_URL",
    "ChecksumError",
    "DataError",
    "DownloadError",
    "download_file",
    "sha256_file",
    "verify_file",
]
