"""The keyword-spotting task: shuffled mini-batches of FSDD clips, cross-entropy, accuracy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.data.augment import FeatureAugment
from dualsparse.validation import check_choice, check_int

SPLITS = ("valid", "test")


class KWSTask:
    """Classification of whole clips; a :class:`~dualsparse.train.task.Task`.

    Every epoch visits the training clips in a new random order (drawn from the task's own
    NumPy generator, which the checkpoint carries), in batches of ``batch_size`` (the last
    one may be smaller).

    Args:
        x: features ``(T, N, F)`` of all clips (time-first).
        y: labels ``(N,)`` (long).
        index: clip indices per split: ``{"train", "val", "test"}`` -> 1-D int arrays.
        batch_size: training clips per optimiser step.
        seed: seed of the shuffling generator.
        eval_batch_size: clips per forward pass in :meth:`evaluate` (memory only).
        augment: random warps and masks of the training batches (validation and test clips
            are never augmented); draws come from a generator of their own, seeded from
            ``seed`` and carried by the checkpoint.
    """

    metric_fields = ("accuracy",)

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: dict[str, np.ndarray],
                 batch_size: int, seed: int, eval_batch_size: int = 500,
                 augment: FeatureAugment | None = None) -> None:
        if x.dim() != 3 or y.shape != (x.size(1),):
            raise ValueError(f"x must be (T, N, F) and y (N,), got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        self.x, self.y = x, y
        self.index = {k: np.asarray(index[k], dtype=np.int64) for k in ("train", "val", "test")}
        if len(self.index["train"]) == 0:
            raise ValueError("the training split is empty")
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, low=1)
        self.seed = check_int("seed", seed)
        self.rng = np.random.default_rng(seed)
        self.epoch, self.pos = 0, 0
        self.order = self.rng.permutation(self.index["train"])
        self.augment = augment if augment is not None and augment.active else None
        self.aug_rng = np.random.default_rng([self.seed, 1])

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.index["train"]) / self.batch_size)

    def next_batch(self) -> np.ndarray:
        """Clip indices of the next training batch."""
        if self.pos >= len(self.order):
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = self.rng.permutation(self.index["train"])
        batch = self.order[self.pos:self.pos + self.batch_size]
        self.pos += len(batch)
        return batch

    def lr_scale(self, batch: np.ndarray) -> float:
        return 1.0

    def training_loss(self, model: nn.Module, batch: np.ndarray
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        x = self.x[:, batch]
        if self.augment is not None:
            x = self.augment(x, self.aug_rng)
        loss = F.cross_entropy(model(x), self.y[batch])
        return loss, {"tokens": len(batch), "epoch": self.epoch}

    def evaluate(self, model: nn.Module, split: str = "valid") -> dict[str, float]:
        """``loss``, ``accuracy`` and ``error`` (1 - accuracy) on ``valid`` or ``test``."""
        idx = self.index["val" if check_choice("split", split, SPLITS) == "valid" else "test"]
        was_training = model.training
        model.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(idx), self.eval_batch_size):
                b = idx[i:i + self.eval_batch_size]
                logits = model(self.x[:, b])
                total += float(F.cross_entropy(logits, self.y[b], reduction="sum"))
                correct += int((logits.argmax(1) == self.y[b]).sum())
        model.train(was_training)
        n = max(len(idx), 1)
        return {"loss": total / n, "accuracy": correct / n, "error": 1.0 - correct / n}

    def _settings(self) -> dict[str, Any]:
        out = {"batch_size": self.batch_size, "seed": self.seed,
               "n_train": len(self.index["train"])}
        if self.augment is not None:  # absent without augmentation, as in older checkpoints
            out["augment"] = self.augment.settings()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position, this epoch's order and the generators' states."""
        return {"epoch": self.epoch, "pos": self.pos, "order": torch.from_numpy(self.order),
                "rng": self.rng.bit_generator.state, "aug_rng": self.aug_rng.bit_generator.state,
                "settings": self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; ``ValueError`` if batch size, seed, training set size or augmentation differ."""
        if state.get("settings") != self._settings():
            raise ValueError(f"cannot resume: KWS data settings differ (saved "
                             f"{state.get('settings')}, now {self._settings()})")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.order = state["order"].numpy().astype(np.int64)
        self.rng.bit_generator.state = state["rng"]
        if "aug_rng" in state:
            self.aug_rng.bit_generator.state = state["aug_rng"]


__all__ = ["SPLITS", "KWSTask"]
