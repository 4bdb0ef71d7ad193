"""The RTRL scripts run in --quick mode: online-learning comparison, speed benchmark, plots.

No timing is asserted; the benchmark's own exactness check (dense = sparse = BPTT) is.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numba
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_threads():
    t, n = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(t)
    numba.set_num_threads(n)


def _load(rel: str):
    path = ROOT / rel
    spec = importlib.util.spec_from_file_location(path.stem + "_smoke", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_online_example_quick(tmp_path):
    mod = _load("examples/rtrl_online.py")
    out = tmp_path / "online.json"
    res = mod.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["args"]["quick"] is True
    for method in mod.METHODS:
        r = res[method]
        assert r["steps"] > 0 and r["ms_per_step"] > 0 and r["memory_bytes"] > 0
        assert 0.0 <= r["held_out_acc"] <= 1.0
    # both RTRL engines hold the same network: dense stores every column, twice
    assert res["dense-rtrl"]["memory_bytes"] > res["sparse-rtrl"]["memory_bytes"]
    assert 0.0 < res["sparse-rtrl"]["active_fraction"] <= 1.0
    with pytest.raises(FileExistsError, match="--out"):
        mod.main(["--quick", "--out", str(out)])
    with pytest.raises(ValueError, match="--delay-max"):
        mod.main(["--quick", "--delay-min", "5", "--delay-max", "3"])


def test_speed_benchmark_quick_checks_exactness_and_saves_cells(tmp_path):
    mod = _load("benchmarks/rtrl_speed.py")
    cells = tmp_path / "cells"
    first = mod.main(["--quick", "--cells-dir", str(cells), "--out", str(tmp_path / "a.json")])
    assert first["all_exact"]
    (row,) = first["rows"]
    assert row["err_sparse_bptt"] < 1e-10 and row["err_dense_bptt"] < 1e-10
    assert row["err_sparse_dense"] < 1e-10
    assert 0 < row["lambda_a"] <= 1 and 0 < row["lambda_w"] < 1
    assert row["counted_saving"] > 1 and row["dense_bytes"] > row["sparse_bytes"]
    assert row["speedup"] > 0 and row["mm_gmacs"] > 0 and row["dense_gmacs"] > 0
    assert row["train"]["loaded"] is False
    saved = sorted(p.name for p in cells.iterdir())
    assert saved == ["egru_h8_sparsity50_seed0.json", "egru_h8_sparsity50_seed0.safetensors"]
    second = mod.main(["--quick", "--cells-dir", str(cells), "--out", str(tmp_path / "b.json")])
    (again,) = second["rows"]
    assert again["train"]["loaded"] is True
    assert again["lambda_a"] == row["lambda_a"] and again["m_density"] == row["m_density"]
    # other training settings must not silently reuse the saved cell
    with pytest.raises(ValueError, match="other settings"):
        mod.main(["--quick", "--cells-dir", str(cells), "--train-lr", "0.1"])
    with pytest.raises(FileExistsError, match="--out"):
        mod.main(["--quick", "--out", str(tmp_path / "a.json")])


def test_speed_benchmark_reports_a_refused_dense_engine(tmp_path):
    mod = _load("benchmarks/rtrl_speed.py")
    res = mod.main(["--quick", "--max-bytes", "50000"])
    (row,) = res["rows"]
    assert "max_bytes" in row["dense_refused"] and "speedup" not in row
    assert row["sparse_refused"] is None
    assert res["all_exact"] and row["err_sparse_bptt"] < 1e-10
    res = mod.main(["--quick", "--max-bytes", "1000"])
    (row,) = res["rows"]
    assert "max_bytes" in row["sparse_refused"] and "lambda_a" not in row


def test_plots_written_and_never_overwritten(tmp_path):
    bench = _load("benchmarks/rtrl_speed.py")
    data = tmp_path / "speed.json"
    bench.main(["--quick", "--out", str(data)])
    plots = _load("benchmarks/rtrl_plots.py")
    paths = plots.main([str(data), "--batch", "2", "--out-dir", str(tmp_path / "fig")])
    assert [p.name for p in paths] == list(plots.NAMES)
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(FileExistsError, match="not overwriting"):
        plots.main([str(data), "--batch", "2", "--out-dir", str(tmp_path / "fig")])
    with pytest.raises(ValueError, match="--batch 3"):
        plots.main([str(data), "--batch", "3", "--out-dir", str(tmp_path / "fig2")])
