"""Small sequence tasks for online-learning demos.

``spiral_task``: the toy task of the sparse-RTRL reference code (Subramoney 2023), rebuilt from
its description: a 2-D point ``(sin(t + phi), cos(t + phi)) / (1 + t)`` spirals inwards; for
label 0 the first coordinate is negated, so the two classes turn in opposite directions. The
label (turning direction) must be read from how consecutive inputs relate.
"""

from __future__ import annotations

import math

import torch


def spiral_task(num_sequences: int, seq_len: int = 17, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences ``(T, N, 2)`` and labels ``(N,)`` (long, 0 or 1) of the spiral task.

    The phase ``phi`` is uniform in ``[0, 2 pi)``; ``t = 0 .. T-1``.
    """
    if num_sequences < 1 or seq_len < 2:
        raise ValueError(f"need num_sequences >= 1 and seq_len >= 2, got "
                         f"{num_sequences}, {seq_len}")
    g = torch.Generator().manual_seed(seed)
    phase = 2 * math.pi * torch.rand(num_sequences, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (num_sequences,), generator=g)
    t = torch.arange(seq_len, dtype=torch.float64)[:, None]
    ang = t + phase[None, :]
    decay = 1.0 / (1.0 + t)
    x1 = torch.sin(ang) * decay
    x2 = torch.cos(ang) * decay
    x1 = torch.where(labels[None, :] == 0, -x1, x1)
    return torch.stack([x1, x2], dim=-1).to(dtype), labels


def split(inputs: torch.Tensor, labels: torch.Tensor, fractions: tuple[float, float] = (0.7, 0.15)
          ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train/valid/test split along the sequence axis (dim 1 of ``inputs``)."""
    n = labels.numel()
    a, b = fractions
    if not (0 < a < 1 and 0 <= b < 1 and a + b < 1):
        raise ValueError(f"bad split fractions {fractions}")
    i, j = int(a * n), int((a + b) * n)
    return {"train": (inputs[:, :i], labels[:i]), "valid": (inputs[:, i:j], labels[i:j]),
            "test": (inputs[:, j:], labels[j:])}
