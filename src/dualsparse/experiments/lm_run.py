"""The ``lm`` run function: train (and prune) a word-level language model, test it, measure it.

A run config is a flat dict of :class:`~dualsparse.apps.lm.config.LMConfig` field values
(``cell``, ``emb_size``, ``hidden_sizes``, ``lr``, ``wdecay``, ``max_steps``, ``seed``,
``prune_method``, ``prune_target``, ``prune_rounds``, ``prune_schedule``, ...; the older
flag names in :data:`~dualsparse.apps.lm.config.ALIASES`, e.g. ``model``, ``emsize``,
``nhid``, ``wdrop``, ``thr_mean``, ``prune_steps``, still work), optionally ``preset`` (its
values are the defaults), plus two keys of this module:

* ``prune_start_frac`` / ``prune_end_frac``: when ``prune_start`` / ``prune_end`` are not
  given, pruning runs from ``prune_start_frac * max_steps`` to ``prune_end_frac * max_steps``
  (defaults 0.25 and 0.75, leaving a quarter of training to recover); the span is rounded
  down to a multiple of ``prune_rounds`` for the AGP schedule; one iterative round
  (one-shot pruning) happens at the start step.

``prune_target`` 0 (or ``prune_method`` None / "none") trains the dense model. The run folder
holds the trainer's checkpoints; a run interrupted and claimed again resumes from its
``latest`` checkpoint. The test perplexity is measured on the best validation checkpoint at
``test_batch_size`` (1 by default, as in the papers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dualsparse.apps.lm import commands
from dualsparse.apps.lm.config import LMConfig, canonical
from dualsparse.apps.lm.presets import with_preset
from dualsparse.experiments.metrics import summarize

OWN_KEYS = {"prune_start_frac": 0.25, "prune_end_frac": 0.75}
_FIXED = {"progress": False, "tensorboard": False}


def build_config(config: dict[str, Any], run_dir: Path) -> LMConfig:
    """The training config for run config ``config`` with checkpoints in ``run_dir``.

    Raises:
        ValueError: for keys that are neither config fields (or aliases) nor
            :data:`OWN_KEYS`, or pruning without ``max_steps`` to place the schedule in.
    """
    config = dict(config)
    preset = config.pop("preset", None)
    own = {k: config.pop(k, v) for k, v in OWN_KEYS.items()}
    given = canonical(config)
    values = with_preset(preset, given)
    if values.get("prune_method") in (None, "none") or not values.get("prune_target"):
        values["prune_method"], values["prune_target"] = None, None
    run_dir = Path(run_dir)
    values.update(_FIXED, save=str(run_dir), resume=(run_dir / "latest.json").is_file())
    cfg = LMConfig.from_dict(values)
    p, max_steps = cfg.prune, cfg.run.max_steps
    if p.prune_method is not None:
        if max_steps is None and (given.get("prune_start") is None
                                  or given.get("prune_end") is None):
            raise ValueError("pruning in a sweep needs max_steps (or explicit prune_start and "
                             "prune_end)")
        for frac_key in OWN_KEYS:
            if not 0.0 <= own[frac_key] <= 1.0:
                raise ValueError(f"{frac_key} must lie in [0, 1], got {own[frac_key]}")
        one_shot = p.prune_rounds == 1 and p.prune_schedule == "iterative"
        if given.get("prune_start") is None:
            p.prune_start = int(own["prune_start_frac"] * max_steps)
        if given.get("prune_end") is None:
            end = int(own["prune_end_frac"] * max_steps)
            if one_shot:
                end = p.prune_start  # one-shot: a single round at the start
            elif p.prune_schedule == "agp" and p.prune_method != "gl":
                span = (end - p.prune_start) // p.prune_rounds * p.prune_rounds
                end = p.prune_start + span
            p.prune_end = end
        if p.prune_end < p.prune_start or (p.prune_end == p.prune_start and not one_shot):
            raise ValueError(f"pruning span is empty: prune_start {p.prune_start}, "
                             f"prune_end {p.prune_end}")
    return cfg


def run_lm(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train, prune and test one language model; the standard metrics dict.

    Extra keys: ``train_seconds``, ``steps``, ``parameters``, ``rnn_parameters``,
    ``test_tokens``, ``test_weights`` (which checkpoint was tested), ``pruning``
    (method, target, rounds (under ``steps``), schedule span), ``flags`` (every config field
    actually used, by field name, presets resolved, so the store stays exact if a preset
    changes later).
    """
    cfg = build_config(config, run_dir)
    result = commands.train(cfg)
    if not result["train"].get("finished") or "test" not in result:
        raise RuntimeError(f"training did not finish: {result['train']}")
    test = result["test"]
    p = cfg.prune
    pruning = None
    if p.prune_method is not None:
        pruning = {"method": p.prune_method, "target": p.prune_target,
                   "steps": p.prune_rounds, "schedule": p.prune_schedule,
                   "start": p.prune_start, "end": p.prune_end}
    return summarize(test["accounting"], test_ppl=test["ppl"],
                     val_ppl=result["train"].get("best_valid_ppl"),
                     checkpoint=str(Path(run_dir) / "best.json"),
                     train_seconds=result["train"].get("train_seconds"),
                     steps=result["train"].get("step"), parameters=result["parameters"],
                     rnn_parameters=result["rnn_parameters"], test_tokens=test["tokens"],
                     test_weights=test.get("weights"), pruning=pruning, flags=cfg.flat())


__all__ = ["OWN_KEYS", "build_config", "run_lm"]
