"""Single-step cell base shared by EGRUCell, GRUCell and LSTMCell (parameters, init, checks)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.models.regularizers import check_probability
from dualsparse.models.tracing import check_finite
from dualsparse.validation import check_int


def check_cell_input(cell: nn.Module, input: torch.Tensor) -> None:
    """Validate a single-step cell input ``(B, I)`` or ``(I,)``."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (1, 2) or input.size(-1) != cell.input_size:
        raise ValueError(f"cell input must be (B, {cell.input_size}) or ({cell.input_size},), "
                         f"got shape {tuple(input.shape)}")
    w = cell.weight_ih
    if input.dtype != w.dtype or input.device != w.device:
        raise ValueError(f"input is {input.dtype} on {input.device}, parameters are {w.dtype} "
                         f"on {w.device}")
    if cell.check_finite:
        check_finite(input, "input")


def check_cell_state(cell: nn.Module, state: tuple, x: torch.Tensor, unbatched: bool,
                      fields: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Validate a cell state; returns its tensors with a batch dimension."""
    if not isinstance(state, (list, tuple)) or len(state) != len(fields):
        raise ValueError(f"state must be a tuple {fields}, got {type(state).__name__}")
    expected = (cell.hidden_size,) if unbatched else (x.size(0), cell.hidden_size)
    out = []
    for name, t in zip(fields, state, strict=True):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"state {name} has shape {shape}, expected {expected}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"state {name} is {t.dtype} on {t.device}, input is {x.dtype} on "
                             f"{x.device}")
        if cell.check_finite:
            check_finite(t, f"state {name}")
        out.append(t.unsqueeze(0) if unbatched else t)
    return tuple(out)


class CellBase(nn.Module):
    """One recurrent layer, one step: ``weight_ih`` ``(G*H, I)``, ``weight_hh`` ``(G*H, H)``,
    ``bias_ih``/``bias_hh`` ``(G*H,)`` initialised as ``nn.GRUCell``; subclasses set
    ``num_gates`` and implement ``forward``."""

    num_gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dropconnect: float = 0.0, zoneout: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__()
        input_size = check_int("input_size", input_size, low=1)
        hidden_size = check_int("hidden_size", hidden_size, low=1)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        self.dropconnect = check_probability("dropconnect", dropconnect)
        self.zoneout = check_probability("zoneout", zoneout)
        self.check_finite = True
        g = self.num_gates
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(g * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(g * hidden_size, hidden_size, **factory))
        if self.bias:
            self.bias_ih = nn.Parameter(torch.empty(g * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(g * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``U(-1/sqrt(H), 1/sqrt(H))`` for the weights and biases, as ``nn.GRUCell``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    def _prepare(self, input: torch.Tensor, state: Sequence[torch.Tensor] | None,
                 fields: tuple[str, ...]):
        """Validate; returns ``(unbatched, W_ih x + b_ih, state tensors (B, H), W_hh)``
        (``W_hh`` after DropConnect in training)."""
        check_cell_input(self, input)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if state is None:
            tensors = tuple(x.new_zeros(x.size(0), self.hidden_size) for _ in fields)
        else:
            tensors = check_cell_state(self, state, x, unbatched, fields)
        w_hh = self.weight_hh
        if self.training and self.dropconnect:
            w_hh = F.dropout(w_hh, self.dropconnect, True)
        return unbatched, F.linear(x, self.weight_ih, self.bias_ih), tensors, w_hh
