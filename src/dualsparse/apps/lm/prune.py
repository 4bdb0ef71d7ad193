"""Weight pruning in the LM app: the Pruner a :class:`PruneConfig` describes, and
``dualsparse prune`` (prune a trained run in rounds, fine-tuning in between).

Methods (Narang et al., "Block-Sparse RNNs", 2017): ``magnitude`` (unstructured 1x1, AGP by
default), ``block`` (``prune_block``, default 4x4, scored by ``prune_score``; Narang's
gradual threshold by default), ``gl`` (group lasso during training, then, at ``prune_end``,
the blocks whose RMS is below ``gl_threshold`` are zeroed: lambda sets the sparsity),
``glp`` (a smaller group lasso together with gradual block pruning).

:func:`prune_trained` is written against two callables the task supplies:
``fine_tune(model, pruner, steps)`` (a training loop that calls ``pruner.step(global_step)``
after every optimiser step and adds ``pruner.penalty()``; its return value is ignored) and
``evaluate(model) -> float`` (e.g. validation perplexity); :func:`prune_hooks` gives both
for a trained LM run.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from dualsparse.apps.lm.config import PruneConfig
from dualsparse.apps.lm.runs import load_model, run_config
from dualsparse.apps.lm.task import LMTask
from dualsparse.atomic import atomic_write_json
from dualsparse.sparsity.pruner import Pruner
from dualsparse.sparsity.schedules import (
    AGPSchedule,
    IterativeSchedule,
    NarangSchedule,
    NormCut,
    Schedule,
)
from dualsparse.sparsity.scoring import Scoring
from dualsparse.sparsity.spec import PruningSpec, TensorSpec
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.checkpoint import save_model
from dualsparse.train.loop import Trainer
from dualsparse.validation import check_choice, check_int, check_real

FineTune = Callable[[nn.Module, Pruner, int], Any]
Evaluate = Callable[[nn.Module], float]
Save = Callable[[nn.Module, "Pruner | None", str], Any]
Log = Callable[[str], object]

#: threshold updates of Narang's schedule in ``dualsparse prune`` without ``--prune-freq``
#: (and ``--prune-rounds`` 1, the command's one-shot default)
NARANG_UPDATES = 10


@dataclass
class PruneRunConfig:
    """Settings of ``dualsparse prune`` besides the :class:`PruneConfig`: the trained run
    (``checkpoint`` folder, ``tag``; ``data_dir`` overrides the run's), optimiser steps of
    fine-tuning after each round, their learning rate (default: the run's peak ``lr``), its
    schedule (:data:`FINE_TUNE_LR_SCHEDULES`) and optimiser start (:data:`FINE_TUNE_OPTIMIZERS`),
    and the outputs (results JSON, pruned checkpoint; ``finalize`` drops the masks before
    saving)."""

    checkpoint: str | None = None
    tag: str = "best"
    data_dir: str | None = None
    fine_tune_steps: int = 0
    fine_tune_lr: float | None = None
    fine_tune_lr_schedule: str = "constant"
    fine_tune_optimizer: str = "fresh"
    output: str | None = None
    save: str | None = None
    finalize: bool = False


def _need(value: Any, flag: str, why: str) -> Any:
    if value is None:
        raise ValueError(f"{flag} is required {why}")
    return value


def narang_schedule(cfg: PruneConfig, start: int, end: int, updates: int) -> NarangSchedule:
    """Narang's schedule from ``start`` to ``end``: ramp ``cfg.prune_ramp`` (default a third
    of the way), ``cfg.prune_freq`` (default ``(end - start) // (updates + 1)``)."""
    ramp = cfg.prune_ramp if cfg.prune_ramp is not None else start + (end - start) // 3
    freq = cfg.prune_freq if cfg.prune_freq is not None else max(1, (end - start) // (
        updates + 1))
    return NarangSchedule(start, ramp, end, freq, cfg.prune_ramp_mult, cfg.prune_q_from)


def training_schedule(cfg: PruneConfig) -> Schedule:
    """The schedule (in optimiser steps) of pruning during training."""
    if cfg.prune_method == "gl":
        end = _need(cfg.prune_end, "--prune-end", "for --prune-method gl (the cut step)")
        return NormCut(end, cfg.gl_threshold)
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
    return narang_schedule(cfg, start, end, rounds)


def build_pruner(model: nn.Module, cfg: PruneConfig, schedule: Schedule,
                 log: Log | None = None) -> Pruner:
    """A :class:`Pruner` of ``model`` by ``cfg``'s method, target and scoring on
    ``schedule`` (``log``: see :class:`Pruner`).

    With gl the sparsity is an outcome of lambda: ``--prune-target`` is not used (a warning
    says so). With Narang's schedule the target only sets the default q percentile."""
    method = cfg.prune_method
    if method == "gl" or isinstance(schedule, NarangSchedule):
        target = cfg.prune_target if cfg.prune_target is not None else 0.0
        if method == "gl" and cfg.prune_target:
            warnings.warn(f"--prune-method gl: --prune-target {cfg.prune_target} is not used; "
                          f"the group lasso strength (--group-lasso) and the cut at block RMS "
                          f"< --gl-threshold {cfg.gl_threshold:g} decide the sparsity",
                          UserWarning, stacklevel=2)
    else:
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
                  cfg.q_percentile(), log)


