"""The ``dualsparse`` command: parses flags onto the apps' configs and dispatches to them.

* ``dualsparse train [--task lm|kws] [--preset NAME] [flags]``: train (``lm``: see
  :mod:`dualsparse.apps.lm`; ``kws``: :mod:`dualsparse.apps.kws.commands`).
  Under ``torchrun --nproc_per_node N -m dualsparse train ...`` it trains with DDP.
* ``dualsparse eval --checkpoint RUN [--tag best] [--split test] [--batch-size 1]
  [--engine torch|sparse]``: ``sparse`` runs the event-driven CPU engine.
* ``dualsparse prune --checkpoint RUN ...``: prune a trained LM run in rounds
  (:mod:`dualsparse.apps.lm.prune`).
* ``dualsparse sweep run SPEC | status`` and ``dualsparse report``: sweeps over sparsity and
  seeds with a SQLite results store, and their figures (:mod:`dualsparse.experiments.cli`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dualsparse.apps.kws import commands as kws_commands
from dualsparse.apps.lm import commands as lm
from dualsparse.apps.lm import flags as lm_flags
from dualsparse.apps.lm.config import LMConfig, PruneConfig
from dualsparse.apps.lm.prune import PruneRunConfig
from dualsparse.data.corpora import DataError
from dualsparse.experiments import cli as sweep_cli
from dualsparse.malloc import keep_freed_memory

TASKS = ("lm", "kws")


def _task_of(argv: list[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default="lm")
    known, _ = pre.parse_known_args(argv)
    return known.task


def build_train_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Parser of ``dualsparse train`` for the task named in ``argv`` (presets applied)."""
    parser = argparse.ArgumentParser(prog="dualsparse train",
                                     description="train a model (default: language model)")
    parser.add_argument("--task", choices=TASKS, default="lm")
    if _task_of(argv) == "kws":
        kws_commands.add_arguments(parser)
        return parser
    lm_flags.add_train_flags(parser, argv)
    return parser


def cmd_train(argv: list[str]) -> dict[str, Any]:
    args = build_train_parser(argv).parse_args(argv)
    if args.task == "kws":
        return kws_commands.run(args)
    return lm.train(LMConfig.from_namespace(args))


def cmd_eval(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="dualsparse eval",
                                     description="evaluate a trained language model")
    lm_flags.add_eval_flags(parser)
    return lm.evaluate_checkpoint(lm_flags.config_from(lm.EvalConfig, parser.parse_args(argv)))


def cmd_prune(argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(prog="dualsparse prune",
                                     description="prune a trained language model")
    lm_flags.add_prune_command_flags(parser)
    args = parser.parse_args(argv)
    return lm.prune_checkpoint(lm_flags.config_from(PruneConfig, args),
                               lm_flags.config_from(PruneRunConfig, args))


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "prune": cmd_prune,
            "sweep": sweep_cli.cmd_sweep, "report": sweep_cli.cmd_report}


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``dualsparse {train,eval,prune,sweep,report} ...``; returns the exit
    status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(f"usage: dualsparse {{{names}}} [options]   (dualsparse COMMAND --help)",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    keep_freed_memory()  # reuse large freed blocks: no page faults on every step's buffers
    try:
        COMMANDS[argv[0]](argv[1:])
    except Exception as exc:  # bad input, missing data, OS errors: a clear line, no traceback
        if not isinstance(exc, (ValueError, DataError, OSError)):
            raise
        print(f"dualsparse {argv[0]}: error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["COMMANDS", "TASKS", "build_train_parser", "main"]
