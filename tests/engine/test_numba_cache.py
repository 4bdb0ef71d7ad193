"""The engine's numba cache is dropped when any engine source changes (a stale cached caller
keeps its old callees linked in)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import dualsparse.engine
from dualsparse.engine import numba_cache


def _cached(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "__pycache__").glob("*.nb*"))


def test_cache_files_are_dropped_exactly_when_a_source_changes(tmp_path: Path) -> None:
    (tmp_path / "kernels.py").write_text("A = 1\n")
    (tmp_path / "gates.py").write_text("B = 2\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    for name in ("gates.f-1.py311.nbi", "gates.f-1.py311.1.nbc", "gates.cpython-311.pyc"):
        (cache / name).write_text("x")
    assert numba_cache.refresh(tmp_path)  # no digest yet: the files' origin is unknown
    assert _cached(tmp_path) == [] and (cache / "gates.cpython-311.pyc").exists()
    (cache / "gates.f-1.py311.nbi").write_text("compiled from these sources")
    assert not numba_cache.refresh(tmp_path)  # same sources: kept
    assert _cached(tmp_path) == ["gates.f-1.py311.nbi"]
    (tmp_path / "kernels.py").write_text("A = 3\n")  # another module than the cached one
    assert numba_cache.refresh(tmp_path)
    assert _cached(tmp_path) == []
    assert (cache / numba_cache.STAMP).read_text() == numba_cache.sources_digest(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_installation_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "kernels.py").write_text("A = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "k.nbi").write_text("x")
    cache.chmod(0o555)
    try:
        assert not numba_cache.refresh(tmp_path)
        assert _cached(tmp_path) == ["k.nbi"]
    finally:
        cache.chmod(0o755)


def test_the_engine_import_left_its_digest() -> None:
    folder = Path(dualsparse.engine.__file__).parent
    stamp = folder / "__pycache__" / numba_cache.STAMP
    if not os.access(folder, os.W_OK):
        pytest.skip("read-only installation")
    assert stamp.read_text() == numba_cache.sources_digest(folder)
