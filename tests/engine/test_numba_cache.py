"""The engine's numba cache lives in one directory per version of the engine's sources, so a
process running other sources (a sweep started before an edit) can never hand its compiled
callers to a later process (a stale cached caller keeps its old callees linked in)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from numba.core import config

import dualsparse.engine
from dualsparse.engine import gates, kernels, numba_cache


def _sources(folder: Path) -> None:
    (folder / "kernels.py").write_text("A = 1\n")
    (folder / "gates.py").write_text("B = 2\n")


def test_the_cache_directory_changes_exactly_when_a_source_changes(tmp_path: Path) -> None:
    _sources(tmp_path)
    first = numba_cache.cache_dir(tmp_path)
    assert first.parent == tmp_path / "__pycache__"
    assert first.name.startswith(numba_cache.PREFIX)
    assert numba_cache.cache_dir(tmp_path) == first  # same sources, same directory
    (tmp_path / "kernels.py").write_text("A = 3\n")  # another module than a cached caller's
    assert numba_cache.cache_dir(tmp_path) != first
    (tmp_path / "kernels.py").write_text("A = 1\n")
    assert numba_cache.cache_dir(tmp_path) == first
    user = numba_cache.cache_dir(tmp_path, user_root=str(tmp_path / "user"))
    assert user.parent == tmp_path / "user" / "dualsparse-engine" and user.name == first.name


def test_prune_keeps_the_current_and_recent_versions(tmp_path: Path) -> None:
    _sources(tmp_path)
    cache = tmp_path / "__pycache__"
    current = numba_cache.cache_dir(tmp_path)
    old, recent = cache / f"{numba_cache.PREFIX}0000", cache / f"{numba_cache.PREFIX}1111"
    for d in (current, old, recent):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "k.nbi").write_text("x")
    day_ago = time.time() - 2 * numba_cache.MAX_AGE_S
    for p in (old, old / "sub", old / "sub" / "k.nbi"):
        os.utime(p, (day_ago, day_ago))
    for name in ("gates.f-1.py311.nbi", "gates.f-1.py311.1.nbc", numba_cache.LEGACY_STAMP,
                 "gates.cpython-311.pyc"):
        (cache / name).write_text("x")
    gone = numba_cache.prune(current, tmp_path)
    assert old in gone and not old.exists()
    assert current.exists() and recent.exists()  # a running older process may write there
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [current.name, recent.name, "gates.cpython-311.pyc"])


def test_engine_cache_sets_numba_cache_dir_only_inside_the_block(tmp_path: Path) -> None:
    _sources(tmp_path)
    before = config.CACHE_DIR
    try:
        config.CACHE_DIR = ""
        with numba_cache.engine_cache(tmp_path) as path:
            assert config.CACHE_DIR == str(path) == str(numba_cache.cache_dir(tmp_path))
        assert config.CACHE_DIR == ""
        config.CACHE_DIR = str(tmp_path / "user")  # a user's NUMBA_CACHE_DIR stays the root
        with numba_cache.engine_cache(tmp_path) as path:
            assert path.parent == tmp_path / "user" / "dualsparse-engine"
        assert config.CACHE_DIR == str(tmp_path / "user")
    finally:
        config.CACHE_DIR = before


def test_the_engine_kernels_are_cached_under_the_digest_of_its_sources() -> None:
    folder = Path(dualsparse.engine.__file__).parent
    want = numba_cache.cache_dir(folder, config.CACHE_DIR)
    for fn in (kernels.accumulate_event, kernels.accumulate_tiles_parallel,
               gates.recurrent_segment):
        path = Path(fn._cache._cache_path)
        if os.access(folder, os.W_OK) or config.CACHE_DIR:
            assert path.parent == want, fn
    assert config.CACHE_DIR == os.environ.get("NUMBA_CACHE_DIR", "")  # restored
