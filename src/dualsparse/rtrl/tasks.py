"""Small sequence tasks for online-learning demos.

``spiral_task``: the toy task of the sparse-RTRL reference code (Subramoney 2023), rebuilt from
its description: a 2-D point ``(sin(t + phi), cos(t + phi)) / (1 + t)`` spirals inwards; for
label 0 the first coordinate is negated, so the two classes turn in opposite directions. The
label (turning direction) must be read from how consecutive inputs relate.

``delayed_recall_stream``: one unbroken stream for online learning. A cue shows one of ``S``
symbols (one-hot); after a random delay of ``delay_min .. delay_max`` blank steps a query flag
asks for that symbol, and the next cue follows. Only query steps have a target. Credit must
flow back over the whole delay, so truncated BPTT with a window shorter than ``delay_min``
cannot learn it, while RTRL (no truncation) can.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from dualsparse.validation import check_int, check_real


def spiral_task(num_sequences: int, seq_len: int = 17, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences ``(T, N, 2)`` and labels ``(N,)`` (long, 0 or 1) of the spiral task.

    The phase ``phi`` is uniform in ``[0, 2 pi)``; ``t = 0 .. T-1``.
    """
    check_int("num_sequences", num_sequences, low=1)
    check_int("seq_len", seq_len, low=2)
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
    check_real("fractions[0]", a, low=0.0, high=1.0, low_open=True, high_open=True)
    check_real("fractions[1]", b, low=0.0, high=1.0 - a, high_open=True)
    i, j = int(a * n), int((a + b) * n)
    return {"train": (inputs[:, :i], labels[:i]), "valid": (inputs[:, i:j], labels[i:j]),
            "test": (inputs[:, j:], labels[j:])}


class RecallStream(NamedTuple):
    """A delayed-recall stream: ``inputs`` ``(T, 1, S + 1)`` (symbol one-hot, query flag),
    ``targets`` ``(T,)`` long (the cued symbol at query steps, -1 elsewhere)."""

    inputs: torch.Tensor
    targets: torch.Tensor

    @property
    def num_queries(self) -> int:
        return int((self.targets >= 0).sum())


def delayed_recall_stream(length: int, delay_min: int, delay_max: int, num_symbols: int = 2,
                          seed: int = 0, dtype: torch.dtype = torch.float32) -> RecallStream:
    """One stream of ``length`` steps of cue, ``delay_min..delay_max`` blanks, query, cue, ...

    Each episode is ``1 + d + 1`` steps (cue, ``d`` blanks, query) with ``d`` uniform in
    ``[delay_min, delay_max]``; the cue step has the symbol's one-hot, the query step input
    channel ``num_symbols`` set to 1 and the cued symbol as target. The stream is cut at
    ``length`` (a last unfinished episode has no query).
    """
    check_int("length", length, low=1)
    check_int("delay_min", delay_min, low=0)
    check_int("delay_max", delay_max, low=delay_min)
    check_int("num_symbols", num_symbols, low=2)
    g = torch.Generator().manual_seed(check_int("seed", seed))
    inputs = torch.zeros(length, 1, num_symbols + 1, dtype=dtype)
    targets = torch.full((length,), -1, dtype=torch.long)
    t = 0
    while t < length:
        sym = int(torch.randint(0, num_symbols, (1,), generator=g))
        d = int(torch.randint(delay_min, delay_max + 1, (1,), generator=g))
        inputs[t, 0, sym] = 1.0
        q = t + d + 1
        if q < length:
            inputs[q, 0, num_symbols] = 1.0
            targets[q] = sym
        t = q + 1
    return RecallStream(inputs, targets)
