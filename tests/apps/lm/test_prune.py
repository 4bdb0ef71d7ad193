"""Pruning flags/config for `dualsparse train` and the `dualsparse prune` rounds on a toy task."""

import argparse
import json

import pytest
import torch
from torch import nn

from dualsparse.apps.lm.config import PruneConfig
from dualsparse.apps.lm.flags import add_prune_command_flags, add_prune_flags, config_from
from dualsparse.apps.lm.prune import PruneRunConfig, prune_trained, pruner_for_training
from dualsparse.models import GRU
from dualsparse.sparsity import AGPSchedule, IterativeSchedule, NarangSchedule
from dualsparse.train.checkpoint import load_model


def _train_args(*argv):
    parser = argparse.ArgumentParser()
    add_prune_flags(parser)
    return config_from(PruneConfig, parser.parse_args(list(argv)))


def _prune_parser():
    parser = argparse.ArgumentParser()
    add_prune_command_flags(parser)
    return parser


def _run(argv, model, fine_tune, evaluate, save=None):
    args = _prune_parser().parse_args(["--checkpoint", "unused", *argv])
    return prune_trained(model, config_from(PruneConfig, args),
                         config_from(PruneRunConfig, args), fine_tune, evaluate, save)


def test_train_flags_build_the_described_pruner():
    args = _train_args("--prune-method", "block", "--prune-target", "0.8", "--prune-end", "100",
                       "--prune-block", "4x2", "--prune-score", "rms", "--prune-scope", "global",
                       "--prune-tensors", "weight_hh_l*")
    pruner = pruner_for_training(GRU(4, 8, num_layers=2), args)
    assert isinstance(pruner.schedule, AGPSchedule)
    assert pruner.schedule.update_steps() == list(range(0, 101, 10))
    assert [t.name for t in pruner.tensors] == ["weight_hh_l0", "weight_hh_l1"]
    assert all(t.block == (4, 2) and t.sparsity == 0.8 for t in pruner.tensors)
    assert pruner.scoring.to_dict() == {"stat": "rms", "scope": "global"}
    assert pruner_for_training(GRU(4, 8), _train_args()) is None

    it = pruner_for_training(GRU(4, 8), _train_args(
        "--prune-method", "magnitude", "--prune-target", "0.5", "--prune-schedule", "iterative",
        "--prune-start", "10", "--prune-end", "40", "--prune-steps", "4"))
    assert isinstance(it.schedule, IterativeSchedule)
    assert it.schedule.update_steps() == [10, 20, 30, 40]
    assert it.tensors[0].block == (1, 1)

    gl = pruner_for_training(GRU(4, 8), _train_args(
        "--prune-method", "gl", "--prune-target", "0.5", "--prune-end", "30",
        "--group-lasso", "1e-4"))
    assert gl.schedule.update_steps() == [30] and gl.group_lasso == 1e-4
    assert gl.penalty() is not None and gl.tensors[0].block == (4, 4)

    with pytest.warns(UserWarning, match="final sparsity"):
        nar = pruner_for_training(GRU(4, 8), _train_args(
            "--prune-method", "glp", "--prune-target", "0.5", "--prune-schedule", "narang",
            "--prune-start", "0", "--prune-end", "90", "--prune-freq", "10",
            "--group-lasso", "1e-4"))
    assert isinstance(nar.schedule, NarangSchedule) and nar.schedule.ramp == 30


