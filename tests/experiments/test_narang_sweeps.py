"""The Narang experiment definitions (examples/sweeps/narang_*.yaml): every run expands to a
valid training config and pruner (what ``sweep run --dry-run`` lists, plus the pruner each
run would build), the grids cover the issue's design, and each spec runs as a tiny smoke run
of a few steps on PTB."""

import os
import warnings
from pathlib import Path

import pytest
import torch

from dualsparse.apps.lm.prune import pruner_for_training
from dualsparse.experiments.lm_run import build_config, run_lm
from dualsparse.experiments.spec import load_spec

SWEEPS = Path(__file__).resolve().parents[2] / "examples" / "sweeps"
SPECS = sorted(p.name for p in SWEEPS.glob("narang_*.yaml"))
#: the check that goes with the large-vs-small table: one cell, one seed, lr varied on purpose
LR_CHECK = "narang_large_vs_small_lr.yaml"
DESIGN = [s for s in SPECS if s != LR_CHECK]
SHAPES = {(1, 1), (4, 4), (8, 8), (12, 2), (16, 1), (16, 16), (32, 32)}
HAVE_PTB = (Path(os.environ.get("DUALSPARSE_DATA", "/nonexistent")) / "ptb").is_dir()


def _configs(name, run_dir):
    return [(run, build_config(run.config, run_dir)) for run in load_spec(SWEEPS / name).expand()]


