"""dualsparse.malloc: the command line sets glibc's thresholds once; the switch turns it off."""

from __future__ import annotations

import ctypes
import sys

import pytest

from dualsparse import cli, malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_thresholds_are_set_on_glibc(monkeypatch) -> None:
    calls = []

    class FakeMallopt:  # records what would reach glibc
        def __call__(self, param, value):
            calls.append((param, value))
            return 1

    class FakeLibc:
        mallopt = FakeMallopt()

    monkeypatch.delenv(malloc.ENV, raising=False)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert malloc.keep_freed_memory()
    assert calls == [(malloc.M_MMAP_THRESHOLD, 32 * 1024 * 1024),
                     (malloc.M_TRIM_THRESHOLD, 2**31 - 1)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_real_glibc_accepts_them() -> None:
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("not glibc")
    assert malloc.keep_freed_memory()  # mallopt returned 1 for both


def test_the_environment_switch_and_a_libc_without_mallopt(monkeypatch) -> None:
    monkeypatch.setenv(malloc.ENV, "0")
    assert not malloc.keep_freed_memory()
    monkeypatch.delenv(malloc.ENV)

    class NoMallopt:
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda name: NoMallopt())
    assert not malloc.keep_freed_memory()


def test_the_command_line_calls_it(monkeypatch, capsys) -> None:
    called = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: called.append(True) or True)
    monkeypatch.setitem(cli.COMMANDS, "eval", lambda argv: None)
    assert cli.main(["eval"]) == 0
    assert called == [True]
