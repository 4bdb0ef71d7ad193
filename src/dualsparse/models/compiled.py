"""Compile one time step instead of the whole sequence (``torch.compile``).

``torch.compile(rnn)`` traces the Python time loop unrolled: the graph grows with ``T`` and
every new sequence length compiles again (tens of seconds to minutes on a CPU).
:func:`compile_steps` compiles only the function one layer runs per step (GRU/LSTM:
``_step``; EGRU: :func:`~dualsparse.models.egru.egru_step`, through the unfused time loop);
the loop stays in Python and calls the compiled step, so a new ``T`` reuses it (and, after
the second batch size seen, a new batch size as well: dynamic shapes). Backward runs through
the compiled steps. Each layer of a different size compiles once.

Measured compile and run times: ``benchmarks/bench_compile.py`` and ``docs/models.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from dualsparse.models.egru import EGRU, egru_step
from dualsparse.models.recurrent import RecurrentBase


def compile_steps(module: RecurrentBase, **compile_kwargs: Any) -> RecurrentBase:
    """Compile ``module``'s per-step function in place and return ``module``.

    ``compile_kwargs`` go to ``torch.compile`` (e.g. ``backend``, ``mode``, ``dynamic``).
    An EGRU switches to its unfused time loop (``fused=False``: same values, autograd through
    the compiled steps instead of the hand-written BPTT); a GRU or LSTM to its step loop
    (``fused=False``) instead of ATen's fused recurrence.
    """
    if not isinstance(module, RecurrentBase):
        raise ValueError(f"module must be an EGRU, GRU or LSTM, got {type(module).__name__}")
    if isinstance(module, EGRU):
        module.fused = False
        module._egru_step = torch.compile(egru_step, **compile_kwargs)
    else:  # GRU/LSTM: the step loop instead of ATen's fused recurrence
        module.fused = False
        module._step = torch.compile(module._step, **compile_kwargs)
    return module


__all__ = ["compile_steps"]