@pytest.mark.parametrize("argv, message", [
    (["--prune-method", "magnitude", "--prune-end", "10"], "--prune-target is required"),
    (["--prune-method", "magnitude", "--prune-target", "0.5"], "--prune-end is required"),
    (["--prune-method", "magnitude", "--prune-target", "0.5", "--prune-end", "10",
      "--prune-block", "4x4"], "unstructured"),
    (["--prune-method", "glp", "--prune-target", "0.5", "--prune-end", "10"], "--group-lasso"),
    (["--group-lasso", "0.1"], "needs --prune-method"),
    (["--prune-method", "block", "--prune-target", "0.5", "--prune-end", "15",
      "--prune-steps", "4"], "multiple of --prune-rounds"),
    (["--prune-method", "block", "--prune-target", "1.5", "--prune-end", "10"], "\\[0, 1\\)"),
    (["--prune-method", "block", "--prune-target", "0.5", "--prune-end", "10",
      "--prune-block", "3x4"], "gate"),
    (["--prune-method", "block", "--prune-target", "0.5", "--prune-end", "10",
      "--prune-tensors", "encoder.weight"], "unknown tensor name"),
])
def test_bad_flags_raise(argv, message):
    with pytest.raises(ValueError, match=message):
        pruner_for_training(GRU(4, 8), _train_args(*argv))


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = GRU(3, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _toy_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 32, 3, generator=g)
    y = torch.cumsum(x[..., :1] - 0.5 * x[..., 1:2], 0) * 0.3  # running sum: needs memory
    return x, y


def _fit(model, x, y, steps, pruner=None, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if pruner is not None:
        pruner.attach_optimizer(opt)
    for step in range(steps):
        loss = (model(x) - y).pow(2).mean()
        if pruner is not None and pruner.penalty() is not None:
            loss = loss + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if pruner is not None:
            pruner.step(step)


def test_prune_run_iterative_with_fine_tuning(tmp_path):
    torch.manual_seed(0)
    x, y = _toy_task()
    model = _Toy()
    _fit(model, x, y, 150)  # the "trained checkpoint"

    def evaluate(m):
        with torch.no_grad():
            return float((m(x) - y).pow(2).mean())

    calls = []

    def fine_tune(m, pruner, steps):
        calls.append(steps)
        _fit(m, x, y, steps, pruner)

    result = _run(["--prune-target", "0.75", "--prune-rounds", "3", "--fine-tune-steps", "40",
                   "--output", str(tmp_path / "res.json"), "--save", str(tmp_path / "pruned")],
                  model, fine_tune, evaluate)
    assert calls == [40, 40, 40]
    sp = [r["sparsity"] for r in result["rounds"]]
    assert sp == pytest.approx([1 - 0.25 ** (1 / 3), 1 - 0.25 ** (2 / 3), 0.75], abs=0.01)
    assert sp[-1] == 0.75  # 72 and 192 weights: exact
    for r in result["rounds"]:
        assert r["metric_fine_tuned"] < r["metric_pruned"]
    assert result["dense"] < result["rounds"][-1]["metric_pruned"]
    on_disk = json.loads((tmp_path / "res.json").read_text())
    assert on_disk["rounds"] == result["rounds"]
    # the saved pruned checkpoint loads into a fresh model and gives the same metric
    fresh = _Toy()
    pruner = load_model(tmp_path / "pruned", fresh)
    assert pruner.sparsity() == 0.75
    assert evaluate(fresh) == pytest.approx(result["rounds"][-1]["metric_fine_tuned"])


def test_prune_run_one_shot_block_finalized(tmp_path):
    torch.manual_seed(1)
    model = _Toy()
    saved = {}
    # --prune-steps: the old spelling of --prune-rounds
    result = _run(["--prune-method", "block", "--prune-block", "2x2", "--prune-target", "0.5",
                   "--prune-schedule", "agp", "--prune-steps", "2", "--finalize",
                   "--prune-tensors", "rnn.weight_hh_l0", "--save", str(tmp_path / "final.pt")],
                  model, lambda m, p, s: None, lambda m: 1.0,
                  save=lambda m, p, path: saved.update(keys=set(m.state_dict()), pruner=p))
    assert [r["sparsity"] for r in result["rounds"]] == [0.4375, 0.5]  # 21, 24 of 48
    assert "metric_fine_tuned" not in result["rounds"][0]
    assert saved["pruner"] is None and saved["keys"] == set(_Toy().state_dict())
    with pytest.raises(ValueError, match="Narang"):
        _run(["--prune-target", "0.5", "--prune-schedule", "narang"], _Toy(),
             lambda m, p, s: None, lambda m: 1.0)
    with pytest.raises(ValueError, match="must return a number"):
        _run(["--prune-target", "0.5"], _Toy(), lambda m, p, s: None, lambda m: float("nan"))
