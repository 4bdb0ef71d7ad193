"""State, inputs and gradient bookkeeping shared by the dense and sparse RTRL engines.

An engine runs a cell forward one step at a time and keeps the influence matrix
``M_t = d c~_t / d p`` per batch sample. ``accumulate(grad_y)`` adds ``dL/dp`` of a loss on the
current output ``y_t`` (``grad_y = dL/dy_t``, ``(B, H)``) to the gradient buffer; ``gradients()``
returns it per parameter, summed over the batch (as ``loss.backward()`` on a summed loss).
The initial state is a constant (``M_0 = 0``); :meth:`reset_influence` truncates the history
while keeping the state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from dualsparse.models.egru import EGRUState
from dualsparse.models.rnn import GRUState
from dualsparse.models.tracing import all_finite
from dualsparse.rtrl.cell import (
    CellSpec,
    LocalStep,
    cell_spec,
    effective_weights,
    local_step,
    threshold_and_slope,
)
from dualsparse.rtrl.counters import RTRLCounter
from dualsparse.rtrl.layout import THRESHOLD, ParamLayout, build_layout
from dualsparse.rtrl.memory import check_fits, default_max_bytes
from dualsparse.validation import check_int


class RTRLBase(ABC):
    """Common part of :class:`DenseRTRL` and :class:`SparseRTRL`.

    Args:
        cell: an :class:`~dualsparse.models.EGRUCell` or :class:`~dualsparse.models.GRUCell`;
            its current parameters are read at every step (so optimiser updates take effect).
        masks: ``{param_name: bool tensor}`` pruning masks, True = kept. The forward pass uses
            ``W * mask`` and pruned entries get no influence column and zero gradient.
        train_thresholds: compute gradients of the EGRU ``threshold_raw`` too.
        measure_density: count the nonzeros of ``M`` every step (costs ``H * p`` compares).
        max_bytes: most bytes :meth:`reset` may allocate for the influence storage (estimated
            first, see :meth:`influence_bytes`); default (None) half the device's total memory
            (:func:`~dualsparse.rtrl.memory.default_max_bytes`). Larger requests raise
            ``ValueError`` with the number and what to change.

    Parameters and inputs must be finite: NaN or inf in any trained parameter (checked at every
    step, as the optimiser may change them), in an input or in ``grad_y`` raises ``ValueError``.
    """

    def __init__(self, cell: nn.Module, masks: dict[str, torch.Tensor] | None = None,
                 train_thresholds: bool = True, measure_density: bool = False,
                 max_bytes: int | None = None) -> None:
        self.cell = cell
        self.spec: CellSpec = cell_spec(cell, train_thresholds)
        self.layout: ParamLayout = build_layout(self.spec, masks)
        dev = cell.weight_hh.device
        self.max_bytes = (default_max_bytes(dev) if max_bytes is None
                          else check_int("max_bytes", max_bytes, low=1))
        self.masks = {k: v.to(dev) for k, v in (masks or {}).items()}
        self.measure_density = measure_density
        self.counter = RTRLCounter()
        lay = self.layout
        self.is_theta = lay.slot == THRESHOLD
        self.num_theta = int(self.is_theta.sum())
        self.batch_size = 0

    # --- state -----------------------------------------------------------------------------
    def reset(self, batch_size: int, state: tuple | None = None) -> None:
        """Start a sequence: state zeros (or ``state``), ``M = 0``, gradient buffer zero."""
        batch_size = check_int("batch_size", batch_size, low=1)
        check_fits(type(self).__name__, batch_size, self.influence_bytes(1) - self._fixed_bytes(),
                   self._fixed_bytes(), self.max_bytes, self._bytes_detail())
        self._check_params()
        w = self.cell.weight_hh
        h = self.spec.hidden_size
        self.batch_size = batch_size
        zeros = w.new_zeros(batch_size, h)
        if state is None:
            self.y, self.c = zeros, zeros.clone()
        else:
            self.y, self.c = self._check_state(state)
        self._zero_prev()
        self._init_influence()
        self.zero_grad()
        self.counter.clear()
        self.last: LocalStep | None = None

    def reset_influence(self) -> None:
        """Truncate: keep the state, forget its dependence on the parameters (``M = 0``)."""
        self._require_started()
        self._zero_prev()
        self._init_influence()

    def _zero_prev(self) -> None:
        z = self.y.new_zeros(self.batch_size, self.spec.hidden_size)
        self.a_prev, self.e_prev = z, z.clone()
        self.dyth_prev, self.dcth_prev = z.clone(), z.clone()

    def _check_state(self, state: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.batch_size, self.spec.hidden_size)
        tensors = tuple(state)
        if self.spec.kind == "gru":
            if len(tensors) != 1:
                raise ValueError("GRU state must be GRUState(h)")
            tensors = (tensors[0], tensors[0])
        elif len(tensors) != 2:
            raise ValueError("EGRU state must be EGRUState(y, c)")
        for t in tensors:
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise ValueError(f"state tensors must have shape {shape}")
            if not all_finite(t):
                raise ValueError("state contains NaN or inf")
        w = self.cell.weight_hh
        return tuple(t.detach().to(w) for t in tensors)

    @property
    def state(self) -> EGRUState | GRUState:
        """Current state as the cell's state type."""
        return GRUState(self.y) if self.spec.kind == "gru" else EGRUState(self.y, self.c)

    def _require_started(self) -> None:
        if self.batch_size == 0:
            raise ValueError("call reset(batch_size) before step()")

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        self._require_started()
        shape = (self.batch_size, self.spec.input_size)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input must have shape {shape}, got {got}")
        w = self.cell.weight_hh
        if x.dtype != w.dtype:
            raise ValueError(f"input is {x.dtype}, parameters are {w.dtype}")
        if not all_finite(x):
            raise ValueError("input contains NaN or inf")
        return x.to(w.device)

    def _check_params(self) -> None:
        for name in self.spec.param_names:
            p = getattr(self.cell, name)
            if not all_finite(p.detach()):
                raise ValueError(f"cell parameter {name} contains NaN or inf; RTRL needs finite "
                                 "parameters (lower the learning rate or clip gradients)")

    def _forward(self, x: torch.Tensor):
        """Local step from the stored state; returns (weights, theta, slope, LocalStep).

        Every parameter enters the gate deltas, ``a`` or the threshold slope (``0 * NaN`` is
        NaN), so one finiteness test of their sum covers all parameters; only when it fails
        are the parameters checked one by one, to name the culprit.
        """
        w = effective_weights(self.cell, self.masks)
        theta, slope = threshold_and_slope(self.cell, self.spec)
        ls = local_step(self.spec, w, theta, x, self.y, self.c)
        total = ls.deltas.sum() + ls.a.sum() + ls.s.sum() + slope.sum()
        if not math.isfinite(float(total)):
            self._check_params()
            raise ValueError("the step produced NaN or inf from finite parameters, input and "
                             "state (overflow); scale down the inputs or weights")
        return w, theta, slope, ls

    def _advance(self, ls: LocalStep) -> None:
        self.y, self.c = ls.y, ls.c
        self.a_prev, self.e_prev = ls.a, ls.e
        self.dyth_prev, self.dcth_prev = ls.dy_dtheta, ls.dc_dtheta
        self.last = ls

    def _src(self, x: torch.Tensor) -> torch.Tensor:
        """``concat(x, y_{t-1}, 1)``, ``(B, I + H + 1)``."""
        return torch.cat([x, self.y, x.new_ones(x.size(0), 1)], dim=1)

    def _check_grad_y(self, grad_y: torch.Tensor) -> torch.Tensor:
        if self.last is None:
            raise ValueError("accumulate() needs a step() first")
        shape = (self.batch_size, self.spec.hidden_size)
        if not isinstance(grad_y, torch.Tensor) or tuple(grad_y.shape) != shape:
            got = tuple(grad_y.shape) if isinstance(grad_y, torch.Tensor) else type(grad_y)
            raise ValueError(f"grad_y must have shape {shape}, got {got}")
        if not all_finite(grad_y):
            raise ValueError("grad_y contains NaN or inf")
        return grad_y.detach().to(self.y)

    # --- gradients -------------------------------------------------------------------------
    def zero_grad(self) -> None:
        w = self.cell.weight_hh
        self.grad_flat = w.new_zeros(self.layout.num_columns)

    def gradients(self) -> dict[str, torch.Tensor]:
        """Accumulated ``dL/dp`` per parameter name, parameter shapes (0 at pruned entries)."""
        return self.layout.split(self.grad_flat)

    def write_grads(self, accumulate: bool = False) -> None:
        """Store :meth:`gradients` in the cell parameters' ``.grad`` (add if ``accumulate``)."""
        for name, g in self.gradients().items():
            p = getattr(self.cell, name)
            if p.grad is None or not accumulate:
                p.grad = g.clone()
            else:
                p.grad.add_(g)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned entries of the cell's parameters in place."""
        for name, m in self.masks.items():
            getattr(self.cell, name).mul_(m)

    # --- engine-specific -------------------------------------------------------------------
    @abstractmethod
    def influence_bytes(self, batch_size: int) -> int:
        """Bytes :meth:`reset` allocates for ``M`` and its work buffers at ``batch_size``."""

    def _fixed_bytes(self) -> int:
        """Part of :meth:`influence_bytes` that does not grow with the batch."""
        return 0

    @abstractmethod
    def _bytes_detail(self) -> str:
        """What :meth:`influence_bytes` counts, for error messages."""

    @abstractmethod
    def _init_influence(self) -> None:
        """Allocate ``M = 0`` for the current batch size."""

    @abstractmethod
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance one step on ``x`` ``(B, I)``; update ``M``; return ``y_t`` ``(B, H)``."""

    @abstractmethod
    def accumulate(self, grad_y: torch.Tensor) -> None:
        """Add ``dL/dp`` for ``grad_y = dL/dy_t`` ``(B, H)`` to the gradient buffer."""

    @abstractmethod
    def influence(self) -> torch.Tensor:
        """The full ``(B, H, p)`` influence matrix (pruned columns as zeros)."""

    @property
    @abstractmethod
    def m_bytes(self) -> int:
        """Bytes allocated for the influence matrix."""
