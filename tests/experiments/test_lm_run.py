"""The ``lm`` run function: run config -> LMConfig, and one tiny real run on PTB."""

import argparse
import os
from pathlib import Path

import pytest

from dualsparse.apps.lm.presets import get_preset
from dualsparse.experiments.lm_run import build_config, run_lm
from dualsparse.experiments.spec import load_spec

SWEEPS = Path(__file__).resolve().parents[2] / "examples" / "sweeps"


def build_args(config, run_dir):
    """The flat settings of :func:`build_config` (field name -> value)."""
    return argparse.Namespace(**build_config(config, run_dir).flat())


def test_config_maps_to_training_settings(tmp_path):
    # old flag names (model, nhid, prune_steps) as the existing sweep specs use them
    args = build_args({"model": "egru", "nhid": 64, "max_steps": 200, "prune_method": "magnitude",
                       "prune_target": 0.8, "prune_steps": 10, "wdecay_bias": 0.1, "seed": 7},
                      tmp_path)
    assert args.cell == "EGRU" and args.hidden_sizes == [64] and args.seed == 7
    assert args.wdecay_bias == 0.1 and args.save == str(tmp_path) and not args.resume
    assert (args.prune_start, args.prune_end) == (50, 150)  # 0.25 / 0.75 of training
    assert (args.prune_end - args.prune_start) % args.prune_rounds == 0
    assert args.progress is False and args.tensorboard is False
    dense = build_args({"max_steps": 10, "prune_method": "magnitude", "prune_target": 0.0},
                       tmp_path)
    assert dense.prune_method is None
    preset = build_args({"preset": "cpu-small", "max_steps": 10, "lr": 0.5}, tmp_path)
    assert preset.hidden_sizes == get_preset("cpu-small")["hidden_sizes"] and preset.lr == 0.5
    one_shot = build_args({"max_steps": 100, "prune_method": "magnitude", "prune_target": 0.5,
                           "prune_rounds": 1, "prune_schedule": "iterative"}, tmp_path)
    assert one_shot.prune_start == one_shot.prune_end == 25
    (tmp_path / "latest.json").write_text("{}")
    assert build_args({"max_steps": 10}, tmp_path).resume


@pytest.mark.parametrize("name", ["ptb_small.yaml", "ptb_small_egru_tuning.yaml",
                                  "ptb_wd_steps.yaml"])
def test_the_example_sweeps_run_configs_build(name, tmp_path):
    spec = load_spec(SWEEPS / name)
    for run in spec.expand():
        cfg = build_config(run.config, tmp_path)
        assert cfg.run.max_steps is not None and cfg.data.corpus == "ptb"


def test_bad_lm_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown LM run config keys"):
        build_args({"hidden_size": 3}, tmp_path)
    with pytest.raises(ValueError, match="needs max_steps"):
        build_args({"prune_method": "magnitude", "prune_target": 0.5}, tmp_path)
    with pytest.raises(ValueError, match="needs max_steps"):  # start from a fraction of None
        build_args({"prune_method": "magnitude", "prune_target": 0.5, "prune_end": 40},
                   tmp_path)
    explicit = build_args({"prune_method": "magnitude", "prune_target": 0.5, "prune_start": 10,
                           "prune_end": 40, "prune_steps": 3, "prune_schedule": "iterative"},
                          tmp_path)
    assert (explicit.prune_start, explicit.prune_end) == (10, 40)
    with pytest.raises(ValueError, match="prune_end_frac"):
        build_args({"max_steps": 10, "prune_method": "magnitude", "prune_target": 0.5,
                    "prune_end_frac": 2.0}, tmp_path)


@pytest.mark.skipif(not (Path(os.environ.get("DUALSPARSE_DATA", "/nonexistent")) / "ptb"
                         ).is_dir(), reason="needs DUALSPARSE_DATA with ptb/")
def test_tiny_ptb_run(tmp_path):
    metrics = run_lm({"model": "EGRU", "emsize": 16, "nhid": 16, "max_steps": 4,
                      "batch_size": 4, "bptt": 10, "train_tokens": 2000, "valid_tokens": 200,
                      "test_tokens": 200, "eval_interval": 4, "prune_method": "magnitude",
                      "prune_target": 0.5, "prune_steps": 1, "prune_schedule": "iterative",
                      "threads": 1, "device": "cpu", "seed": 1}, tmp_path)
    assert metrics["test_ppl"] > 1 and metrics["val_ppl"] > 1
    assert metrics["weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert metrics["test_tokens"] == 199 and metrics["steps"] == 4
    assert metrics["pruning"]["target"] == 0.5 and metrics["flags"]["hidden_sizes"] == [16]
    assert metrics["dense_macs"] == 3 * 16 * (16 + 16)
    assert Path(metrics["checkpoint"]).is_file()
