"""The session guard of tests/conftest.py sees a test's child processes, grandchildren
included, and stops seeing them once they are gone."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _guard():
    path = Path(__file__).resolve().parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("conftest_leak_guard", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_children_and_grandchildren_are_seen_until_they_exit():
    guard = _guard()
    me = os.getpid()
    before = set(guard._children(me))
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 30
        found = {}
        while time.monotonic() < deadline and len(found) < 2:  # sh, then its sleep
            found = guard.leaked_children(me, before, 0.0)
            time.sleep(0.05)
        assert proc.pid in found and "sleep 60" in " ".join(found.values()), found
    finally:
        for pid in guard.leaked_children(me, before, 0.0):
            os.kill(pid, 9)
        proc.wait(timeout=30)
    assert guard.leaked_children(me, before, 5.0) == {}
