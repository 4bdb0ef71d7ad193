"""One recurrent step with its local derivatives, the raw material of RTRL.

The recursion runs on the pre-reset state ``s_t = c~_t`` of the EGRU (for the GRU
``s_t = h_t``): both ``y_t = o_t * c~_t`` and ``c_t`` (``c~_t - o_t * theta`` or ``c~_t``) are
functions of ``c~_t`` and ``theta``, so one ``(H,)`` vector carries all dependence on the past.
With ``u_r, u_z`` the gate pre-activations, ``u_g = gi_g + r * gh_g`` and ``gh = W_hh y + b_hh``:

    delta_r = (1 - z)(1 - g^2) gh_g r (1 - r)     d c~ / d u_r
    delta_z = (c - g) z (1 - z)                    d c~ / d u_z
    delta_g = (1 - z)(1 - g^2)                     d c~ / d u_g   (input side)
    K[i, j] = sum_gates delta^h_gate[i] W_hh[gate, i, j]   d c~_t / d y_{t-1}  (hidden side:
              delta^h = (delta_r, delta_z, r * delta_g))

and with ``s = surrogate'(c~ - theta)`` the output/state derivatives of the *previous* step

    a = dy/dc~ = o + c~ s,  e = dc/dc~ = 1 - theta s (subtract_threshold) or 1,
    dy/dtheta = -c~ s,      dc/dtheta = theta s - o (subtract_threshold) or 0.

The state Jacobian is ``J_t = K_t diag(a_{t-1}) + diag(z_t e_{t-1} [- a_{t-1}])`` (the bracket
for ``reset_mode="subtract_output"``): column ``j`` of the off-diagonal part vanishes whenever
``a_{t-1, j} = 0``, i.e. unit ``j`` neither fired nor lay inside the surrogate's support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.models.egru import EGRUCell
from dualsparse.models.rnn import GRUCell
from dualsparse.models.surrogate import Surrogate

PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "threshold_raw")


@dataclass(frozen=True)
class CellSpec:
    """What RTRL needs to know about a cell (sizes, event options, which parameters).

    Attributes:
        kind: ``"egru"`` or ``"gru"``.
        input_size, hidden_size: ``I`` and ``H``.
        events: EGRU events on (False for the GRU).
        reset_mode: EGRU reset mode (``"none"`` for the GRU).
        surrogate: pseudo-derivative of the event function (None for the GRU).
        threshold_range: ``(low, high)`` of the EGRU thresholds.
        param_names: parameters whose gradients RTRL computes, in column order.
    """

    kind: str
    input_size: int
    hidden_size: int
    events: bool
    reset_mode: str
    surrogate: Surrogate | None
    threshold_range: tuple[float, float]
    param_names: tuple[str, ...]


def cell_spec(cell: nn.Module, train_thresholds: bool = True) -> CellSpec:
    """Inspect an :class:`EGRUCell` or :class:`GRUCell` (``zoneout``/``dropconnect`` must be 0)."""
    if not isinstance(cell, (EGRUCell, GRUCell)):
        raise ValueError(f"RTRL supports EGRUCell and GRUCell, got {type(cell).__name__}")
    if cell.zoneout or cell.dropconnect:
        raise ValueError("RTRL needs a deterministic cell: set zoneout=0 and dropconnect=0 "
                         f"(got zoneout={cell.zoneout}, dropconnect={cell.dropconnect})")
    names = [n for n in PARAM_NAMES[:4] if getattr(cell, n, None) is not None]
    if isinstance(cell, EGRUCell):
        learn_theta = (train_thresholds and cell.events
                       and isinstance(cell.threshold_raw, nn.Parameter))
        if learn_theta:
            names.append("threshold_raw")
        low, high = cell._opts.threshold_range
        return CellSpec("egru", cell.input_size, cell.hidden_size, cell.events,
                        cell.reset_mode if cell.events else "none", cell.surrogate,
                        (low, high), tuple(names))
    return CellSpec("gru", cell.input_size, cell.hidden_size, False, "none", None,
                    (0.0, 1.0), tuple(names))


class LocalStep(NamedTuple):
    """Forward values and local derivatives of one step; all ``(B, H)`` unless noted.

    ``deltas`` is ``(B, 6H)``: input-side ``(delta_r, delta_z, delta_g)`` then hidden-side
    ``(delta_r, delta_z, r * delta_g)``.
    ``a``, ``e``, ``dy_dtheta``, ``dc_dtheta`` describe the *new* state and are used as the
    "previous" derivatives at the next step.
    """

    y: torch.Tensor
    c: torch.Tensor
    s: torch.Tensor          # pre-reset state c~ (GRU: h)
    z: torch.Tensor
    o: torch.Tensor          # events (ones for the GRU / events=False)
    deltas: torch.Tensor
    a: torch.Tensor
    e: torch.Tensor
    dy_dtheta: torch.Tensor
    dc_dtheta: torch.Tensor


def effective_weights(cell: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The cell's parameters (detached) with pruned entries zeroed: ``W * mask``."""
    out = {}
    for name in PARAM_NAMES[:4]:
        p = getattr(cell, name, None)
        if p is None:
            out[name] = None
            continue
        p = p.detach()
        out[name] = p * masks[name] if name in masks else p
    return out


