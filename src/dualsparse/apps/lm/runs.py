"""Run folders of the LM app: the model stored in a checkpoint, and pruned runs written back.

A checkpoint (:mod:`dualsparse.train.checkpoint`) stores the model's tensors under
``"model.<name>"``; :func:`model_tensors` is the one place that prefix is removed again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from dualsparse.apps.lm.config import LMConfig
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.train import checkpoint as ckpt

PREFIX = ckpt.MODEL_PREFIX


def model_tensors(directory: str | os.PathLike[str], tag: str
                  ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """``(tensors, aliases, meta)`` of the model in checkpoint ``tag`` of a run folder, with
    the ``"model."`` prefix removed (``CheckpointError`` if missing or damaged)."""
    tensors, meta = ckpt.load_checkpoint(directory, tag)
    return (*ckpt.model_part(tensors, meta), meta)


def load_model(directory: str | os.PathLike[str], tag: str = "best"
               ) -> tuple[RNNLanguageModel, dict[str, Any]]:
    """The model stored in checkpoint ``tag`` of a run folder, and the checkpoint's JSON."""
    part, aliases, meta = model_tensors(directory, tag)
    model = RNNLanguageModel.from_config(meta["model_config"])
    # a run trained with a pruner also holds its bool mask buffers ("<param>_mask"); the
    # pruned weights are stored as zeros, so the plain model computes the same function
    fresh = model.state_dict()
    for key in [k for k in part if k.endswith("_mask") and k not in fresh]:
        part.pop(key)
    ckpt.load_model_tensors(model, part, aliases)
    return model, meta


def load_best_weights(model: nn.Module, out_dir: str | os.PathLike[str]) -> str:
    """Load the ``best`` weights of run folder ``out_dir`` into ``model`` if present; returns
    the weights used (``"best (step N)"`` or ``"final"``).

    Only a missing ``best`` falls back to the final weights; a damaged one raises."""
    if not (Path(out_dir) / "best.json").is_file():
        return "final"
    part, aliases, meta = model_tensors(out_dir, "best")
    ckpt.load_model_tensors(model, part, aliases)
    return f"best (step {meta['step']})"


def run_config(meta: dict[str, Any]) -> LMConfig:
    """The :class:`LMConfig` a checkpoint was trained with (runs saved before the config
    sections existed store flat, older flag names: they are read too)."""
    return LMConfig.from_dict(meta["run_config"], strict=False)


def pruned_run_saver(checkpoint: str | os.PathLike[str], tag: str = "best"
                     ) -> Callable[[nn.Module, Any, str], None]:
    """``save(model, pruner_or_None, path)`` for ``dualsparse prune --save``: writes a run
    folder (checkpoint ``best``) that ``dualsparse eval`` and ``dualsparse prune`` read like a
    trained run; it keeps the source run's settings and records where it was pruned from."""
    source = ckpt.read_checkpoint_meta(checkpoint, tag)

    def save(model: nn.Module, pruner: Any, path: str) -> None:
        tensors, aliases = ckpt.model_tensors(model)
        meta = {"step": source["step"], "model_config": model.get_config(),
                "aliases": {PREFIX + k: PREFIX + v for k, v in aliases.items()},
                "run_config": source["run_config"],
                "pruner": None if pruner is None else pruner.state_dict(),
                "pruned_from": {"checkpoint": str(checkpoint), "tag": tag}}
        ckpt.save_checkpoint(path, "best", {PREFIX + k: v for k, v in tensors.items()}, meta)

    return save


__all__ = ["PREFIX", "load_best_weights", "load_model", "model_tensors", "pruned_run_saver",
           "run_config"]
