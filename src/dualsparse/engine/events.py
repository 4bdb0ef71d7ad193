"""Event mismatches between two computations of the same EGRU layer (engine vs PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EventComparison:
    """Events of the engine vs the torch model for one layer.

    ``mismatches``: entries whose events differ; ``near_threshold``: of those, how many have
    ``|c~ - theta| < tol`` (in either computation); ``unexplained`` = the rest (must be 0).
    """

    total: int
    mismatches: int
    near_threshold: int
    unexplained: int


def compare_events(events: torch.Tensor, events_ref: torch.Tensor, internal: torch.Tensor,
                   internal_ref: torch.Tensor, threshold: torch.Tensor,
                   tol: float = 1e-5) -> EventComparison:
    """Compare event tensors ``(T, B, H)`` from two computations of the same EGRU layer.

    A mismatch is *explained* when ``|c~ - theta| < tol`` in either computation: the two float32
    computations round differently, so a ``c~`` that close to the threshold may fall on either
    side. Note that after a mismatch the states of the two computations differ for that unit.
    """
    ev, ev_ref = events.to(torch.float32), events_ref.to(torch.float32)
    if ev.shape != ev_ref.shape:
        raise ValueError(f"event shapes differ: {tuple(ev.shape)} vs {tuple(ev_ref.shape)}")
    th = threshold.to(torch.float32)
    near = ((internal.to(torch.float32) - th).abs() < tol) | (
        (internal_ref.to(torch.float32) - th).abs() < tol)
    diff = ev != ev_ref
    mism = int(diff.sum())
    explained = int((diff & near).sum())
    return EventComparison(ev.numel(), mism, explained, mism - explained)


__all__ = ["EventComparison", "compare_events"]
