"""The ``lm`` run function: train (and prune) a word-level language model, test it, measure it.

A run config is a flat dict of ``dualsparse train --task lm`` settings under their argparse
``dest`` names (``model``, ``emsize``, ``nhid``, ``lr``, ``wdecay``, ``wdecay_bias``,
``max_steps``, ``seed``, ``prune_method``, ``prune_target``, ``prune_steps``,
``prune_schedule``, ...; see :mod:`dualsparse.train.lm_task` and
:mod:`dualsparse.sparsity.cli`), optionally ``preset`` (its values are the defaults), plus
two keys of this module:

* ``prune_start_frac`` / ``prune_end_frac``: when ``prune_start`` / ``prune_end`` are not
  given, pruning runs from ``prune_start_frac * max_steps`` to ``prune_end_frac * max_steps``
  (defaults 0.25 and 0.75, leaving a quarter of training to recover); the span is rounded
  down to a multiple of ``prune_steps`` for the AGP schedule; one iterative round
  (one-shot pruning) happens at the start step.

``prune_target`` 0 (or ``prune_method`` None / "none") trains the dense model. The run folder
holds the trainer's checkpoints; a run interrupted and claimed again resumes from its
``latest`` checkpoint. The test perplexity is measured on the best validation checkpoint at
``test_batch_size`` (1 by default, as in the papers).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dualsparse.experiments.metrics import summarize

OWN_KEYS = {"prune_start_frac": 0.25, "prune_end_frac": 0.75}
_FIXED = {"progress": False, "tensorboard": False}


def lm_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``dualsparse train --task lm`` with the pruning flags."""
    from dualsparse.sparsity import cli as prune_cli
    from dualsparse.train import lm_task
    from dualsparse.train.presets import get_preset

    parser = argparse.ArgumentParser(prog="lm run", add_help=False)
    lm_task.add_arguments(parser)
    prune_cli.add_prune_arguments(parser)
    if preset is not None:
        parser.set_defaults(**get_preset(preset))
    return parser


def _coerce(args: argparse.Namespace) -> None:
    if isinstance(args.nhid, int):
        args.nhid = [args.nhid]
    args.model = str(args.model).upper()
    block = args.prune_block
    if isinstance(block, str):
        from dualsparse.sparsity.scoring import parse_block
        args.prune_block = parse_block(block)
    elif isinstance(block, list):
        args.prune_block = tuple(block)
    if args.prune_method in (None, "none") or not args.prune_target:
        args.prune_method, args.prune_target = None, None


def build_args(config: dict[str, Any], run_dir: Path) -> argparse.Namespace:
    """The training namespace for ``config`` with checkpoints in ``run_dir``.

    Raises:
        ValueError: for keys that are neither training flags nor :data:`OWN_KEYS`, or
            pruning without ``max_steps`` to place the schedule in.
    """
    config = dict(config)
    preset = config.pop("preset", None)
    own = {k: config.pop(k, v) for k, v in OWN_KEYS.items()}
    parser = lm_parser(preset)
    dests = {a.dest for a in parser._actions}
    unknown = sorted(set(config) - dests)
    if unknown:
        raise ValueError(f"unknown LM run config keys {unknown}")
    args = parser.parse_args([])
    for key, value in config.items():
        setattr(args, key, value)
    for key, value in _FIXED.items():
        setattr(args, key, value)
    _coerce(args)
    run_dir = Path(run_dir)
    args.save = str(run_dir)
    args.resume = (run_dir / "latest.json").is_file()
    if args.prune_method is not None:
        if args.max_steps is None and (config.get("prune_start") is None
                                       or config.get("prune_end") is None):
            raise ValueError("pruning in a sweep needs max_steps (or explicit prune_start and "
                             "prune_end)")
        for frac_key in OWN_KEYS:
            if not 0.0 <= own[frac_key] <= 1.0:
                raise ValueError(f"{frac_key} must lie in [0, 1], got {own[frac_key]}")
        if config.get("prune_start") is None:
            args.prune_start = int(own["prune_start_frac"] * args.max_steps)
        if config.get("prune_end") is None:
            end = int(own["prune_end_frac"] * args.max_steps)
            if args.prune_steps == 1 and args.prune_schedule == "iterative":
                end = args.prune_start  # one-shot: a single round at the start
            elif args.prune_schedule == "agp" and args.prune_method != "gl":
                span = (end - args.prune_start) // args.prune_steps * args.prune_steps
                end = args.prune_start + span
            args.prune_end = end
        one_shot = args.prune_steps == 1 and args.prune_schedule == "iterative"
        if args.prune_end < args.prune_start or (args.prune_end == args.prune_start
                                                 and not one_shot):
            raise ValueError(f"pruning span is empty: prune_start {args.prune_start}, "
                             f"prune_end {args.prune_end}")
    return args


def run_lm(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train, prune and test one language model; the standard metrics dict.

    Extra keys: ``train_seconds``, ``steps``, ``parameters``, ``rnn_parameters``,
    ``test_tokens``, ``test_weights`` (which checkpoint was tested), ``pruning``
    (method, target, steps, schedule span), ``flags`` (every training setting actually used,
    presets resolved, so the store stays exact if a preset changes later).
    """
    from dualsparse.sparsity import cli as prune_cli
    from dualsparse.train import lm_task

    args = build_args(config, run_dir)
    factory = None
    if args.prune_method is not None:
        def factory(model):
            return prune_cli.pruner_from_args(model, args)
    result = lm_task.run(args, pruner_factory=factory)
    if not result["train"].get("finished") or "test" not in result:
        raise RuntimeError(f"training did not finish: {result['train']}")
    test = result["test"]
    pruning = None
    if args.prune_method is not None:
        pruning = {"method": args.prune_method, "target": args.prune_target,
                   "steps": args.prune_steps, "schedule": args.prune_schedule,
                   "start": args.prune_start, "end": args.prune_end}
    return summarize(test["accounting"], test_ppl=test["ppl"],
                     val_ppl=result["train"].get("best_valid_ppl"),
                     checkpoint=str(Path(run_dir) / "best.json"),
                     train_seconds=result["train"].get("train_seconds"),
                     steps=result["train"].get("step"), parameters=result["parameters"],
                     rnn_parameters=result["rnn_parameters"], test_tokens=test["tokens"],
                     test_weights=test.get("weights"), pruning=pruning,
                     flags={k: v for k, v in vars(args).items() if _plain(v)})


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


__all__ = ["OWN_KEYS", "build_args", "lm_parser", "run_lm"]
