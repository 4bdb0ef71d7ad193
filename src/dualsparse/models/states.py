"""Recurrent state helpers shared by EGRU, GRU and LSTM.

A state is a tuple with one entry per layer; each entry is the layer's NamedTuple state
(``EGRUState(y, c)``, ``GRUState(h)``, ``LSTMState(h, c)``) holding ``(B, H_k)`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch


class LayerSequences(NamedTuple):
    """Per-layer sequences returned with ``return_sequences=True``.

    Attributes:
        output: ``(T, B, H)`` the layer's output (EGRU: ``y``; GRU/LSTM: ``h``), which is the
            next layer's input (before inter-layer dropout).
        initial_output: ``(B, H)`` the recurrent input of the first step (``y_0`` / ``h_0``).
        events: ``(T, B, H)`` event indicators ``o_t`` (EGRU only, else ``None``).
        internal: ``(T, B, H)`` pre-reset internal state ``c~_t`` (EGRU only, else ``None``):
            the surrogate is evaluated at ``c~_t - theta``.
    """

    output: torch.Tensor
    initial_output: torch.Tensor
    events: torch.Tensor | None = None
    internal: torch.Tensor | None = None


def stack_state(state: Sequence[tuple]) -> Any:
    """Convert a per-layer state tuple into the ``nn.GRU``/``nn.LSTM`` stacked form.

    ``(GRUState(h),)*L`` -> ``h_n`` ``(L, B, H)``; LSTM -> ``(h_n, c_n)``; EGRU ->
    ``EGRUState(y (L, B, H), c (L, B, H))``. All layers must have the same size.
    """
    first = state[0]
    stacked = [torch.stack([s[i] for s in state]) for i in range(len(first))]
    if len(stacked) == 1:
        return stacked[0]
    return type(first)(*stacked)


def detach_state(state: Sequence[tuple]) -> tuple:
    """Detach every tensor of a per-layer state (truncated BPTT between segments)."""
    return tuple(type(s)(*(t.detach() for t in s)) for s in state)
