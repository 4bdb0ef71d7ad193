"""The ``dualsparse`` command.

* ``dualsparse train [--task lm|kws] [--preset NAME] [flags]``: train (``lm``: see
  :mod:`dualsparse.train.lm_task`; ``kws``: :mod:`dualsparse.apps.kws.commands`).
  Under ``torchrun --nproc_per_node N -m dualsparse train ...`` it trains with DDP.
* ``dualsparse eval --checkpoint RUN [--tag best] [--split test] [--batch-size 1]
  [--engine torch|sparse]``: ``sparse`` runs the event-driven CPU engine.
* ``dualsparse prune ...``: :mod:`dualsparse.sparsity.cli` on a trained LM run (when that
  module is installed).
* ``dualsparse sweep run SPEC | status`` and ``dualsparse report``: sweeps over sparsity and
  seeds with a SQLite results store, and their figures (:mod:`dualsparse.experiments.cli`).

Optional parts (the KWS task, pruning) are imported lazily, so the command works without them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Any

from dualsparse.apps.kws import commands as kws_commands

TASKS = ("lm", "kws")


def _optional(module: str) -> ModuleType | None:
    """Import ``module`` if it exists (``None`` if it, not one of its imports, is missing)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name
                                     or module.startswith(exc.name + ".")):
            return None
        raise


def _task_of(argv: list[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default="lm")
    known, _ = pre.parse_known_args(argv)
    return known.task


def build_train_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, Any]:
    """Parser of ``dualsparse train`` for the task named in ``argv``; and the prune module."""
    parser = argparse.ArgumentParser(prog="dualsparse train",
                                     description="train a model (default: language model)")
    parser.add_argument("--task", choices=TASKS, default="lm")
    task = _task_of(argv)
    prune_cli = None
    if task == "kws":
        kws_commands.add_arguments(parser)
        return parser, None
    from dualsparse.train import lm_task
    lm_task.add_arguments(parser)
    prune_cli = _optional("dualsparse.sparsity.cli")
    if prune_cli is not None:
        prune_cli.add_prune_arguments(parser)
    lm_task.apply_preset(parser, argv)
    return parser, prune_cli


def cmd_train(argv: list[str]) -> dict[str, Any]:
    parser, prune_cli = build_train_parser(argv)
    args = parser.parse_args(argv)
    if args.task == "kws":
        return kws_commands.run(args)
    from dualsparse.train import lm_task
    factory = None
    if prune_cli is not None:
        def factory(model):
            return prune_cli.pruner_from_args(model, args)
    return lm_task.run(args, pruner_factory=factory)


def cmd_eval(argv: list[str]) -> dict[str, Any]:
    from dualsparse.train import lm_task
    parser = argparse.ArgumentParser(prog="dualsparse eval",
                                     description="evaluate a trained language model")
    lm_task.add_eval_arguments(parser)
    return lm_task.run_eval(parser.parse_args(argv))


def cmd_prune(argv: list[str]) -> Any:
    prune_cli = _optional("dualsparse.sparsity.cli")
    if prune_cli is None:
        raise SystemExit("dualsparse prune needs dualsparse.sparsity.cli, which is not "
                         "installed in this version")
    from dualsparse.train import lm_task
    parser = argparse.ArgumentParser(prog="dualsparse prune",
                                     description="prune a trained language model")
    parser.add_argument("--checkpoint", required=True, help="trained LM run folder")
    parser.add_argument("--tag", default="best")
    parser.add_argument("--data-dir", default=None)
    prune_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    model, fine_tune, evaluate = lm_task.prune_hooks(args.checkpoint, args.tag, args.data_dir)
    return prune_cli.run(args, model=model, fine_tune=fine_tune, evaluate=evaluate,
                         save=lm_task.pruned_run_saver(args.checkpoint, args.tag))


def cmd_sweep(argv: list[str]) -> Any:
    from dualsparse.experiments.cli import cmd_sweep as run
    return run(argv)


def cmd_report(argv: list[str]) -> Any:
    from dualsparse.experiments.cli import cmd_report as run
    return run(argv)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "prune": cmd_prune, "sweep": cmd_sweep,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``dualsparse {train,eval,prune,sweep,report} ...``; returns the exit
    status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(f"usage: dualsparse {{{names}}} [options]   (dualsparse COMMAND --help)",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except Exception as exc:  # bad input or missing data: a clear message, not a traceback
        from dualsparse.data.corpora import DataError
        if not isinstance(exc, (ValueError, DataError)):
            raise
        print(f"dualsparse {argv[0]}: error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["COMMANDS", "TASKS", "build_train_parser", "main"]
