"""benchmarks/bench_compile.py runs (--quick, eager backend); no timing is asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_compile.py"


def test_bench_compile_quick(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("bench_compile_smoke", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "rows.json"
        rows = bench.main(["--quick", "--backend", "eager", "--models", "gru",
                           "--json", str(out)])
        assert [r["how"] for r in rows] == ["eager", "whole", "steps"]
        assert all(r[k] > 0 for r in rows for k in ("first T1", "run T1", "first T2", "run T2"))
        with pytest.raises(ValueError, match="--json"):
            bench.main(["--quick", "--backend", "eager", "--models", "gru", "--json", str(out)])
        with pytest.raises(ValueError, match="--models"):
            bench.main(["--quick", "--models", "rnn"])
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
