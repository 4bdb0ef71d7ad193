"""Command-line side of pruning: flags for ``dualsparse train`` and the ``dualsparse prune`` run.

``dualsparse train``: :func:`add_prune_arguments` adds the ``--prune-*`` flags and
:func:`pruner_from_args` turns them into a :class:`Pruner` (None without ``--prune-method``).
Methods:

* ``magnitude``: unstructured (1x1) magnitude pruning;
* ``block``: block pruning (``--prune-block``, default 4x4) scored by ``--prune-score``;
* ``gl``: group lasso (``--group-lasso``) during training, then one cut to the target at
  ``--prune-end``;
* ``glp``: group lasso together with gradual block pruning by ``--prune-schedule``.

``dualsparse prune``: :func:`add_arguments` + :func:`run` prune a trained model in
``--prune-steps`` rounds (1 = one-shot), fine-tuning ``--fine-tune-steps`` optimiser steps
after each round. :func:`run` is written against two callables the task supplies:
``fine_tune(model, pruner, steps)`` (a training loop; its return value is ignored that calls
``pruner.step(global_step)`` after every optimiser step and adds ``pruner.penalty()``) and
``evaluate(model) -> float`` (e.g. validation perplexity).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from dualsparse.atomic import atomic_write_json
from dualsparse.sparsity.pruner import Pruner
from dualsparse.sparsity.schedules import (
    AGPSchedule,
    IterativeSchedule,
    NarangSchedule,
    Schedule,
)
from dualsparse.sparsity.scoring import SCOPES, STATS, Scoring, parse_block
from dualsparse.sparsity.spec import PruningSpec, TensorSpec
from dualsparse.train.checkpoint import save_model

METHODS = ("magnitude", "block", "gl", "glp")
SCHEDULES = ("iterative", "agp", "narang")
DEFAULT_TENSORS = "*weight_ih_l*,*weight_hh_l*"

FineTune = Callable[[nn.Module, Pruner, int], Any]
Evaluate = Callable[[nn.Module], float]
Save = Callable[[nn.Module, "Pruner | None", str], Any]


def add_prune_arguments(parser: argparse.ArgumentParser, command: str = "train") -> None:
    """Add the pruning flags (``command="prune"`` changes the defaults for one-shot/iterative
    pruning of a trained model)."""
    prune = command == "prune"
    g = parser.add_argument_group("weight pruning")
    g.add_argument("--prune-method", choices=METHODS, default="magnitude" if prune else None,
                   help="pruning method (default: %(default)s)")
    g.add_argument("--prune-target", type=float, default=None,
                   help="final fraction of pruned weights in [0, 1)")
    g.add_argument("--prune-schedule", choices=SCHEDULES,
                   default="iterative" if prune else "agp",
                   help="schedule in optimiser steps (default: %(default)s)")
    g.add_argument("--prune-start", type=int, default=0, help="first pruning step")
    g.add_argument("--prune-end", type=int, default=None, help="last pruning step")
    g.add_argument("--prune-steps", type=int, default=1 if prune else 10,
                   help="iterative: rounds; agp: mask updates; narang: updates if no --prune-freq")
    g.add_argument("--prune-freq", type=int, default=None,
                   help="narang: steps between threshold updates")
    g.add_argument("--prune-ramp", type=int, default=None,
                   help="narang: step where the slope rises (default start + (end-start)/3)")
    g.add_argument("--prune-ramp-mult", type=float, default=1.5,
                   help="narang: phi / theta (default %(default)s; ends near q)")
    g.add_argument("--prune-q-percentile", type=float, default=90.0,
                   help="narang: q = this percentile of each tensor's block scores")
    g.add_argument("--prune-block", type=parse_block, default=None,
                   help="block shape RxC (rows within a gate x columns; default 4x4 for "
                        "block/gl/glp, 1x1 for magnitude)")
    g.add_argument("--prune-score", choices=STATS, default="max", help="block statistic of |w|")
    g.add_argument("--prune-tensors", default=DEFAULT_TENSORS,
                   help="comma-separated parameter names or patterns (default %(default)s)")
    g.add_argument("--prune-scope", choices=SCOPES, default="layer",
                   help="rank per tensor (layer) or all tensors together (global)")
    g.add_argument("--group-lasso", type=float, default=0.0,
                   help="group lasso strength lambda over the pruning blocks (gl, glp)")


def _need(value: Any, flag: str, why: str) -> Any:
    if value is None:
        raise ValueError(f"{flag} is required {why}")
    return value


def _schedule(args: argparse.Namespace) -> Schedule:
    if args.prune_method == "gl":
        end = _need(args.prune_end, "--prune-end", "for --prune-method gl (the cut step)")
        return IterativeSchedule(1, end, end)
    start = args.prune_start
    end = _need(args.prune_end, "--prune-end", "with --prune-method")
    steps = args.prune_steps
    if args.prune_schedule == "iterative":
        return IterativeSchedule(steps, start, end)
    if args.prune_schedule == "agp":
        if steps < 1 or (end - start) % steps:
            raise ValueError(f"agp: --prune-end - --prune-start = {end - start} must be a "
                             f"multiple of --prune-steps = {steps}")
        return AGPSchedule(start, end, (end - start) // steps)
    ramp = args.prune_ramp if args.prune_ramp is not None else start + (end - start) // 3
    freq = args.prune_freq if args.prune_freq is not None else max(1, (end - start) // (
        steps + 1))
    return NarangSchedule(start, ramp, end, freq, args.prune_ramp_mult)


def _build(model: nn.Module, args: argparse.Namespace, schedule: Schedule) -> Pruner:
    method = args.prune_method
    target = _need(args.prune_target, "--prune-target", "with --prune-method")
    block = args.prune_block
    if method == "magnitude":
        if block not in (None, (1, 1)):
            raise ValueError(f"--prune-method magnitude is unstructured (1x1); got --prune-block "
                             f"{block[0]}x{block[1]} (use --prune-method block)")
        block = (1, 1)
    elif block is None:
        block = (4, 4)
    lam = args.group_lasso
    if method in ("gl", "glp") and not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"--prune-method {method} needs --group-lasso > 0, got {lam}")
    patterns = [p.strip() for p in args.prune_tensors.split(",") if p.strip()]
    if not patterns:
        raise ValueError("--prune-tensors names no tensor")
    spec = PruningSpec(tuple(TensorSpec(p) for p in patterns), sparsity=target, block=block)
    return Pruner(model, spec, schedule, Scoring(args.prune_score, args.prune_scope), lam,
                  args.prune_q_percentile)


def pruner_from_args(model: nn.Module, args: argparse.Namespace) -> Pruner | None:
    """The pruner the ``--prune-*`` flags describe, or None without ``--prune-method``."""
    if args.prune_method is None:
        if args.group_lasso:
            raise ValueError("--group-lasso needs --prune-method gl or glp")
        return None
    return _build(model, args, _schedule(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dualsparse prune`` besides the checkpoint, which the caller
    (:mod:`dualsparse.cli`) adds and loads into the model it passes to :func:`run`."""
    add_prune_arguments(parser, command="prune")
    parser.add_argument("--fine-tune-steps", type=int, default=0,
                        help="optimiser steps of fine-tuning after each round (default 0)")
    parser.add_argument("--output", default=None, help="write the results JSON here")
    parser.add_argument("--save", default=None, help="write the pruned checkpoint here")
    parser.add_argument("--finalize", action="store_true",
                        help="drop the masks before saving (plain dense-with-zeros weights)")


