"""The ``lm_prune`` run function: train dense once, prune in rounds, share the dense model."""

import os
from pathlib import Path

import pytest

from dualsparse.experiments import lm_prune_run
from dualsparse.experiments.lm_prune_run import (
    check_config,
    run_lm_prune,
    split_config,
)
from dualsparse.experiments.lm_run import build_config
from dualsparse.experiments.spec import load_spec, run_id
from dualsparse.train.run_dir import RunLockedError

SWEEPS = Path(__file__).resolve().parents[2] / "examples" / "sweeps"

needs_ptb = pytest.mark.skipif(
    not (Path(os.environ.get("DUALSPARSE_DATA", "/nonexistent")) / "ptb").is_dir(),
    reason="needs DUALSPARSE_DATA with ptb/")

TINY = {"model": "EGRU", "emsize": 16, "nhid": [16, 16], "max_steps": 6, "batch_size": 4,
        "bptt": 10, "train_tokens": 3000, "valid_tokens": 300, "test_tokens": 200,
        "eval_interval": 6, "threads": 1, "device": "cpu", "seed": 1,
        "prune_method": "magnitude", "prune_schedule": "iterative"}


def test_split_config_separates_dense_training_from_pruning() -> None:
    dense, prune, budget = split_config({**TINY, "prune_target": 0.5, "prune_steps": 3,
                                         "fine_tune_budget": 30, "preset": "ptb-demo"})
    assert budget == 30 and dense["preset"] == "ptb-demo"
    assert prune == {"prune_method": "magnitude", "prune_schedule": "iterative",
                     "prune_target": 0.5, "prune_rounds": 3}  # old name prune_steps mapped
    assert not any(k.startswith("prune") for k in dense) and dense["hidden_sizes"] == [16, 16]
    with pytest.raises(ValueError, match="fine_tune_budget"):
        split_config({**TINY, "fine_tune_budget": -1})
    # the fine-tuning's rate and schedule belong to the pruning, not to the dense model
    dense2, prune2, _ = split_config({**TINY, "prune_target": 0.5, "fine_tune_lr": 1e-3,
                                      "fine_tune_lr_schedule": "cosine"})
    assert dense2 == split_config({**TINY, "prune_target": 0.5})[0]
    assert prune2["fine_tune_lr"] == 1e-3 and prune2["fine_tune_lr_schedule"] == "cosine"
    check_config({**TINY, "prune_target": 0.5, "fine_tune_lr": 1e-3,
                  "fine_tune_lr_schedule": "cosine"})
    with pytest.raises(ValueError, match="fine_tune_lr"):
        split_config({**TINY, "fine_tune_lr": 0.0})
    with pytest.raises(ValueError, match="fine_tune_lr_schedule"):
        split_config({**TINY, "fine_tune_lr_schedule": "linear"})
    _, prune3, _ = split_config({**TINY, "prune_target": 0.5, "fine_tune_optimizer": "carry"})
    assert prune3["fine_tune_optimizer"] == "carry"
    assert "fine_tune_optimizer" not in split_config({**TINY, "prune_target": 0.5,
                                                       "fine_tune_optimizer": "fresh"})[1]
    with pytest.raises(ValueError, match="fine_tune_optimizer"):
        split_config({**TINY, "fine_tune_optimizer": "adam"})
    with pytest.raises(ValueError, match="--prune-method"):
        check_config({**TINY, "prune_method": "random"})
    with pytest.raises(ValueError, match="unknown LM run config keys"):
        check_config({**TINY, "hidden_size": 3})


def test_a_live_lock_makes_a_worker_wait_for_the_dense_model(tmp_path, monkeypatch) -> None:
    calls = []

    def train(cfg):
        calls.append(cfg.run.save)
        if len(calls) < 3:  # another live worker holds the lock twice, then it is done
            raise RunLockedError("locked")
        Path(cfg.run.save).mkdir(parents=True, exist_ok=True)
        Path(cfg.run.save, "results.json").write_text("{}")
        return {"train": {"finished": True}}

    monkeypatch.setattr(lm_prune_run.commands, "train", train)
    monkeypatch.setattr(lm_prune_run, "POLL_S", 0.01)
    dense, _, _ = split_config({**TINY, "prune_target": 0.5})
    folder = lm_prune_run.ensure_dense(dense, tmp_path)
    assert len(calls) == 3 and folder.parent == tmp_path / "dense"
    assert lm_prune_run.ensure_dense(dense, tmp_path) == folder and len(calls) == 3  # done


