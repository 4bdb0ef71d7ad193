"""The Task protocol: what a task provides to the :class:`~dualsparse.train.loop.Trainer`.

The Trainer owns optimisation (optimiser, schedule, clipping, pruner hooks, checkpoints,
logs); a task owns everything about the data and the loss. Implementations:
:class:`dualsparse.apps.lm.task.LMTask` (language modelling), :class:`dualsparse.apps.kws.
task.KWSTask` (keyword spotting) and :class:`dualsparse.experiments.toy.ToyTask`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Task(Protocol):
    """Batches, loss, evaluation and the state a resumed run needs.

    ``state_dict()`` may hold tensors, NumPy arrays, tuples and JSON values (the checkpoint
    splits them, see :func:`dualsparse.train.checkpoint.split_state`); after
    ``load_state_dict(state_dict())`` the task must produce the same batches again: this is
    what makes a resumed run bitwise identical to an uninterrupted one.

    Optional attribute ``metric_fields`` (tuple of str): extra ``metrics.csv`` columns that
    ``evaluate`` results carry (e.g. ``("accuracy",)``).
    """

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one pass over the training data."""
        ...

    def next_batch(self) -> Any:
        """The next training batch (the task advances its own data order)."""
        ...

    def lr_scale(self, batch: Any) -> float:
        """Learning-rate multiplier for this batch (1 for fixed-size batches)."""
        ...

    def training_loss(self, model: nn.Module, batch: Any
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss to minimise, stats)``; stats may hold ``loss`` (float, logged instead of
        the minimised loss), ``activity``, ``tokens`` (for throughput) and ``epoch``."""
        ...

    def evaluate(self, model: nn.Module, split: str) -> dict[str, Any]:
        """Metrics on ``split`` (``"valid"`` or ``"test"``); must contain ``loss``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Data position, carried state and the settings they depend on."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (``ValueError`` if the settings differ)."""
        ...


__all__ = ["Task"]
