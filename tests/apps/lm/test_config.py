"""LM configs: JSON round trip, old flat names, presets checked against the fields, and the
flags mapping one to one onto the fields."""

from __future__ import annotations

import argparse
import json

import pytest

from dualsparse.apps.lm.config import (
    ALIASES,
    LMConfig,
    ModelConfig,
    RunConfig,
    field_names,
)
from dualsparse.apps.lm.flags import add_train_flags
from dualsparse.apps.lm.presets import PRESETS, get_preset, preset_config, with_preset


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_train_flags(parser, argv)
    return parser


def test_json_round_trip_of_a_changed_config() -> None:
    cfg = preset_config("ptb-egru")
    # (a method's default schedule is resolved at construction, so set both here)
    cfg.prune.prune_method, cfg.prune.prune_block = "block", (16, 1)
    cfg.prune.prune_schedule = "narang"
    cfg.run.when = [3.0, 5.0]
    text = json.dumps(cfg.to_dict())
    back = LMConfig.from_dict(json.loads(text))
    assert back == cfg and back.prune.prune_block == (16, 1)
    assert LMConfig.from_dict(cfg.flat()) == cfg  # the flat form reads the same


def test_flat_dicts_take_the_old_names() -> None:
    old = {"model": "lstm", "emsize": 32, "nhid": 48, "wdrop": 0.3, "thr_mean": 0.05,
           "tied": "no", "data": "wikitext-2", "prune_steps": 4, "batch_size": 7}
    cfg = LMConfig.from_dict(old)
    assert (cfg.model.cell, cfg.model.emb_size, cfg.model.hidden_sizes) == ("LSTM", 32, [48])
    assert (cfg.model.dropconnect, cfg.model.threshold_mean, cfg.model.tie_weights) == (
        0.3, 0.05, "no")
    assert (cfg.data.corpus, cfg.prune.prune_rounds, cfg.run.batch_size) == (
        "wikitext-2", 4, 7)
    assert set(ALIASES.values()) <= field_names()


