"""Regularisers for recurrent language models (AWD-LSTM style) and event-based RNNs.

All functions are no-ops (return their input, or the expected value) when ``training`` is
False, except :func:`zoneout`, whose evaluation form is the expectation
``p * previous + (1 - p) * new`` (Krueger et al., 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.validation import check_real


def check_probability(name: str, p: float) -> float:
    """Validate a drop probability in ``[0, 1)`` and return it as a float."""
    try:
        return check_real(name, p, low=0.0, high=1.0, high_open=True)
    except ValueError:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}") from None


def locked_dropout(x: torch.Tensor, p: float, training: bool, batch_first: bool = False
                   ) -> torch.Tensor:
    """Variational (locked) dropout: one mask per sequence, shared over time.

    Args:
        x: ``(T, B, F)`` (or ``(B, T, F)`` with ``batch_first``).
        p: drop probability; kept entries are scaled by ``1 / (1 - p)``.
    """
    if not training or p == 0.0:
        return x
    time_dim = 1 if batch_first else 0
    shape = list(x.shape)
    shape[time_dim] = 1
    mask = x.new_empty(shape).bernoulli_(1.0 - p) / (1.0 - p)
    return x * mask


class LockedDropout(nn.Module):
    """Module form of :func:`locked_dropout`."""

    def __init__(self, p: float = 0.5, batch_first: bool = False) -> None:
        super().__init__()
        self.p = check_probability("p", p)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return locked_dropout(x, self.p, self.training, self.batch_first)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def embedding_dropout(embedding: nn.Embedding, words: torch.Tensor, p: float, training: bool
                      ) -> torch.Tensor:
    """Embedding lookup that drops whole words (rows of the table) with probability ``p``.

    Args:
        words: integer tensor of any shape. Returns ``words.shape + (embedding_dim,)``.
    """
    weight = embedding.weight
    if training and p > 0.0:
        mask = weight.new_empty((weight.size(0), 1)).bernoulli_(1.0 - p) / (1.0 - p)
        weight = weight * mask
    return F.embedding(words, weight, embedding.padding_idx, embedding.max_norm,
                       embedding.norm_type, embedding.scale_grad_by_freq, embedding.sparse)


def dropconnect(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """DropConnect: drop individual weights (one mask per call), rescale by ``1 / (1 - p)``."""
    if not training or p == 0.0:
        return weight
    return F.dropout(weight, p, training=True)


def zoneout(previous: torch.Tensor, new: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zoneout: each unit keeps its previous value with probability ``p``.

    Training: a fresh Bernoulli mask per call (per step). Evaluation: the expectation
    ``p * previous + (1 - p) * new``.
    """
    if p == 0.0:
        return new
    if not training:
        return p * previous + (1.0 - p) * new
    keep = torch.empty_like(new).bernoulli_(p)
    return keep * previous + (1.0 - keep) * new


def activity_penalty(events: Sequence[torch.Tensor], weight: float,
                     target: float = 0.0) -> torch.Tensor:
    """``weight * mean over layers of max(rate - target, 0)``: an activity regulariser.

    With ``target=0`` this is EvNN's ``weight * mean event rate``. A positive ``target`` (a
    per-layer event rate, e.g. 0.25 for 75% sparsity) penalises only the layers that fire
    more often than that, so layers already sparse enough are left alone.

    Args:
        events: per layer, event tensors ``(T, B, H)`` (values in {0, 1}, differentiable
            through the surrogate) as returned with ``return_sequences=True``.
        weight: penalty coefficient (>= 0).
        target: event rate per layer below which there is no penalty, in [0, 1).
    """
    weight = check_real("activity penalty weight", weight, low=0.0)
    target = check_real("activity target", target, low=0.0, high=1.0, high_open=True)
    if len(events) == 0:
        raise ValueError("activity_penalty needs at least one layer of events")
    rates = torch.stack([e.mean() for e in events])
    return weight * torch.clamp(rates - target, min=0.0).mean()
