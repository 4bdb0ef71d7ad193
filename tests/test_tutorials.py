"""The tutorials in docs/tutorials.md run (``--quick``) and show what they claim."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lstm_to_engine_tutorial(capsys) -> None:
    result = _load("tutorial_lstm_to_engine").main(["--quick"])
    assert result["max_diff"] < 1e-5  # the engine computes what PyTorch computes
    assert result["engine_acc"] == result["pruned_acc"]
    assert result["weight_sparsity"] == pytest.approx(0.8, abs=0.02)
    assert result["reduction"] > 3.0  # 80% of the recurrent weights gone
    ops = result["neurobench"]["SynapticOperations"]
    assert ops["Effective_MACs"] < ops["Dense"]
    assert "lstm.weight_hh_l1" in capsys.readouterr().out  # the pruning report


def test_egru_report_tutorial(tmp_path) -> None:
    out = tmp_path / "report.json"
    result = _load("tutorial_egru_report").main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["neurobench"] == result["neurobench"]
    layers = saved["accounting"]["layers"]
    assert len(layers) == 2 and all(0.0 <= r["activity_sparsity"] <= 1.0 for r in layers)
    assert all(r["backward_sparsity"] is not None for r in layers)  # EGRU layers
    assert 0.0 <= result["neurobench"]["ActivationSparsity"] <= 1.0
    with pytest.raises(ValueError, match="--out"):
        _load("tutorial_egru_report").main(["--quick", "--out", str(out)])