def test_unknown_and_doubled_keys_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown LM run config keys \['hidden_size'\]"):
        LMConfig.from_dict({"hidden_size": 3})
    with pytest.raises(ValueError, match="'hidden_sizes' given twice"):
        LMConfig.from_dict({"nhid": [3], "hidden_sizes": [4]})
    # a stored run's extra keys (its task, the preset it came from) are skipped on request
    stored = {"task": "lm", "preset": "cpu-small", "nhid": [5], "data": "ptb"}
    assert LMConfig.from_dict(stored, strict=False).model.hidden_sizes == [5]
    with pytest.raises(ValueError, match="cell must be one of"):
        ModelConfig(cell="rnn")
    with pytest.raises(ValueError, match="carry must be one of"):
        RunConfig(carry="half")
    with pytest.raises(ValueError, match="--activity-penalty needs --cell EGRU"):
        LMConfig.from_dict({"cell": "lstm", "activity_penalty": 0.5})
    with pytest.raises(ValueError, match="--activity-target"):
        RunConfig(activity_target=-0.1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_field_values(name: str) -> None:
    assert set(PRESETS[name]) <= field_names()
    cfg = preset_config(name)
    flat = cfg.flat()
    assert all(flat[k] == v for k, v in get_preset(name).items()
               if k != "hidden_sizes") and flat["hidden_sizes"] == PRESETS[name]["hidden_sizes"]
    # the command line with only --preset gives the same config
    argv = ["--preset", name]
    assert LMConfig.from_namespace(_parser(argv).parse_args(argv)) == cfg


def test_preset_run_length_in_one_unit() -> None:
    values = with_preset("cpu-small", {"epochs": 2.0})
    assert "max_steps" not in values and values["epochs"] == 2.0
    values = with_preset("ptb-egru", {"max_steps": 3})
    assert "epochs" not in values and values["max_steps"] == 3
    assert with_preset(None, {"lr": 0.1}) == {"lr": 0.1}
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        with_preset("nope", {})


def test_every_flag_is_a_field_and_every_field_a_flag() -> None:
    parser = _parser([])
    dests = {a.dest for a in parser._actions} - {"help", "preset"}
    assert dests == field_names()
    default = LMConfig.from_namespace(parser.parse_args([]))
    assert default == LMConfig()


def test_awd_spellings_are_aliases_of_the_field_flags() -> None:
    old = ["--model", "lstm", "--emsize", "8", "--nhid", "8,4", "--wdrop", "0.2",
           "--thr-mean", "0.2", "--thr-init", "constant", "--tied", "no", "--data", "ptb",
           "--batch_size", "3", "--prune-steps", "2"]
    new = ["--cell", "lstm", "--emb-size", "8", "--hidden-sizes", "8,4", "--dropconnect",
           "0.2", "--threshold-mean", "0.2", "--threshold-init", "constant", "--tie-weights",
           "no", "--corpus", "ptb", "--batch-size", "3", "--prune-rounds", "2"]
    a = LMConfig.from_namespace(_parser(old).parse_args(old))
    b = LMConfig.from_namespace(_parser(new).parse_args(new))
    assert a == b and a.model.hidden_sizes == [8, 4] and a.prune.prune_rounds == 2
    assert a != LMConfig()


def test_a_run_config_stored_by_the_old_flat_flags_reads_in_full() -> None:
    # vars(args) of `dualsparse train --task lm` before the config sections existed: every
    # key that such a checkpoint holds, with non-default values where the type allows
    old = {
        "task": "lm", "preset": None, "data": "wikitext-2", "data_dir": "/d",
        "train_tokens": 100, "valid_tokens": 50, "test_tokens": 40, "model": "LSTM",
        "emsize": 12, "nhid": [12, 12], "tied": "yes", "dropout": 0.1, "dropouth": 0.2,
        "dropouti": 0.3, "dropoute": 0.05, "wdrop": 0.4, "init_range": 0.1,
        "surrogate": "triangle", "surrogate_gamma": 0.5, "surrogate_width": 0.6,
        "thr_mean": 0.2, "thr_init": "constant", "reset_mode": "none", "optimizer": "sgd",
        "lr": 2.0, "beta1": 0.0, "beta2": 0.99, "momentum": 0.9, "wdecay": 1e-6,
        "wdecay_bias": 1e-7, "wdecay_thr": 0.1, "lr_bias": 0.5, "lr_thr": 0.0, "clip": 5.0,
        "epochs": 3.0, "max_steps": 77, "schedule": "step", "cosine_start": 1.0,
        "min_lr_ratio": 0.1, "when": [1.0, 2.0], "gamma": 0.5, "warmup_steps": 4,
        "batch_size": 8, "eval_batch_size": 6, "test_batch_size": 2, "bptt": 9,
        "eval_bptt": 90, "random_bptt": True, "carry": "output", "alpha": 2.0, "beta": 1.0,
        "seed": 5, "deterministic": False, "threads": 1, "device": "cpu", "log_interval": 3,
        "eval_interval": 11, "save_interval": 22, "save": "runs/x", "resume": True,
        "stop_at": 33, "progress": False, "tensorboard": False,
        "prune_method": "block", "prune_target": 0.5, "prune_schedule": "narang",
        "prune_start": 1, "prune_end": 70, "prune_steps": 6, "prune_freq": 2,
        "prune_ramp": 20, "prune_ramp_mult": 1.2, "prune_q_percentile": 80.0,
        "prune_block": [4, 1], "prune_score": "rms", "prune_tensors": "*weight_hh_l*",
        "prune_scope": "global", "group_lasso": 0.01,
    }
    with pytest.raises(ValueError, match=r"\['preset', 'task'\]"):
        LMConfig.from_dict(old)
    flat = LMConfig.from_dict(old, strict=False).flat()
    expected = {ALIASES.get(k, k): v for k, v in old.items() if k not in ("task", "preset")}
    # fields added after that run was stored read as their defaults
    assert flat == {**expected, "threshold_parameterisation": None, "backend": None,
                    "overwrite": False, "prune_q_from": "weights", "gl_threshold": 1e-3,
                    "activity_penalty": 0.0, "activity_target": 0.0}