def _pruner(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pruner_for_training(cfg.model.build(50), cfg.prune, log=None)


def test_the_specs_exist():
    assert SPECS == ["narang_block_scoring.yaml", "narang_block_shapes.yaml",
                     "narang_gl_glp.yaml", "narang_large_vs_small.yaml", LR_CHECK,
                     "narang_late_start.yaml"]


def test_the_lr_check_differs_from_the_tables_wide_egrus_only_in_lr(tmp_path):
    def key(c):
        return tuple(c.model.hidden_sizes), c.prune.prune_method, c.prune.prune_target

    table = {key(c): c for _, c in _configs("narang_large_vs_small.yaml", tmp_path)
             if c.model.cell == "EGRU" and c.run.seed == 1}
    checks = [c for _, c in _configs(LR_CHECK, tmp_path)]
    assert sorted((key(c)[0], key(c)[1] or "dense") for c in checks) == [
        (width, m) for width in ((384, 384), (576, 576)) for m in ("block", "dense", "magnitude")]
    for c in checks:
        ref = table[key(c)]
        assert c.run.lr == pytest.approx(ref.run.lr * 192 / c.model.hidden_sizes[0])
        for part in ("model", "data", "prune"):
            assert getattr(c, part) == getattr(ref, part)
        assert c.run.max_steps == ref.run.max_steps and c.run.seed == ref.run.seed


def test_the_late_start_differs_from_the_block_shapes_only_in_when_it_prunes(tmp_path):
    early = {(c.model.cell, c.prune.prune_block, c.prune.prune_target, c.run.seed): c
             for _, c in _configs("narang_block_shapes.yaml", tmp_path)
             if c.prune.prune_method and c.prune.prune_q_from == "weights"}
    late = [c for _, c in _configs("narang_late_start.yaml", tmp_path)]
    assert len(late) == 16
    for c in late:
        e = early[(c.model.cell, c.prune.prune_block, c.prune.prune_target, c.run.seed)]
        assert (c.prune.prune_start, c.prune.prune_ramp, c.prune.prune_end) == (1200, 1800, 2400)
        assert (e.prune.prune_start, e.prune.prune_end) == (300, 1500)
        for part in ("model", "data"):
            assert getattr(c, part) == getattr(e, part)
        assert c.run.max_steps == e.run.max_steps and c.run.lr == e.run.lr


@pytest.mark.parametrize("name", DESIGN)
def test_every_run_builds_its_config_and_pruner(name, tmp_path):
    seen = {}
    budgets, seeds, cells = set(), set(), set()
    for _, cfg in _configs(name, tmp_path):
        budgets.add((cfg.run.max_steps, cfg.run.batch_size, cfg.run.bptt, cfg.run.lr))
        seeds.add(cfg.run.seed)
        cells.add(cfg.model.cell)
        assert cfg.data.corpus == "ptb" and len(cfg.model.hidden_sizes) == 2
        key = (cfg.model.cell, tuple(cfg.model.hidden_sizes), repr(cfg.prune))
        if key in seen or cfg.prune.prune_method is None:
            continue
        pruner = _pruner(cfg)  # block shapes tile every gate, schedules are valid, ...
        seen[key] = pruner
        assert pruner.schedule.end_step < cfg.run.max_steps  # pruning finishes in the run
    assert len(budgets) == 1, "EGRU and LSTM (and every point) get the same budget"
    assert len(seeds) >= 2 and cells == {"EGRU", "LSTM"}


def test_block_shapes_and_scores_cover_the_design(tmp_path):
    paper = [c.prune for _, c in _configs("narang_block_shapes.yaml", tmp_path)
             if c.prune.prune_method]
    assert {p.prune_block for p in paper} == SHAPES
    assert {p.prune_target for p in paper} == {0.8, 0.9}
    assert {(p.prune_schedule, p.prune_score) for p in paper} == {("narang", "max")}
    assert {p.prune_q_from for p in paper if p.prune_block != (1, 1)} == {"weights", "blocks"}
    scoring = [c.prune for _, c in _configs("narang_block_scoring.yaml", tmp_path)]
    blocks = [p for p in scoring if p.prune_method == "block"]
    assert {p.prune_block for p in blocks} | {(1, 1)} == SHAPES
    assert {p.prune_score for p in blocks} == {"max", "mean", "rms", "geomean", "median"}
    assert {p.prune_target for p in scoring} == {0.8, 0.9}
    assert {p.prune_schedule for p in scoring} == {"agp"}  # exact sparsity: scores compare


def test_gl_glp_block_design(tmp_path):
    runs = [c.prune for _, c in _configs("narang_gl_glp.yaml", tmp_path)]
    gl = [p for p in runs if p.prune_method == "gl"]
    assert len({p.group_lasso for p in gl}) >= 3  # lambda sets the sparsity: a curve
    assert all(p.prune_end == 2999 and p.prune_schedule is None for p in gl)
    glp = [p for p in runs if p.prune_method == "glp"]
    assert {p.prune_schedule for p in glp} == {"narang", "agp"}
    assert max(p.group_lasso for p in glp) < max(p.group_lasso for p in gl)
    block = [p for p in runs if p.prune_method == "block"]
    assert {p.group_lasso for p in block} == {0.0} and block
    assert {p.prune_block for p in runs} == {(4, 4)}


def test_large_pruned_models_have_the_small_dense_models_nonzero_weights(tmp_path):
    dense_small, pruned = {}, {}
    for _, cfg in _configs("narang_large_vs_small.yaml", tmp_path):
        if cfg.prune.prune_method is None and cfg.model.hidden_sizes == [192, 192]:
            m = cfg.model.build(50)
            dense_small[cfg.model.cell] = sum(
                p.numel() for n, p in m.named_parameters() if "weight_" in n and "rnns" in n)
        elif cfg.prune.prune_method is not None:  # one per cell, size and method (not seed)
            key = (cfg.model.cell, tuple(cfg.model.hidden_sizes), cfg.prune.prune_method)
            pruned[key] = cfg
    assert set(dense_small) == {"EGRU", "LSTM"} and len(pruned) == 8
    pruned = list(pruned.values())
    for cfg in pruned:
        pruner = _pruner(cfg)
        pruner.prune_to(1.0)
        kept = sum(int(pruner.masks.mask(t.name).sum()) for t in pruner.tensors)
        assert kept == pytest.approx(dense_small[cfg.model.cell], rel=1e-3), cfg.model


# tiny stand-ins for the smoke runs: every size halved (192 -> 96 still tiles 32x32 and 12x2
# blocks), a few steps, a few hundred tokens
_TINY = {"max_steps": 6, "eval_interval": 6, "batch_size": 4, "bptt": 10, "train_tokens": 3000,
         "valid_tokens": 200, "test_tokens": 200, "prune_start": 1, "prune_ramp": 2,
         "prune_end": 4, "prune_freq": 1, "prune_rounds": 3, "threads": 1, "device": "cpu"}


def _tiny(config):
    c = {**config, **_TINY}
    c["emsize"] = config["emsize"] // 2
    c["nhid"] = [h // 2 for h in config["nhid"]]
    if c.get("prune_method") == "gl":
        c["prune_end"] = 5  # the cut at the last step
    return c


def _block_size(config):
    r, c = config.get("prune_block", (1, 1))
    return r * c


def _representatives(name):
    """One run (seed 1) per distinct cell, method, schedule and (largest) block."""
    chosen = {}
    for run in load_spec(SWEEPS / name).expand():
        c = run.config
        key = (c["model"], c.get("prune_method"), c.get("prune_schedule"))
        if c.get("seed") != 1:
            continue
        if key not in chosen or _block_size(c) > _block_size(chosen[key]):
            chosen[key] = c
    return list(chosen.values())


@pytest.mark.skipif(not HAVE_PTB, reason="needs DUALSPARSE_DATA with ptb/")
@pytest.mark.parametrize("name", SPECS)
def test_each_spec_smoke_runs(name, tmp_path):
    torch.set_num_threads(1)
    reps = _representatives(name)
    if name == "narang_block_scoring.yaml":  # 1x1 and the largest blocks, EGRU only: enough
        reps = [c for c in reps if c["model"] == "EGRU"]
    for i, config in enumerate(reps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            metrics = run_lm(_tiny(config), tmp_path / str(i))
        assert metrics["test_ppl"] > 1 and metrics["steps"] == 6
        if config.get("prune_method") in ("magnitude", "block", "glp") and \
                config.get("prune_schedule") == "agp":
            assert metrics["weight_sparsity"] == pytest.approx(config["prune_target"], abs=0.02)
        elif config.get("prune_method") is None or not config.get("prune_target"):
            assert metrics["weight_sparsity"] == 0.0
