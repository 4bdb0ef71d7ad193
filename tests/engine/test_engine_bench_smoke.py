"""The engine benchmark runs (``--quick``) and its rows are consistent; no timing asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(autouse=True)
def _restore_threads():
    t, n = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(t)
    numba.set_num_threads(n)


def _load(name: str):
    sys.path.insert(0, str(BENCH_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_smoke", BENCH_DIR / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH_DIR))
    return mod


def test_quick_benchmark_rows(tmp_path, capsys):
    bench = _load("bench_engine")
    out = tmp_path / "res.json"
    payload = bench.main(["--quick", "--out", str(out)])
    rows = payload["lm"]
    assert [r["mode"] for r in rows] == ["segment", "streaming", "batch"]
    for r in rows:
        assert math.isclose(r["speedup"], r["dense_us_per_token"] / r["engine_us_per_token"])
        assert math.isclose(r["ratio"], r["speedup"] / r["ideal"])
        assert r["ideal"] > 1 and 0 < r["activity"] < 1
        assert set(r["parts_us_per_token"]) == {"input", "recurrent", "decoder", "gates"}
        assert r["values_per_token"]["decoder"] > 0
    assert rows[2]["batch"] == 8
    assert {t["vectors"] for t in payload["threads"]} == {1, 64}
    probes = [(b["matrix"], b["probe"]) for b in payload["thread_bounds"]]
    # a read sweep of every matrix's bytes; torch.mv only where the weights are dense
    assert probes == [("quick-64x48 dense", "read sweep"), ("quick-64x48 dense", "torch.mv"),
                      ("quick-64x48 16x1", "read sweep")]
    assert all(b["t1_us"] > 0 and b["t2_us"] > 0 for b in payload["thread_bounds"])
    assert json.loads(out.read_text())["lm"] == rows
    with pytest.raises(FileExistsError, match="exists"):  # never overwrites a result
        bench.main(["--quick", "--skip-threads", "--modes", "segment", "--out", str(out)])
    text = capsys.readouterr().out
    assert "| scenario |" in text and "load before" in text and "load after" in text


def test_load_check_refuses_a_busy_machine(monkeypatch):
    lib = _load("engine_bench_lib")
    monkeypatch.setattr(lib, "load_average", lambda: 3.0)
    with pytest.raises(SystemExit, match="load average 3.00"):
        lib.check_load(allow=False)
    assert lib.check_load(allow=True) == "LOADED"
    monkeypatch.setattr(lib, "load_average", lambda: 0.2)
    assert lib.check_load(allow=False) == ""


def test_quick_sweep_writes_json_and_plot(tmp_path):
    sweep = _load("bench_engine_sweep")
    out = tmp_path / "sweep.json"
    payload = sweep.main(["--quick", "--out", str(out), "--plot", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").stat().st_size > 1000
    cells = payload["cells"]
    assert {c["mode"] for c in cells} == {"segment", "streaming", "batch"}
    for c in cells:
        assert math.isclose(c["ratio"], c["speedup"] / c["ideal"])
    assert json.loads(out.read_text())["cells"] == cells


def test_quick_block_shapes_rows_and_block_aligned_weights(tmp_path, capsys):
    bench = _load("bench_block_shapes")
    out = tmp_path / "shapes.json"
    payload = bench.main(["--quick", "--shapes", "1x1", "4x4", "16x1", "--vectors", "1", "3",
                          "--input-density", "0.5", "--out", str(out)])
    rows = payload["rows"]
    assert [(r["shape"], r["vectors"]) for r in rows] == [
        (s, n) for s in ("1x1", "4x4", "16x1") for n in (1, 3)]
    for r in rows:  # the engine's product was checked against torch inside the benchmark
        assert math.isclose(r["ratio"], r["speedup"] / r["ideal"])
        assert r["stored_per_nonzero"] >= 1.0 and 0 < r["weight_density"] < 1
    assert json.loads(out.read_text())["rows"] == rows
    w = bench.block_weight(40, 24, 0.3, (4, 4), np.random.default_rng(0))
    tiles = (w.reshape(10, 4, 6, 4) != 0).any(axis=(1, 3))
    assert ((w.reshape(10, 4, 6, 4) != 0).all(axis=(1, 3)) == tiles).all()  # whole tiles
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--shapes", "4by4"])
    assert "is not a block shape" in capsys.readouterr().err


def test_session_runs_one_thread_restores_threads_and_records_load(monkeypatch, capsys):
    lib = _load("engine_bench_lib")
    torch.set_num_threads(2)
    loads = iter([0.4, 0.5, 1.7])  # check_load, load before, load after
    monkeypatch.setattr(lib, "load_average", lambda: next(loads))
    monkeypatch.setattr(lib, "machine", lambda: {"cpu": "test"})
    with lib.one_thread_session("bench_x.py", ["--a", "1"], False, "| head |") as session:
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    payload = session.payload(rows=[1])
    assert list(payload) == ["command", "machine", "load_before", "load_after", "marked",
                             "rows"]
    assert payload["command"] == "python benchmarks/bench_x.py --a 1"
    assert (payload["load_before"], payload["load_after"]) == (0.5, 1.7)
    assert payload["marked"] == "LOADED"  # the load rose above the limit during the run
    text = capsys.readouterr().out
    assert "| head |" in text and "load after 1.70" in text
    monkeypatch.setattr(lib, "load_average", lambda: 0.1)
    with pytest.raises(RuntimeError, match="boom"), \
            lib.one_thread_session("bench_x.py", [], False):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2  # restored on error too


@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
def test_read_sweep_sums_every_element_once(n):
    lib = _load("engine_bench_lib")
    buf = np.arange(1, n + 1, dtype=np.float32)
    for chunks in (1, 2, 3):
        assert lib._read_sum(buf, chunks) == pytest.approx(n * (n + 1) / 2, rel=1e-6)


def test_quick_single_vector_benchmark(tmp_path, capsys):
    bench = _load("bench_single_vector")
    payload = bench.main(["--quick", "--out", str(tmp_path / "sv.json")])
    (row,) = payload["shapes"]
    assert (row["rows"], row["cols"]) == (200, 40)
    assert row["panels_us"] > 0 and row["columns_us"] > 0
    assert row["engine_path"] == "panels"  # under COLUMNS_TRIAL_BYTES: never timed
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--activity", "0"])
    assert "--activity must be in (0, 1]" in capsys.readouterr().err
