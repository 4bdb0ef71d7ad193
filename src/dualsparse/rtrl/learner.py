"""Online learning with RTRL: a cell, a linear readout on ``y_t`` and an optimiser.

At every step the readout's loss gradient ``dL/dy_t`` is pushed through the engine's influence
matrix, so the gradient of the cell's parameters is known immediately, without storing the
history. ``update="step"`` applies it after every step that has a loss (true online learning:
later steps then see new parameters); ``update="sequence"`` accumulates until :meth:`apply` is
called, which for a loss summed over one sequence gives exactly the BPTT gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.rtrl.base import RTRLBase
from dualsparse.validation import check_choice, check_real

UPDATES = ("step", "sequence")


class OnlineLearner:
    """Train an RTRL engine's cell and a readout online.

    Args:
        engine: a :class:`DenseRTRL` or :class:`SparseRTRL` around the cell.
        readout: maps ``y_t`` ``(B, H)`` to predictions (e.g. ``nn.Linear(H, C)``).
        optimizer: over the cell's and the readout's parameters.
        loss_fn: ``loss_fn(prediction, target) -> scalar`` (default cross-entropy, batch mean).
        update: ``"step"`` (apply after each loss) or ``"sequence"`` (call :meth:`apply`).
        clip_norm: clip the global gradient norm before each update (None = no clipping).
    """

    def __init__(self, engine: RTRLBase, readout: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 update: str = "sequence", clip_norm: float | None = None) -> None:
        check_choice("update", update, UPDATES)
        if clip_norm is not None:
            clip_norm = check_real("clip_norm", clip_norm, low=0.0, low_open=True)
        self.engine, self.readout, self.optimizer = engine, readout, optimizer
        self.loss_fn, self.update, self.clip_norm = loss_fn, update, clip_norm
        self.pending = 0  # losses accumulated since the last update

    def start(self, batch_size: int, state: tuple | None = None) -> None:
        """Begin a sequence (state and influence reset); pending gradients are dropped."""
        self.engine.reset(batch_size, state)
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0

    def observe(self, x: torch.Tensor, target: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, float | None]:
        """One step on ``x`` ``(B, I)``; with a ``target``, compute the loss and its gradient.

        Returns ``(prediction (detached), loss value or None)``.
        """
        y = self.engine.step(x).detach().requires_grad_(True)
        pred = self.readout(y)
        if target is None:
            return pred.detach(), None
        loss = self.loss_fn(pred, target)
        if not bool(torch.isfinite(loss.detach())):
            raise ValueError(f"loss is {float(loss.detach())}")
        loss.backward()                       # readout grads accumulate; y.grad = dL/dy_t
        self.engine.accumulate(y.grad)
        self.pending += 1
        if self.update == "step":
            self.apply()
        return pred.detach(), float(loss.detach())

    def apply(self) -> None:
        """Write the accumulated gradients, take an optimiser step, zero everything."""
        if self.pending == 0:
            return
        self.engine.write_grads()
        if self.clip_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.engine.zero_grad()
        self.engine.apply_masks()
        self.pending = 0