def _print(line: str) -> None:
    print(line, flush=True)


def pruner_for_training(model: nn.Module, cfg: PruneConfig, log: Log | None = _print
                        ) -> Pruner | None:
    """The pruner ``cfg`` describes for a training run, or None without ``prune_method``.
    ``log`` gets the reached sparsity when a threshold schedule (Narang, gl) ends."""
    if cfg.prune_method is None:
        if cfg.group_lasso:
            raise ValueError("--group-lasso needs --prune-method gl or glp")
        return None
    return build_pruner(model, cfg, training_schedule(cfg), log)


def fine_tune_schedule(cfg: PruneConfig, steps: int) -> Schedule:
    """The schedule of Narang's pruning or of gl *during* ``steps`` fine-tuning steps of a
    trained model: narang from ``prune_start`` (default 0) to ``prune_end`` (default
    ``steps // 2``, the papers stop pruning near half of training), gl's cut at
    ``prune_end`` (default the last step, ``steps - 1``)."""
    if cfg.prune_method == "gl":
        end = cfg.prune_end if cfg.prune_end is not None else steps - 1
        if not 0 <= end < steps:
            raise ValueError(f"--prune-end {end} must lie in [0, --fine-tune-steps = {steps})")
        return NormCut(end, cfg.gl_threshold)
    start = cfg.prune_start
    end = cfg.prune_end if cfg.prune_end is not None else steps // 2
    if end > steps:
        raise ValueError(f"--prune-end {end} is after the last fine-tuning step ({steps})")
    updates = cfg.prune_rounds if cfg.prune_rounds > 1 else NARANG_UPDATES
    return narang_schedule(cfg, start, end, updates)


def prune_trained(model: nn.Module, cfg: PruneConfig, opts: PruneRunConfig,
                  fine_tune: FineTune, evaluate: Evaluate, save: Save | None = None
                  ) -> dict[str, Any]:
    """Prune a trained ``model`` in ``cfg.prune_rounds`` rounds with fine-tuning in between.

    Round ``i`` prunes to the schedule's ``i``-th sparsity (iterative: geometric rounds;
    agp: cubic), evaluates, fine-tunes ``opts.fine_tune_steps`` optimiser steps with masks
    frozen, evaluates again. Narang's schedule and gl instead prune *during* one fine-tuning
    of ``opts.fine_tune_steps`` steps (:func:`fine_tune_schedule`; q is taken from the
    trained weights when pruning starts), reported as one round; their sparsity is an
    outcome. Returns (and with ``opts.output`` writes)
    ``{"config", "dense", "rounds": [...], "report", "pruner", "history"}``. With ``opts.save``,
    ``save(model, pruner_or_None, path)`` writes the checkpoint (default:
    :func:`dualsparse.train.checkpoint.save_model`: a checkpoint folder).
    """
    k = check_int("--prune-rounds", cfg.prune_rounds, low=1)
    ft = check_int("--fine-tune-steps", opts.fine_tune_steps, low=0)
    during = cfg.prune_method == "gl" or cfg.prune_schedule == "narang"
    if (cfg.prune_method == "glp" or during) and ft == 0:
        raise ValueError(f"--prune-method {cfg.prune_method} with --prune-schedule "
                         f"{cfg.prune_schedule} needs --fine-tune-steps > 0 (it acts during "
                         f"fine-tuning)")
    if during:
        schedule: Schedule = fine_tune_schedule(cfg, ft)
        points: list[int] = []
    elif cfg.prune_schedule == "iterative":
        schedule = IterativeSchedule(k, 1, k)
        points = schedule.update_steps()
    else:
        schedule = AGPSchedule(0, k, 1)
        points = schedule.update_steps()[1:]
    pruner = build_pruner(model, cfg, schedule, _print if during else None)
    dense = _metric(evaluate(model))
    rounds = []
    if during:
        fine_tune(model, pruner, ft)
        pruner.masks.apply()
        rounds.append({"round": 1, "sparsity": pruner.sparsity(),
                       "metric_fine_tuned": _metric(evaluate(model))})
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
              "pruner": pruner.state_dict(), "history": pruner.history}
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