def run(args: argparse.Namespace, model: nn.Module, fine_tune: FineTune,
        evaluate: Evaluate, save: Save | None = None) -> dict[str, Any]:
    """Prune a trained ``model`` in ``--prune-steps`` rounds with fine-tuning in between.

    Round ``i`` prunes to the schedule's ``i``-th sparsity (iterative: geometric rounds;
    agp: cubic), evaluates, fine-tunes with masks frozen, evaluates again. Returns (and with
    ``--output`` writes) ``{"config", "dense", "rounds": [...], "report", "pruner"}``.
    With ``--save``, ``save(model, pruner_or_None, path)`` writes the checkpoint (default:
    :func:`dualsparse.train.checkpoint.save_model`: a checkpoint folder).
    """
    if args.prune_method == "gl":
        raise ValueError("--prune-method gl needs training with the penalty before its cut; "
                         "use dualsparse train --prune-method gl (or glp here)")
    if args.prune_schedule == "narang":
        raise ValueError("dualsparse prune supports the iterative and agp schedules; Narang's "
                         "threshold schedule runs during training (dualsparse train)")
    k = args.prune_steps
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"--prune-steps must be >= 1 rounds, got {k!r}")
    ft = args.fine_tune_steps
    if not isinstance(ft, int) or ft < 0:
        raise ValueError(f"--fine-tune-steps must be >= 0, got {ft!r}")
    if args.prune_method == "glp" and ft == 0:
        raise ValueError("--prune-method glp needs --fine-tune-steps > 0 (the penalty acts "
                         "during fine-tuning)")
    if args.prune_schedule == "iterative":
        schedule: Schedule = IterativeSchedule(k, 1, k)
        points = schedule.update_steps()
    else:
        schedule = AGPSchedule(0, k, 1)
        points = schedule.update_steps()[1:]
    pruner = _build(model, args, schedule)
    dense = _metric(evaluate(model), "evaluate(model)")
    rounds = []
    for i, point in enumerate(points, 1):
        pruner.update_masks(point)
        row: dict[str, Any] = {"round": i, "sparsity": pruner.sparsity(),
                               "metric_pruned": _metric(evaluate(model), "evaluate(model)")}
        if ft:
            with pruner.frozen():
                fine_tune(model, pruner, ft)
            pruner.masks.apply()
            row["metric_fine_tuned"] = _metric(evaluate(model), "evaluate(model)")
        rounds.append(row)
    result = {"config": {k: v for k, v in vars(args).items() if _jsonable(v)},
              "dense": dense, "rounds": rounds, "report": pruner.report(),
              "pruner": pruner.state_dict()}
    if args.finalize:
        pruner.finalize()
    if args.save:
        kept = None if args.finalize else pruner
        if save is not None:
            save(model, kept, args.save)
        else:
            save_model(args.save, model, kept,
                       extra={"prune_result": {"dense": dense, "rounds": rounds}})
    if args.output:
        atomic_write_json(args.output, result)
    return result


def _metric(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{what} must return a number, got {value!r}")
    return float(value)


def _jsonable(v: Any) -> bool:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return True
    return isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v)
