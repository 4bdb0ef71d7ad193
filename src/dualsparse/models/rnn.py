"""GRU and LSTM baselines with the same interface and parameter layout as :class:`EGRU`.

Our own modules (not ``nn.GRU``/``nn.LSTM``), so per-gate weight views and pruning masks work
(cuDNN's flattened weights cannot be parametrised). Given the same weights they compute
exactly what ``torch.nn.GRU`` / ``torch.nn.LSTM`` compute.

With ``fused=True`` (default) each layer runs the whole sequence in one call of ATen's own
recurrence (``torch._VF.gru`` / ``torch._VF.lstm``: cuDNN on CUDA, oneDNN's RNN layer or
ATen's C++ time loop on CPU)
over the weights as the forward sees them (masked, dropconnect applied), so gradients reach
the parameters as through the step loop. The Python step loop (``fused=False``) runs instead
where ATen cannot: zoneout (in training a random mask, in evaluation its expectation, both
between steps), ``PackedSequence`` input, tracing and
``torch.compile`` (which traces the loop), and after
:func:`~dualsparse.models.compiled.compile_steps`. Both give the same values up to float
rounding (the fused kernels may sum in another order).

Gate orders (rows of ``weight_ih_l{k}``/``weight_hh_l{k}``), as PyTorch:

* GRU ``(r, z, n)``: ``h' = (1 - z) * n + z * h``, ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``.
* LSTM ``(i, f, g, o)``: ``c' = f * c + i * g``, ``h' = o * tanh(c')``.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

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


def _aten_recurrence(module: RecurrentBase, fn: Any, x: torch.Tensor, hx: Any,
                     weights: tuple) -> tuple | None:
    """One layer through ATen's fused recurrence ``fn`` (``torch._VF.gru``/``lstm``), or
    ``None`` where the module must use its step loop (see the module docstring)."""
    if (not module.fused or module.zoneout > 0  # zoneout acts in evaluation too
            or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return None
    params = [w for w in weights if w is not None]
    if not x.is_cuda:
        return fn(x, hx, params, module.bias, 1, 0.0, module.training, False, False)
    with warnings.catch_warnings():
        # cuDNN copies weights that are not one flat buffer (ours never are: masks and
        # per-layer parameters) on every call and warns about it; the copy is intended
        warnings.filterwarnings("ignore", message="RNN module weights are not part")
        return fn(x, hx, params, module.bias, 1, 0.0, module.training, False, False)


class GRU(RecurrentBase):
    """Multi-layer GRU (``torch.nn.GRU`` semantics) with per-layer sizes and regularisers.

    Args: as :class:`dualsparse.models.EGRU` without the event options (``zoneout`` acts
    on ``h``); ``fused``: ATen's (cuDNN's on CUDA) recurrence where possible, see the module
    docstring (a plain attribute, not part of :meth:`get_config`). State: one
    :class:`GRUState` per layer.
    """

    gate_names = ("r", "z", "n")
    state_type = GRUState

    def __init__(self, *args: Any, fused: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fused = bool(fused)

    def _fused_layer(self, layer, x, weights, state):
        res = _aten_recurrence(self, torch._VF.gru, x, state.h.unsqueeze(0), weights)
        return None if res is None else (res[0], GRUState(res[1].squeeze(0)))

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

    def __init__(self, *args: Any, fused: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fused = bool(fused)

    def _fused_layer(self, layer, x, weights, state):
        hx = (state.h.unsqueeze(0), state.c.unsqueeze(0))
        res = _aten_recurrence(self, torch._VF.lstm, x, hx, weights)
        if res is None:
            return None
        out, h, c = res
        return out, LSTMState(h.squeeze(0), c.squeeze(0))

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