#: Learning-rate schedules of the fine-tuning after each round: ``"constant"`` at the
#: fine-tuning rate, or ``"cosine"``: linear warm-up over the first tenth of the round's steps
#: (the optimiser state is fresh), then cosine decay to 0.
FINE_TUNE_LR_SCHEDULES = ("constant", "cosine")
FINE_TUNE_OPTIMIZERS = ("fresh", "carry")
"""``fresh``: a new optimiser each fine-tuning round (moments zero); ``carry``: the first round
starts from the trained run's optimiser state (the checkpoint's moments), each later round
from the previous round's."""


def prune_hooks(checkpoint: str | os.PathLike[str], tag: str = "best",
                data_dir: str | None = None, fine_tune_lr: float | None = None,
                fine_tune_lr_schedule: str = "constant", fine_tune_optimizer: str = "fresh"
                ) -> tuple[nn.Module, FineTune, Evaluate]:
    """``(model, fine_tune, evaluate)`` for ``dualsparse prune`` on a trained LM run.

    ``fine_tune(model, pruner, steps)`` trains ``steps`` more optimiser steps with the run's
    settings and the pruner attached, each call going on through the training data where
    the previous one stopped (restarting every round at the first tokens fine-tuned all
    rounds on the same slice, and each round made the EGRU worse), at the learning rate
    ``fine_tune_lr`` (default: the run's peak ``lr``), constant or cosine-decayed to 0 over
    the round (``fine_tune_lr_schedule``; a fresh AdamW held at the peak rate can undo a
    converged model, see ``docs/results.md``), with a fresh optimiser each round or the
    moments carried over from the trained run and from round to round
    (``fine_tune_optimizer``, :data:`FINE_TUNE_OPTIMIZERS`; the hyperparameters are this
    fine-tuning's either way); ``evaluate(model)`` returns the validation perplexity.
    """
    fine_tune_lr_schedule = check_choice("--fine-tune-lr-schedule", fine_tune_lr_schedule,
                                         FINE_TUNE_LR_SCHEDULES)
    fine_tune_optimizer = check_choice("--fine-tune-optimizer", fine_tune_optimizer,
                                       FINE_TUNE_OPTIMIZERS)
    if fine_tune_lr is not None:
        fine_tune_lr = check_real("--fine-tune-lr", fine_tune_lr, low=0.0, low_open=True)
    model, meta = load_model(checkpoint, tag)
    config = run_config(meta)
    if data_dir is not None:
        config.data.data_dir = data_dir
    if fine_tune_lr is not None:
        config.run.lr = fine_tune_lr
    _, train, valid, test = config.data.load()

    def make_task() -> LMTask:
        return LMTask.from_config(config.run, train, valid, test)

    fine_tune_task = make_task()  # shared: each round goes on through the training data
    carried: list[dict[str, Any] | None] = [None]
    if fine_tune_optimizer == "carry":
        tensors, full_meta = ckpt.load_checkpoint(checkpoint, tag)
        if not isinstance(full_meta.get("optimizer"), dict):
            raise ckpt.CheckpointError(f"checkpoint {tag!r} in {checkpoint} has no optimiser "
                                       "state to carry (--fine-tune-optimizer carry)")
        carried[0] = ckpt.join_state(full_meta["optimizer"], tensors)

    def fine_tune(model: nn.Module, pruner: Any, steps: int) -> dict[str, Any]:
        task = fine_tune_task
        cfg = config.run.train_config(task.steps_per_epoch, fine_tune_steps=steps)
        if fine_tune_lr_schedule == "cosine":  # a fresh AdamW: warm up over a tenth
            cfg = replace(cfg, schedule="cosine", cosine_start=0, min_lr_ratio=0.0,
                          warmup_steps=max(1, steps // 10))
        trainer = Trainer(model, task, cfg, pruner=pruner)
        if carried[0] is not None:  # the moments only; lr, betas, decay stay this run's
            trainer.load_optimizer_moments(carried[0])
        result = trainer.fit()
        if fine_tune_optimizer == "carry":
            carried[0] = ckpt.optimizer_state(trainer.optimizer)
        return result

    def evaluate(model: nn.Module) -> float:
        return make_task().evaluate(model, "valid")["ppl"]

    return model, fine_tune, evaluate


__all__ = ["FINE_TUNE_LR_SCHEDULES", "FINE_TUNE_OPTIMIZERS", "NARANG_UPDATES", "PruneRunConfig",
           "build_pruner", "fine_tune_schedule", "narang_schedule", "prune_hooks",
           "prune_trained", "pruner_for_training", "training_schedule"]
