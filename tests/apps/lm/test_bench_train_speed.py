"""benchmarks/bench_train_speed.py runs, refuses a loaded machine and never overwrites --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_train_speed.py"
needs_ptb = pytest.mark.skipif(
    not (Path(os.environ.get("DUALSPARSE_DATA", "/nonexistent")) / "ptb").is_dir(),
    reason="needs DUALSPARSE_DATA with ptb/")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=300)


@needs_ptb
def test_speed_benchmark_writes_both_presets_and_marks_load(tmp_path) -> None:
    out = tmp_path / "speed.json"
    res = _run("--allow-load", "--steps", "2", "--repeats", "1", "--threads", "1",
               "--step-loop", "--out", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    # --step-loop adds a variant for the LSTM preset only (the EGRU has no step-loop switch)
    assert set(data["tokens_per_s"]) == {"ptb-small-lstm", "ptb-small-egru",
                                         "ptb-small-lstm/step-loop"}
    assert all(v["1"] > 0 for v in data["tokens_per_s"].values())
    assert data["loaded"] == (max(data["load_before"], data["load_after"]) > 1.5)
    again = _run("--allow-load", "--steps", "2", "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
