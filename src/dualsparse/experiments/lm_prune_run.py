"""The ``lm_prune`` run function: the papers' protocol, train dense, then prune iteratively.

Mukherji et al. train a dense model and then prune it in ``k`` rounds with fine-tuning between
rounds. A run config is an ``lm`` run config (see :mod:`dualsparse.experiments.lm_run`) whose
training keys describe the *dense* model, plus the pruning keys (``prune_method``,
``prune_target``, ``prune_rounds``, ``prune_schedule`` (``iterative`` or ``agp`` rounds),
``prune_block``, ``prune_score``, ``prune_tensors``, ``prune_scope``) and one key of this
module:

* ``fine_tune_budget``: optimiser steps of fine-tuning in total, split equally over the rounds
  (``fine_tune_budget // prune_rounds`` after each round), so that runs with different numbers
  of rounds get the same budget (Fig. 3 of the papers).
* ``fine_tune_lr``: the learning rate of that fine-tuning (default None: the dense run's peak
  ``lr``); ``fine_tune_lr_schedule``: ``"constant"`` (default) or ``"cosine"`` (warm-up over a
  tenth of each round, then cosine to 0; :func:`dualsparse.apps.lm.prune.prune_hooks`);
  ``fine_tune_optimizer``: ``"fresh"`` (default: a new optimiser each round) or ``"carry"``
  (the dense run's optimiser moments, then each round's).

The dense model is trained once per distinct dense config (seed included) into
``<sweep output>/dense/<id>/`` and shared by every run that prunes it: all sparsities and all
round counts start from the same point. The run folder's lock lets one worker train it while
others wait; a dense run whose worker died is resumed from its ``latest`` checkpoint.
``prune_target`` 0 (or no ``prune_method``) tests the dense model itself. Fine-tuning uses the
dense run's optimiser settings at ``fine_tune_lr``, ``fine_tune_lr_schedule`` and
``fine_tune_optimizer``; each round goes on through the training data where the previous
round stopped (``dualsparse prune``'s rules).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dualsparse.apps.lm import commands
from dualsparse.apps.lm.config import PruneConfig, canonical, field_names
from dualsparse.apps.lm.evaluate import test_report
from dualsparse.apps.lm.prune import (
    FINE_TUNE_LR_SCHEDULES,
    FINE_TUNE_OPTIMIZERS,
    PruneRunConfig,
    prune_hooks,
    prune_trained,
)
from dualsparse.apps.lm.runs import run_config
from dualsparse.apps.lm.task import LMTask
from dualsparse.atomic import atomic_write_json
from dualsparse.experiments.lm_run import build_config
from dualsparse.experiments.lm_run import check_config as check_dense_config
from dualsparse.experiments.metrics import summarize
from dualsparse.experiments.parameter_histograms import parameter_histograms
from dualsparse.experiments.spec import run_id
from dualsparse.train.checkpoint import read_checkpoint_meta
from dualsparse.train.run_dir import RunLockedError
from dualsparse.validation import check_choice, check_int, check_real

OWN_KEYS = {"fine_tune_budget": 0, "fine_tune_lr": None, "fine_tune_lr_schedule": "constant",
            "fine_tune_optimizer": "fresh"}
#: keys of this module kept with the pruning keys (not part of the dense run's config)
FINE_TUNE_KEYS = ("fine_tune_lr", "fine_tune_lr_schedule", "fine_tune_optimizer")
PRUNE_KEYS = frozenset(f for f in field_names() if f.startswith("prune_")) | {"group_lasso"}
#: seconds between looks at another worker's dense training
POLL_S = 5.0


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(dense run config, pruning keys, fine_tune_budget)`` of an ``lm_prune`` config
    (``fine_tune_lr``, checked here, is left among the pruning keys)."""
    config = dict(config)
    budget = check_int("fine_tune_budget", config.pop("fine_tune_budget", 0), low=0)
    lr = config.pop("fine_tune_lr", None)
    if lr is not None:
        lr = check_real("fine_tune_lr", lr, low=0.0, low_open=True)
    schedule = check_choice("fine_tune_lr_schedule",
                            config.pop("fine_tune_lr_schedule", "constant"),
                            FINE_TUNE_LR_SCHEDULES)
    optimizer = check_choice("fine_tune_optimizer", config.pop("fine_tune_optimizer", "fresh"),
                             FINE_TUNE_OPTIMIZERS)
    preset = config.pop("preset", None)
    given = canonical(config)
    prune = {k: given.pop(k) for k in list(given) if k in PRUNE_KEYS}
    if lr is not None:
        prune["fine_tune_lr"] = lr
    if schedule != "constant":
        prune["fine_tune_lr_schedule"] = schedule
    if optimizer != "fresh":  # the default is left out: run ids of earlier runs stay valid
        prune["fine_tune_optimizer"] = optimizer
    dense = {**({"preset": preset} if preset is not None else {}), **given}
    return dense, prune, budget


