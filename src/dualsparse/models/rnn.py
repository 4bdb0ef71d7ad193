"""GRU and LSTM baselines with the same interface and parameter layout as :class:`EGRU`.

Our own cells (not ``nn.GRU``/``nn.LSTM``), so per-gate weight views and pruning masks work
(cuDNN's flattened weights cannot be parametrised). Given the same weights they compute
exactly what ``torch.nn.GRU`` / ``torch.nn.LSTM`` compute.

Gate orders (rows of ``weight_ih_l{k}``/``weight_hh_l{k}``), as PyTorch:

* GRU ``(r, z, n)``: ``h' = (1 - z) * n + z * h``, ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``.
* LSTM ``(i, f, g, o)``: ``c' = f * c + i * g``, ``h' = o * tanh(c')``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dualsparse.models.cell_base import CellBase
from dualsparse.models.recurrent import RecurrentBase
from dualsparse.models.regularizers import zoneout


class GRUState(NamedTuple):
    """State of one GRU layer: ``h`` ``(B, H)``."""

    h: torch.Tensor


class LSTMState(NamedTuple):
    """State of one LSTM layer: output ``h`` and cell ``c``, ``(B, H)``."""

    h: torch.Tensor
    c: torch.Tensor


def gru_step(gi: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
             bias_hh: torch.Tensor | None) -> torch.Tensor:
    """One GRU step given ``gi = W_ih x + b_ih`` ``(B, 3H)``; returns ``h'`` ``(B, H)``."""
    gh = F.linear(h, weight_hh, bias_hh)
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


def lstm_step(gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_hh: torch.Tensor,
              bias_hh: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step given ``gi = W_ih x + b_ih`` ``(B, 4H)``; returns ``(h', c')``."""
    gates = gi + F.linear(h, weight_hh, bias_hh)
    i, f, g, o = gates.chunk(4, -1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


class GRU(RecurrentBase):
    """Multi-layer GRU (``torch.nn.GRU`` semantics) with per-layer sizes and regularisers.

    Args: as :class:`dualsparse.models.EGRU` without the event options (``zoneout`` acts
    on ``h``). State: one :class:`GRUState` per layer.
    """

    gate_names = ("r", "z", "n")
    state_type = GRUState

    def _zero_layer_state(self, layer: int, batch: int, like: torch.Tensor) -> GRUState:
        return GRUState(like.new_zeros(batch, self.hidden_sizes[layer]))

    def _step(self, layer, gi, state, w_hh, b_hh):
        h = self._zoneout(state.h, gru_step(gi, state.h, w_hh, b_hh))
        return h, GRUState(h), None


class LSTM(RecurrentBase):
    """Multi-layer LSTM (``torch.nn.LSTM`` semantics) with per-layer sizes and regularisers.

    Args: as :class:`GRU` (``zoneout`` acts on both ``h`` and ``c``). State: one
    :class:`LSTMState` per layer; the stacked ``(h_0, c_0)`` form of ``nn.LSTM`` is accepted.
    """

    gate_names = ("i", "f", "g", "o")
    state_type = LSTMState

    def _zero_layer_state(self, layer: int, batch: int, like: torch.Tensor) -> LSTMState:
        z = like.new_zeros(batch, self.hidden_sizes[layer])
        return LSTMState(z, z.clone())

    def _step(self, layer, gi, state, w_hh, b_hh):
        h, c = lstm_step(gi, state.h, state.c, w_hh, b_hh)
        h, c = self._zoneout(state.h, h), self._zoneout(state.c, c)
        return h, LSTMState(h, c), None


class GRUCell(CellBase):
    """One GRU step: ``forward(input (B, I) or (I,), state=None) -> (h, GRUState(h))``."""

    num_gates = 3

    def forward(self, input: torch.Tensor, state: GRUState | None = None
                ) -> tuple[torch.Tensor, GRUState]:
        unbatched, gi, (h,), w_hh = self._prepare(input, state, GRUState._fields)
        h_new = zoneout(h, gru_step(gi, h, w_hh, self.bias_hh), self.zoneout, self.training)
        if unbatched:
            h_new = h_new.squeeze(0)
        return h_new, GRUState(h_new)


class LSTMCell(CellBase):
    """One LSTM step: ``forward(input, state=None) -> (h, LSTMState(h, c))``."""

    num_gates = 4

    def forward(self, input: torch.Tensor, state: LSTMState | None = None
                ) -> tuple[torch.Tensor, LSTMState]:
        unbatched, gi, (h, c), w_hh = self._prepare(input, state, LSTMState._fields)
        h_new, c_new = lstm_step(gi, h, c, w_hh, self.bias_hh)
        h_new = zoneout(h, h_new, self.zoneout, self.training)
        c_new = zoneout(c, c_new, self.zoneout, self.training)
        if unbatched:
            h_new, c_new = h_new.squeeze(0), c_new.squeeze(0)
        return h_new, LSTMState(h_new, c_new)
