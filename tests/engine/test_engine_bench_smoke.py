"""The engine benchmark runs (``--quick``) and its table is consistent; no timing asserted."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numba
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_engine.py"


@pytest.fixture(autouse=True)
def _restore_threads():
    t, n = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(t)
    numba.set_num_threads(n)


def _load():
    spec = importlib.util.spec_from_file_location("bench_engine_smoke", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_benchmark_table(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "res.json"
    payload = bench.main(["--quick", "--batches", "1", "--threads", "1", "--skip-layers",
                          "--out", str(out)])
    rows = payload["matrices"]
    # 1 dense + 2 sparse densities x 2 patterns, 2 activity levels
    assert len(rows) == 5 * 2
    for r in rows:
        assert math.isclose(r["ideal"], 1.0 / (r["d_a"] * r["d_w"]))
        assert math.isclose(r["ratio"], r["speedup"] / r["ideal"])
        assert r["t_engine_us"] > 0 and r["t_dense_us"] > 0
    assert json.loads(out.read_text())["matrices"] == rows
    assert "| matrix |" in capsys.readouterr().out


def test_layer_benchmark_runs_tiny():
    bench = _load()
    layers = bench.run_layers(hidden=32, steps=4, repeats=1, seed=0)
    assert {r["layer"] for r in layers} == {"EGRU 32->32", "LSTM 32->32"}
    for r in layers:
        assert r["t_engine_us"] > 0 and 0 < r["recurrent_d_a"] <= 1


def test_quick_lm_benchmark(tmp_path):
    bench = _load()
    payload = bench.main(["--quick", "--batches", "1", "--threads", "1", "--skip-layers",
                          "--matrices", "egru1350_hh", "--lm", "--out", str(tmp_path / "r.json")])
    (r,) = payload["lm"]
    assert r["ppl_rel_diff"] < 1e-4
    assert r["engine_us_per_token"] > 0 and r["dense_seq_us_per_token"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["lm"][0]["vocab"] == 500
