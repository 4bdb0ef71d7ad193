"""The CPU sparse-backward benchmark runs at a tiny size; its silencing produces the backward
sparsity it claims (no timing asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sparse_backward.py"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_run_reports_the_silenced_sparsity(capsys):
    spec = importlib.util.spec_from_file_location("bench_sparse_backward_smoke", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--repeats", "1", "--batch", "3", "--bptt", "4", "--hidden", "40",
                       "--input", "8", "--fractions", "0,0.5,0.9"])
    assert [r["silenced"] for r in rows] == [0.0, 0.5, 0.9]
    for r in rows:  # silenced units are never needed; the free ones mostly are
        assert r["unit_sparsity"] == pytest.approx(r["silenced"], abs=0.03)
        assert r["backward_sparsity"] >= r["silenced"] - 1e-9
        assert r["dense_s"] > 0 and r["sparse_s"] > 0
    assert "load average" in capsys.readouterr().out