def check_config(config: dict[str, Any]) -> tuple[dict[str, Any], PruneConfig, int]:
    """The checks made before any run (``sweep run`` calls it when it loads the spec): the
    dense part is a valid training config, the pruning keys a valid :class:`PruneConfig`."""
    dense, prune, budget = split_config(config)
    check_dense_config(dense)
    return dense, _prune_config(prune), budget


def _prune_config(prune: dict[str, Any]) -> PruneConfig:
    prune = {k: v for k, v in prune.items() if k not in FINE_TUNE_KEYS}
    return PruneConfig(**{**prune, "prune_schedule": prune.get("prune_schedule", "iterative")})


def ensure_dense(dense: dict[str, Any], root: Path, timeout_s: float = 7 * 24 * 3600) -> Path:
    """The folder of the trained dense model for ``dense`` under ``root/dense/``; trains it
    (resuming a dead worker's run, whose lock is stale) unless a live worker holds its run
    lock (:class:`~dualsparse.train.run_dir.RunLock`): then waits for it to finish."""
    folder = root / "dense" / run_id("lm", dense)
    deadline = time.monotonic() + timeout_s
    while not (folder / "results.json").is_file():
        try:
            result = commands.train(build_config(dense, folder))
        except RunLockedError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s:.0f} s for the dense model in "
                                   f"{folder}") from None
            time.sleep(POLL_S)
            continue
        if not result["train"].get("finished"):
            raise RuntimeError(f"dense training did not finish: {result['train']}")
    return folder


def run_lm_prune(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Prune the shared dense model in rounds with fine-tuning, test it; the standard metrics
    dict plus ``dense_test_ppl``, ``dense_dir``, ``pruning`` (method, target, rounds,
    schedule, fine-tuning steps per round, and per round: sparsity, validation perplexity after
    pruning and after fine-tuning), ``flags`` (dense config, presets resolved) and
    ``parameter_histograms`` (weights and biases of the tested model per layer,
    :func:`~dualsparse.experiments.parameter_histograms.parameter_histograms`)."""
    dense, prune, budget = split_config(config)
    run_dir = Path(run_dir)
    dense_dir = ensure_dense(dense, run_dir.parent.parent)
    dense_result = json.loads((dense_dir / "results.json").read_text())
    lr = prune.get("fine_tune_lr")
    lr_schedule = prune.get("fine_tune_lr_schedule", OWN_KEYS["fine_tune_lr_schedule"])
    optimizer = prune.get("fine_tune_optimizer", OWN_KEYS["fine_tune_optimizer"])
    model, fine_tune, evaluate = prune_hooks(dense_dir, "best", fine_tune_lr=lr,
                                             fine_tune_lr_schedule=lr_schedule,
                                             fine_tune_optimizer=optimizer)
    cfg = _prune_config(prune)
    pruning = None
    val_ppl = dense_result["train"].get("best_valid_ppl")
    if cfg.prune_method not in (None, "none") and cfg.prune_target:
        per_round = budget // cfg.prune_rounds
        res = prune_trained(model, cfg, PruneRunConfig(fine_tune_steps=per_round), fine_tune,
                            evaluate)
        atomic_write_json(run_dir / "prune.json", res)
        pruning = {"method": cfg.prune_method, "target": cfg.prune_target,
                   "rounds": cfg.prune_rounds, "schedule": cfg.prune_schedule,
                   "fine_tune_steps_per_round": per_round,
                   "fine_tune_lr": lr, "fine_tune_lr_schedule": lr_schedule,
                   "fine_tune_optimizer": optimizer,
                   "history": res["rounds"]}
        last = res["rounds"][-1]
        val_ppl = last.get("metric_fine_tuned", last["metric_pruned"])
    lm = run_config(read_checkpoint_meta(dense_dir, "best"))
    _, train, valid, test = lm.data.load()
    test_res = test_report(model, LMTask.from_config(lm.run, train, valid, test))
    return summarize(test_res["accounting"], test_ppl=test_res["ppl"], val_ppl=val_ppl,
                     checkpoint=str(dense_dir / "best.json"),
                     dense_test_ppl=dense_result["test"]["ppl"], dense_dir=str(dense_dir),
                     test_tokens=test_res["tokens"], pruning=pruning, flags=lm.flat(),
                     parameter_histograms=parameter_histograms(model))


__all__ = ["FINE_TUNE_KEYS", "OWN_KEYS", "PRUNE_KEYS", "check_config", "ensure_dense",
           "run_lm_prune", "split_config"]
