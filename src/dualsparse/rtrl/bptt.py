"""BPTT reference: autograd through :meth:`EGRUCell.step` / :meth:`GRUCell.forward`.

Used to check the RTRL engines: for a loss whose gradient with respect to the outputs is
``grad_outputs[t] = dL/dy_t`` ``(T, B, H)``, the linear surrogate loss
``sum_t <grad_outputs[t], y_t>`` has exactly the parameter gradient RTRL computes from the same
``grad_y`` sequence. Steps without a loss have zero rows.
"""

from __future__ import annotations

import torch
from torch import nn


def run_cell(cell: nn.Module, inputs: torch.Tensor, state: tuple | None = None
             ) -> torch.Tensor:
    """Outputs ``y_t`` ``(T, B, H)`` of ``cell`` over ``inputs`` ``(T, B, I)`` (autograd on)."""
    if inputs.dim() != 3:
        raise ValueError(f"inputs must be (T, B, I), got shape {tuple(inputs.shape)}")
    ys = []
    for x in inputs:
        y, state = cell(x, state)
        ys.append(y)
    return torch.stack(ys)


def bptt_gradients(cell: nn.Module, inputs: torch.Tensor, grad_outputs: torch.Tensor,
                   names: tuple[str, ...], state: tuple | None = None
                   ) -> dict[str, torch.Tensor]:
    """``d/dp sum_t <grad_outputs[t], y_t>`` for the parameters ``names`` of ``cell``.

    Args:
        inputs: ``(T, B, I)``; grad_outputs: ``(T, B, H)``; state: initial state (constant).
    Returns:
        ``{name: gradient}`` with the parameters' shapes (zeros where a parameter is unused).
    """
    if grad_outputs.shape[:2] != inputs.shape[:2]:
        raise ValueError(f"grad_outputs {tuple(grad_outputs.shape)} does not match inputs "
                         f"{tuple(inputs.shape)}")
    params = [getattr(cell, n) for n in names]
    ys = run_cell(cell, inputs, state)
    loss = (ys * grad_outputs).sum()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    out = {}
    for n, p, g in zip(names, params, grads, strict=True):
        out[n] = torch.zeros_like(p) if g is None else g
    return out


__all__ = ["bptt_gradients", "run_cell"]
