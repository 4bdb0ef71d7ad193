"""scripts/gpu_lm_runs.py: the run summary read from metrics.csv/results.json, and the checks
made before any work."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_lm_runs.py"
HEADER = "step,epoch,split,loss,ppl,lr,activity,grad_norm,tokens_per_s,elapsed_s\n"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_lm_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(step, epoch, split, loss, ppl, activity, tokens, elapsed):
    tps = "" if split == "valid" else f"{tokens / elapsed}"
    return f"{step},{epoch},{split},{loss},{ppl},,{activity},,{tps},{elapsed}\n"


def test_summary_of_a_finished_run(tmp_path: Path) -> None:
    g = _load()
    run = tmp_path / "ptb-egru"
    run.mkdir()
    # cumulative tokens 10k @ 10 s, 20k @ 20 s (1000/s), 40k @ 30 s (2000/s); validation;
    # 50k @ 40 s (skipped: an evaluation lies between), 60k @ 44 s (2500/s); validation
    (run / "metrics.csv").write_text(
        HEADER + _row(50, 0, "train", 6.0, 403.4, 0.3, 10_000, 10.0)
        + _row(100, 0, "train", 5.5, 244.7, 0.3, 20_000, 20.0)
        + _row(150, 0, "train", 5.2, 181.3, 0.3, 40_000, 30.0)
        + _row(150, 0, "valid", 5.4, 221.4, 0.28, 0, 34.0)
        + _row(200, 1, "train", 5.0, 148.4, 0.3, 50_000, 40.0)
        + _row(250, 1, "train", 4.9, 134.3, 0.3, 60_000, 44.0)
        + _row(250, 1, "valid", 5.1, 164.0, 0.25, 0, 48.0))
    (run / "results.json").write_text(json.dumps({
        "parameters": 123, "test": {"ppl": 150.5, "batch_size": 1, "seconds": 3.0,
                                    "weights": "best (step 250)",
                                    "accounting": {"layers": [{"activity": 0.2},
                                                              {"activity": 0.25}]}}}))
    s = g.run_summary(run, "ptb-egru", 50.0, 0)
    assert s["steps"] == 250 and s["epochs_completed"] == 2
    assert s["tokens_per_s_training"] == 2000  # median of 1000, 2000, 2500
    assert s["tokens_per_s_with_evaluation"] == round(60_000 / 44)
    assert s["seconds_per_epoch"] == 24.0  # 48 s for two epochs
    assert s["projected_recipe_hours"] == round(24.0 * 1000 / 3600, 2)
    assert s["best_valid_ppl"] == 164.0 and s["valid_ppl_by_epoch"] == [221.4, 164.0]
    assert s["valid_activity"] == 0.25
    assert s["test_ppl"] == 150.5 and s["test_activity_sparsity"] == [0.8, 0.75]


def test_summary_of_a_run_cut_before_its_first_row(tmp_path: Path) -> None:
    g = _load()
    s = g.run_summary(tmp_path / "missing", "ptb-small-lstm", 12.0, None)
    assert s == {"preset": "ptb-small-lstm", "returncode": None, "wall_seconds": 12.0}


def test_bad_arguments_are_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    g = _load()
    out = tmp_path / "done"
    out.mkdir()
    monkeypatch.setattr(sys, "argv", ["gpu_lm_runs.py", "--out", str(out)])
    with pytest.raises(SystemExit, match="exists; results are never overwritten"):
        g.main()
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(sys, "argv", ["gpu_lm_runs.py", "--out", str(fresh), "--mirror",
                                      str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="--mirror .* is not an existing folder"):
        g.main()
    monkeypatch.setattr(sys, "argv", ["gpu_lm_runs.py", "--out", str(fresh), "--budget", "0"])
    with pytest.raises(SystemExit, match="--budget must be positive"):
        g.main()
    assert not fresh.exists()