def threshold_and_slope(cell: nn.Module, spec: CellSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta`` ``(H,)`` and ``d theta / d threshold_raw`` ``(H,)``."""
    if spec.kind != "egru":
        w = cell.weight_hh
        return w.new_zeros(spec.hidden_size), w.new_zeros(spec.hidden_size)
    raw = cell.threshold_raw.detach()
    return cell._opts.thresholds.value(raw), cell._opts.thresholds.slope(raw)


def local_step(spec: CellSpec, w: dict[str, torch.Tensor], theta: torch.Tensor,
               x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> LocalStep:
    """Advance one step from ``(y, c)`` ``(B, H)`` on input ``x`` ``(B, I)``.

    Computes the same values as :func:`dualsparse.models.egru.egru_step` /
    :func:`dualsparse.models.rnn.gru_step` and the derivatives listed in the module docstring.
    """
    gi = F.linear(x, w["weight_ih"], w["bias_ih"])
    gh = F.linear(y, w["weight_hh"], w["bias_hh"])
    i_r, i_z, i_g = gi.chunk(3, -1)
    h_r, h_z, h_g = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    g = torch.tanh(i_g + r * h_g)
    if spec.kind == "gru":
        s = g + z * (c - g)
    else:
        s = z * c + (1.0 - z) * g
    d_g = (1.0 - z) * (1.0 - g * g)
    d_r = d_g * h_g * r * (1.0 - r)
    d_z = (c - g) * z * (1.0 - z)
    deltas = torch.cat([d_r, d_z, d_g, d_r, d_z, r * d_g], dim=-1)
    zeros = torch.zeros_like(s)
    ones = torch.ones_like(s)
    if not spec.events:
        return LocalStep(s, s, s, z, ones, deltas, ones, ones, zeros, zeros)
    if spec.reset_mode == "subtract_output":
        s = s - y
    u = s - theta
    o = (u > 0).to(s.dtype)
    sg = spec.surrogate.derivative(u)
    y_new = o * s
    a = o + s * sg
    dy_dtheta = -s * sg
    if spec.reset_mode == "subtract_threshold":
        c_new = s - o * theta
        e = 1.0 - theta * sg
        dc_dtheta = theta * sg - o
    else:
        c_new, e, dc_dtheta = s, ones, zeros
    return LocalStep(y_new, c_new, s, z, o, deltas, a, e, dy_dtheta, dc_dtheta)


def recurrent_jacobian(spec: CellSpec, w_hh: torch.Tensor, deltas: torch.Tensor,
                       cols: torch.Tensor | None = None) -> torch.Tensor:
    """``K = d c~_t / d y_{t-1}``: ``(B, H, H)``, or ``(B, H, len(cols))`` for chosen columns.

    Costs ``3 H * ncols`` multiplies per sample.
    """
    h = spec.hidden_size
    dh = deltas[:, 3 * h:].reshape(-1, 3, h)            # (B, 3, H) hidden-side deltas
    wg = w_hh.reshape(3, h, h)                          # (3, H, H)
    if cols is not None:
        wg = wg.index_select(2, cols)
    return torch.einsum("bgi,gij->bij", dh, wg)
