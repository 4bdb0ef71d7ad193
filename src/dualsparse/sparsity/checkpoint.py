"""Save and load pruned models: ``{"model": state_dict (with masks), "pruner": state}``.

Files are written atomically (temporary file + rename) and read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dualsparse.atomic import atomic_write, atomic_write_json
from dualsparse.sparsity.pruner import Pruner


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_json(path, obj)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, pruner: Pruner | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save the model's state_dict (mask buffers included) and the pruner's state."""
    payload = {"model": model.state_dict(),
               "pruner": None if pruner is None else pruner.state_dict(),
               "extra": extra or {}}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> Pruner | None:
    """Load a :func:`save_checkpoint` file into a *fresh* model: rebuilds the pruner (which
    adds the mask buffers) and then loads the weights and masks. Returns the pruner (None for
    an unpruned or finalized checkpoint)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or "model" not in ck:
        raise ValueError(f"{path} is not a dualsparse pruning checkpoint (no 'model' entry)")
    pruner = Pruner.from_config(model, ck["pruner"]) if ck.get("pruner") else None
    missing, unexpected = model.load_state_dict(ck["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    if pruner is not None:
        pruner.masks.apply()
    return pruner