@needs_ptb
def test_runs_share_one_dense_model_and_split_the_fine_tuning_budget(tmp_path, monkeypatch):
    trained = []
    real_train = lm_prune_run.commands.train
    monkeypatch.setattr(lm_prune_run.commands, "train",
                        lambda cfg: trained.append(cfg.run.save) or real_train(cfg))
    runs = tmp_path / "runs"
    a = run_lm_prune({**TINY, "prune_target": 0.5, "prune_steps": 1, "fine_tune_budget": 4},
                     runs / "a")
    b = run_lm_prune({**TINY, "prune_target": 0.75, "prune_steps": 2, "fine_tune_budget": 4},
                     runs / "b")
    dense = run_lm_prune({**TINY, "prune_target": 0.0}, runs / "c")
    assert len(trained) == 1 and a["dense_dir"] == b["dense_dir"] == dense["dense_dir"]
    assert a["dense_test_ppl"] == dense["test_ppl"]  # the dense point is the shared model
    assert dense["pruning"] is None and dense["weight_sparsity"] == pytest.approx(0.0, abs=1e-3)
    assert a["weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert b["weight_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert a["pruning"]["fine_tune_steps_per_round"] == 4
    assert b["pruning"]["fine_tune_steps_per_round"] == 2
    assert [r["round"] for r in b["pruning"]["history"]] == [1, 2]
    assert (runs / "b" / "prune.json").is_file()
    assert not list((tmp_path / "dense").glob("*/.dualsparse.lock"))  # the lock is released
    # the tested model's weights per layer: b's pruned weights are counted as zeros
    hists = b["parameter_histograms"]
    assert [h["layer"] for h in hists] == [0, 1]
    for h in hists:
        assert h["zeros"] + sum(h["weights"]["counts"]) == h["weight_count"]
    assert sum(h["zeros"] for h in hists) / sum(h["weight_count"] for h in hists) == (
        pytest.approx(b["weight_sparsity"], abs=1e-6))
    assert sum(h["zeros"] for h in dense["parameter_histograms"]) == 0


def test_the_dual_sparsity_sweep_shares_one_dense_model_per_model_and_seed(tmp_path) -> None:
    spec = load_spec(SWEEPS / "ptb_dual_sparsity.yaml")
    dense_ids = set()
    for run in spec.expand():
        dense, prune, budget = split_config(run.config)
        assert budget == 1000 and prune["prune_method"] == "magnitude"
        build_config(dense, tmp_path)  # every dense config is a valid training config
        dense_ids.add(run_id("lm", dense))
    assert len(spec.seeds) >= 2
    assert len(dense_ids) == 2 * len(spec.seeds)  # (EGRU, LSTM) x seeds


def test_the_headline_lstm_sweep_reuses_the_protocols_dense_lstms() -> None:
    protocol = {run_id("lm", split_config(r.config)[0]): r.config
                for r in load_spec(SWEEPS / "ptb_dual_sparsity.yaml").expand()
                if r.config["model"] == "LSTM"}
    runs = load_spec(SWEEPS / "ptb_headline_lstm.yaml").expand()
    assert {r.config["prune_target"] for r in runs} == {0.5, 0.75, 0.9, 0.95}
    for r in runs:
        dense, prune, budget = split_config(r.config)
        assert budget == 3000 and prune["fine_tune_optimizer"] == "carry"
        assert run_id("lm", dense) in protocol  # copying the dense folder is valid


def test_the_activity_map_varies_the_penalty_target_across_weight_sparsities(tmp_path) -> None:
    cells = set()
    for r in load_spec(SWEEPS / "ptb_activity_map.yaml").expand():
        dense, prune, _ = split_config(r.config)
        cfg = build_config(dense, tmp_path)  # the penalty is part of the dense training
        assert cfg.run.activity_penalty > 0 and cfg.model.cell == "EGRU"
        cells.add((cfg.run.activity_target, prune["prune_target"]))
    targets = {t for t, _ in cells}
    assert len(targets) >= 3 and cells == {(t, w) for t in targets for w in (0.0, 0.5, 0.75, 0.9)}
