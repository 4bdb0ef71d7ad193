"""Weight pruning in the LM app: the Pruner a :class:`PruneConfig` describes, and
``dualsparse prune`` (prune a trained run in rounds, fine-tuning in between).

Methods: ``magnitude`` (unstructured 1x1), ``block`` (``prune_block``, default 4x4, scored
by ``prune_score``), ``gl`` (group lasso during training, then one cut to the target at
``prune_end``), ``glp`` (group lasso together with gradual block pruning).

:func:`prune_trained` is written against two callables the task supplies:
``fine_tune(model, pruner, steps)`` (a training loop that calls ``pruner.step(global_step)``
after every optimiser step and adds ``pruner.penalty()``; its return value is ignored) and
``evaluate(model) -> float`` (e.g. validation perplexity); :func:`prune_hooks` gives both
for a trained LM run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from dualsparse.apps.lm.config import PruneConfig
from dualsparse.apps.lm.runs import load_model, run_config
from dualsparse.apps.lm.task import LMTask
from dualsparse.atomic import atomic_write_json
from dualsparse.sparsity.pruner import Pruner
from dualsparse.sparsity.schedules import AGPSchedule, IterativeSchedule, NarangSchedule, Schedule
from dualsparse.sparsity.scoring import Scoring
from dualsparse.sparsity.spec import PruningSpec, TensorSpec
from dualsparse.train.checkpoint import save_model
from dualsparse.train.loop import Trainer
from dualsparse.validation import check_int, check_real

FineTune = Callable[[nn.Module, Pruner, int], Any]
Evaluate = Callable[[nn.Module], float]
Save = Callable[[nn.Module, "Pruner | None", str], Any]


@dataclass
class PruneRunConfig:
    """Settings of ``dualsparse prune`` besides the :class:`PruneConfig`: the trained run
    (``checkpoint`` folder, ``tag``; ``data_dir`` overrides the run's), optimiser steps of
    fine-tuning after each round, and the outputs (results JSON, pruned checkpoint;
    ``finalize`` drops the masks before saving)."""

    checkpoint: str | None = None
    tag: str = "best"
    data_dir: str | None = None
    fine_tune_steps: int = 0
    output: str | None = None
    save: str | None = None
    finalize: bool = False


def _need(value: Any, flag: str, why: str) -> Any:
    if value is None:
        raise ValueError(f"{flag} is required {why}")
    return value


def training_schedule(cfg: PruneConfig) -> Schedule:
    """The schedule (in optimiser steps) of pruning during training."""
    if cfg.prune_method == "gl":
        end = _need(cfg.prune_end, "--prune-end", "for --prune-method gl (the cut step)")
        return IterativeSchedule(1, end, end)
    start = cfg.prune_start
    end = _need(cfg.prune_end, "--prune-end", "with --prune-method")
    rounds = cfg.prune_rounds
    if cfg.prune_schedule == "iterative":
        return IterativeSchedule(rounds, start, end)
    if cfg.prune_schedule == "agp":
        if rounds < 1 or (end - start) % rounds:
            raise ValueError(f"agp: --prune-end - --prune-start = {end - start} must be a "
                             f"multiple of --prune-rounds = {rounds}")
        return AGPSchedule(start, end, (end - start) // rounds)
    ramp = cfg.prune_ramp if cfg.prune_ramp is not None else start + (end - start) // 3
    freq = cfg.prune_freq if cfg.prune_freq is not None else max(1, (end - start) // (
        rounds + 1))
    return NarangSchedule(start, ramp, end, freq, cfg.prune_ramp_mult)


def build_pruner(model: nn.Module, cfg: PruneConfig, schedule: Schedule) -> Pruner:
    """A :class:`Pruner` of ``model`` by ``cfg``'s method, target and scoring on
    ``schedule``."""
    method = cfg.prune_method
    target = _need(cfg.prune_target, "--prune-target", "with --prune-method")
    block = cfg.prune_block
    if method == "magnitude":
        if block not in (None, (1, 1)):
            raise ValueError(f"--prune-method magnitude is unstructured (1x1); got --prune-block "
                             f"{block[0]}x{block[1]} (use --prune-method block)")
        block = (1, 1)
    elif block is None:
        block = (4, 4)
    lam = cfg.group_lasso
    if method in ("gl", "glp") and not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"--prune-method {method} needs --group-lasso > 0, got {lam}")
    patterns = [p.strip() for p in cfg.prune_tensors.split(",") if p.strip()]
    if not patterns:
        raise ValueError("--prune-tensors names no tensor")
    spec = PruningSpec(tuple(TensorSpec(p) for p in patterns), sparsity=target, block=block)
    return Pruner(model, spec, schedule, Scoring(cfg.prune_score, cfg.prune_scope), lam,
                  cfg.prune_q_percentile)


def pruner_for_training(model: nn.Module, cfg: PruneConfig) -> Pruner | None:
    """The pruner ``cfg`` describes for a training run, or None without ``prune_method``."""
    if cfg.prune_method is None:
        if cfg.group_lasso:
            raise ValueError("--group-lasso needs --prune-method gl or glp")
        return None
    return build_pruner(model, cfg, training_schedule(cfg))


def prune_trained(model: nn.Module, cfg: PruneConfig, opts: PruneRunConfig,
                  fine_tune: FineTune, evaluate: Evaluate, save: Save | None = None
                  ) -> dict[str, Any]:
    """Prune a trained ``model`` in ``cfg.prune_rounds`` rounds with fine-tuning in between.

    Round ``i`` prunes to the schedule's ``i``-th sparsity (iterative: geometric rounds;
    agp: cubic), evaluates, fine-tunes ``opts.fine_tune_steps`` optimiser steps with masks
    frozen, evaluates again. Returns (and with ``opts.output`` writes)
    ``{"config", "dense", "rounds": [...], "report", "pruner"}``. With ``opts.save``,
    ``save(model, pruner_or_None, path)`` writes the checkpoint (default:
    :func:`dualsparse.train.checkpoint.save_model`: a checkpoint folder).
    """
    if cfg.prune_method == "gl":
        raise ValueError("--prune-method gl needs training with the penalty before its cut; "
                         "use dualsparse train --prune-method gl (or glp here)")
    if cfg.prune_schedule == "narang":
        raise ValueError("dualsparse prune supports the iterative and agp schedules; Narang's "
                         "threshold schedule runs during training (dualsparse train)")
    k = check_int("--prune-rounds", cfg.prune_rounds, low=1)
    ft = check_int("--fine-tune-steps", opts.fine_tune_steps, low=0)
    if cfg.prune_method == "glp" and ft == 0:
        raise ValueError("--prune-method glp needs --fine-tune-steps > 0 (the penalty acts "
                         "during fine-tuning)")
    if cfg.prune_schedule == "iterative":
        schedule: Schedule = IterativeSchedule(k, 1, k)
        points = schedule.update_steps()
    else:
        schedule = AGPSchedule(0, k, 1)
        points = schedule.update_steps()[1:]
    pruner = build_pruner(model, cfg, schedule)
    dense = _metric(evaluate(model))
    rounds = []
    for i, point in enumerate(points, 1):
        pruner.update_masks(point)
        row: dict[str, Any] = {"round": i, "sparsity": pruner.sparsity(),
                               "metric_pruned": _metric(evaluate(model))}
        if ft:
            with pruner.frozen():
                fine_tune(model, pruner, ft)
            pruner.masks.apply()
            row["metric_fine_tuned"] = _metric(evaluate(model))
        rounds.append(row)
    config = {**asdict(cfg), **asdict(opts)}
    if config["prune_block"] is not None:
        config["prune_block"] = list(config["prune_block"])
    result = {"config": config, "dense": dense, "rounds": rounds, "report": pruner.report(),
              "pruner": pruner.state_dict()}
    if opts.finalize:
        pruner.finalize()
    if opts.save:
        kept = None if opts.finalize else pruner
        if save is not None:
            save(model, kept, opts.save)
        else:
            save_model(opts.save, model, kept,
                       extra={"prune_result": {"dense": dense, "rounds": rounds}})
    if opts.output:
        atomic_write_json(opts.output, result)
    return result


def _metric(value: Any) -> float:
    try:
        return check_real("evaluate(model)", value, finite=False)
    except ValueError:
        raise ValueError(f"evaluate(model) must return a number, got {value!r}") from None


def prune_hooks(checkpoint: str | os.PathLike[str], tag: str = "best",
                data_dir: str | None = None
                ) -> tuple[nn.Module, FineTune, Evaluate]:
    """``(model, fine_tune, evaluate)`` for ``dualsparse prune`` on a trained LM run.

    ``fine_tune(model, pruner, steps)`` trains ``steps`` more optimiser steps with the run's
    settings and the pruner attached; ``evaluate(model)`` returns the validation perplexity.
    """
    model, meta = load_model(checkpoint, tag)
    config = run_config(meta)
    if data_dir is not None:
        config.data.data_dir = data_dir
    _, train, valid, test = config.data.load()

    def make_task() -> LMTask:
        return LMTask.from_config(config.run, train, valid, test)

    def fine_tune(model: nn.Module, pruner: Any, steps: int) -> dict[str, Any]:
        task = make_task()
        cfg = config.run.train_config(task.steps_per_epoch, fine_tune_steps=steps)
        return Trainer(model, task, cfg, pruner=pruner).fit()

    def evaluate(model: nn.Module) -> float:
        return make_task().evaluate(model, "valid")["ppl"]

    return model, fine_tune, evaluate


__all__ = ["PruneRunConfig", "build_pruner", "prune_hooks", "prune_trained",
           "pruner_for_training", "training_schedule"]
