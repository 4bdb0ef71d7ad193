"""Numba's on-disk cache must keep the serial and the parallel build of a kernel apart.

Its index keys a function by name and bytecode, not by ``parallel=True``; when both builds
came from one Python function, the first one compiled was loaded for both (the 1-thread
engine ran the 2-thread build). Each test runs fresh interpreters on a private cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SETUP = textwrap.dedent("""
    import numpy as np
    from dualsparse.engine import kernels as K
    from dualsparse.engine.pack import pack_matrix
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    m = pack_matrix(w, block=(1, 1))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    idx = np.zeros((3, 64), np.int32); cnt = np.zeros(3, np.int32)
    K.active_lists(x, idx, cnt)
    out = np.zeros((3, m.rows_padded), np.float32)
    args = (m.panel_ptr, m.indices, m.data, 1, 1, 1, x, idx, cnt, out)
""")


def _run(code: str, cache: str) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "NUMBA_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", SETUP + textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


@pytest.mark.parametrize("first", ["parallel", "serial"])
def test_serial_and_parallel_builds_do_not_share_a_cache_entry(tmp_path, first):
    cache = str(tmp_path / "numba-cache")
    other = "serial" if first == "parallel" else "parallel"
    name = {"parallel": "accumulate_tiles_parallel", "serial": "accumulate_tiles"}
    # 1st process: compile (and cache) only one build
    _run(f"K.{name[first]}(*args)", cache)
    # 2nd process: call only the other build, loaded or compiled from the same cache
    probe = f"""
        import numba
        K.{name[other]}(*args)
        try:
            print(numba.threading_layer())
        except ValueError:
            print("no-threads")
    """
    got = _run(probe, cache)
    # the serial build never starts numba's thread pool; the parallel one does
    if other == "serial":
        assert got == "no-threads"
    else:
        assert got != "no-threads"
    # and both give the same numbers
    same = _run("""
        import numpy as np
        a = out.copy(); K.accumulate_tiles(*args[:-1], a)
        b = out.copy(); K.accumulate_tiles_parallel(*args[:-1], b)
        print(np.array_equal(a, b))
    """, cache)
    assert same == "True"
