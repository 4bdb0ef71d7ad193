"""Sweep progress bar: drawn on a terminal, silent otherwise, counts read from the store."""

from __future__ import annotations

import io
import sys

import pytest

from dualsparse.experiments.runner import WorkerOptions, run_local, work
from dualsparse.experiments.spec import SweepSpec
from dualsparse.experiments.store import ResultStore


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _sweep(tmp_path, n_ok: int = 3):
    spec = SweepSpec.from_dict({"name": "bar", "run": "echo", "output": str(tmp_path / "out"),
                                "grid": [{"i": list(range(n_ok))}, {"i": [99], "fail": ["x"]}]})
    with ResultStore(spec.store_path) as store:
        store.add_sweep(spec.name, spec.to_dict(), spec.expand())
    return spec


def _opts(**kw) -> WorkerOptions:
    return WorkerOptions(sweep="bar", threads=None, heartbeat_s=5, **kw)


def test_bar_on_a_terminal_counts_done_and_failed_runs(tmp_path, monkeypatch, capsys) -> None:
    spec = _sweep(tmp_path)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    counts = work(spec.store_path, spec.output, _opts())
    assert counts == {"done": 3, "failed": 1, "lost": 0}
    drawn = term.getvalue()
    assert "0/4" in drawn and "4/4" in drawn and "failed=1" in drawn
    out = capsys.readouterr().out  # the per-run lines still go to stdout
    assert out.count("] run ") == 4


@pytest.mark.parametrize("tty, progress", [(False, True), (True, False)])
def test_no_bar_when_not_a_terminal_or_disabled(tmp_path, monkeypatch, tty, progress) -> None:
    spec = _sweep(tmp_path)
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    work(spec.store_path, spec.output, _opts(progress=progress, verbose=False))
    assert err.getvalue() == ""


def test_one_bar_for_several_worker_processes(tmp_path, monkeypatch) -> None:
    spec = _sweep(tmp_path, n_ok=2)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    total = run_local(spec.store_path, spec.output, workers=2, options=_opts(verbose=False))
    assert total["done"] == 2 and total["failed"] == 1
    assert "3/3" in term.getvalue()
