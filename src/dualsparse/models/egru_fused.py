"""Fused EGRU layer: the whole time loop as one autograd Function with a hand-written BPTT.

Computes exactly what stepping :func:`dualsparse.models.egru.egru_step` under autograd
computes (the reference), but records no per-op autograd graph: the forward pass keeps only
the per-step tensors the backward needs, and the backward pass runs the recursion by hand and
forms the recurrent weight gradient with one matmul over all steps. Tested against the
reference in float64 (`tests/models/test_egru_fused.py`).

Zoneout is applied as ``c_t = a_t * c_{t-1} + (1 - a_t) * c_new`` with ``a_t`` either a
Bernoulli keep-mask ``(T, B, H)`` (training) or the constant ``p`` (evaluation).

Sparse backward (the EGRU paper's backward sparsity): ``y_t = o_t * c~_t`` has
``dy_t/dc~_t = o_t + c~_t * s(c~_t - theta)``, which is zero for a silent unit whose
``c~ - theta`` lies outside the surrogate's support. The gradient ``dL/dy_t`` of such a unit is
never used, so the recurrent matmul ``dy_t = d_gh_{t+1} @ W_hh`` needs only the columns of
units that fired or lie inside the support (the union over the batch). Likewise the weight
gradient ``d_gh^T @ y_{t-1}`` needs only the columns of units that fired at least once.
:func:`needed_units` gives that mask; the backward computes only those columns in a step when
their fraction is at most ``sparse_density`` (a compact surrogate is required: the
``fast_sigmoid`` shape has unbounded support and always runs dense). This column skipping
runs on CPU tensors only: choosing the columns costs a device sync per step on a GPU, where
the Triton backend skips per tile (or, with ``backward_matmul="cublas"``, finds all steps'
needed units at once; :mod:`dualsparse.models.triton_egru`).

Backends of :func:`egru_sequence`: ``"torch"`` (this module), ``"triton"``
(:mod:`dualsparse.models.triton_egru`, CUDA) and ``"auto"`` (triton for CUDA tensors when
triton is installed, else torch).
"""

from __future__ import annotations

import torch

from dualsparse.models import triton_egru
from dualsparse.models.surrogate import Surrogate, needed_units
from dualsparse.models.tracing import is_tracing
from dualsparse.validation import check_choice, check_real

BACKENDS = ("torch", "triton", "auto")

SPARSE_DENSITY = 0.5
"""Default ``sparse_density``: a step's ``dy`` matmul skips columns when at most this fraction
of units is needed. The gathered matmul copies the needed rows of ``W_hh^T`` first, so it loses
to the dense one when most units are needed; where the crossover lies has not been measured on
an idle machine yet (``benchmarks/bench_sparse_backward.py`` measures it)."""


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ``ValueError`` naming it."""
    return check_choice("backend", backend, BACKENDS)


def uses_triton(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` runs the Triton kernels for tensors on ``device``."""
    if check_backend(backend) == "auto":
        return device.type == "cuda" and triton_egru.available()
    return backend == "triton"


def _columns(mask: torch.Tensor, sparse_density: float) -> torch.Tensor | None:
    """Indices of the True columns of ``mask`` ``(H,)`` when few enough, else None (dense).

    Always None while compiling/exporting: the choice depends on the data (a graph break)."""
    if is_tracing():
        return None
    h = mask.numel()
    idx = mask.nonzero().squeeze(1)
    return idx if idx.numel() <= sparse_density * h else None


class EGRUSequenceFn(torch.autograd.Function):
    """``(gi, y0, c0, w_hh, b_hh, theta, keep) -> (ys, events, c_tildes, c_last)``.

    Shapes: ``gi`` ``(T, B, 3H)`` input projections; ``y0``, ``c0`` ``(B, H)``; ``w_hh``
    ``(3H, H)``; ``b_hh`` ``(3H,)`` or None; ``theta`` ``(H,)``; ``keep`` ``(T, B, H)``
    zoneout keep-mask, a Python float (eval-mode zoneout probability) or None.
    """

    @staticmethod
    def forward(ctx, gi, y0, c0, w_hh, b_hh, theta, keep, surrogate: Surrogate,
                reset_mode: str, sparse_density: float = SPARSE_DENSITY
                ):  # type: ignore[override]
        steps, batch, three_h = gi.shape
        h = three_h // 3
        ys = gi.new_empty(steps, batch, h)
        events = torch.empty_like(ys)
        c_tildes = torch.empty_like(ys)
        cs = gi.new_empty(steps + 1, batch, h)  # c_0 .. c_T (post-reset, post-zoneout)
        rs, zs, gs = torch.empty_like(ys), torch.empty_like(ys), torch.empty_like(ys)
        ghg = torch.empty_like(ys)
        cs[0] = c0
        y_prev = y0
        bias = b_hh if b_hh is not None else gi.new_zeros(three_h)
        for t in range(steps):
            gh = torch.addmm(bias, y_prev, w_hh.t())
            gi_t = gi[t]
            r = torch.sigmoid(gi_t[:, :h] + gh[:, :h])
            z = torch.sigmoid(gi_t[:, h:2 * h] + gh[:, h:2 * h])
            g = torch.tanh(torch.addcmul(gi_t[:, 2 * h:], r, gh[:, 2 * h:]))
            c_prev = cs[t]
            c_tilde = g + z * (c_prev - g)
            if reset_mode == "subtract_output":
                c_tilde = c_tilde - y_prev
            o = (c_tilde > theta).to(gi.dtype)
            y = o * c_tilde
            c_new = c_tilde - o * theta if reset_mode == "subtract_threshold" else c_tilde
            if keep is None:
                cs[t + 1] = c_new
            elif isinstance(keep, float):
                cs[t + 1] = keep * c_prev + (1.0 - keep) * c_new
            else:
                cs[t + 1] = c_new + keep[t] * (c_prev - c_new)
            ys[t], events[t], c_tildes[t] = y, o, c_tilde
            rs[t], zs[t], gs[t], ghg[t] = r, z, g, gh[:, 2 * h:]
            y_prev = y
        keep_t = keep if isinstance(keep, torch.Tensor) else None
        ctx.save_for_backward(y0, w_hh, theta, ys, events, c_tildes, cs, rs, zs, gs, ghg,
                              keep_t)
        ctx.keep_const = keep if isinstance(keep, float) else None
        ctx.has_bias = b_hh is not None
        ctx.surrogate, ctx.reset_mode = surrogate, reset_mode
        ctx.sparse_density = sparse_density if surrogate.shape != "fast_sigmoid" else 0.0
        c_last = cs[steps].clone()
        return ys, events, c_tildes, c_last

    @staticmethod
    def backward(ctx, d_ys, d_events, d_ctildes, d_clast):  # type: ignore[override]
        (y0, w_hh, theta, ys, events, c_tildes, cs, rs, zs, gs, ghg, keep) = ctx.saved_tensors
        steps, batch, h = ys.shape
        surrogate, reset_mode = ctx.surrogate, ctx.reset_mode
        d_gates = ys.new_empty(steps, batch, 3 * h)  # d(pre-activations): also d_gh for r, z
        d_ghg = torch.empty_like(ys)  # d(W_hg y + b_hg)
        d_theta = torch.zeros_like(theta)
        dy = torch.zeros_like(y0)
        dc = d_clast.clone() if d_clast is not None else torch.zeros_like(y0)
        s_all = surrogate.derivative(c_tildes - theta)  # (T, B, H) pseudo-derivatives
        sparse = ctx.sparse_density > 0.0 and w_hh.device.type == "cpu"
        if sparse:  # per step, the units whose dy is needed (union over the batch)
            need = needed_units(events, c_tildes, theta, surrogate).any(1)  # (T, H)
            w_t = w_hh.t().contiguous()  # (H, 3H): a unit's column of W_hh as one row
        for t in range(steps - 1, -1, -1):
            dy_t = dy if d_ys is None else dy + d_ys[t]
            c_prev = cs[t]
            # zoneout: c_t = a c_prev + (1 - a) c_new
            if keep is not None:
                a = keep[t]
                d_cnew = (1.0 - a) * dc
                dc_prev = a * dc
            elif ctx.keep_const is not None:
                d_cnew = (1.0 - ctx.keep_const) * dc
                dc_prev = ctx.keep_const * dc
            else:
                d_cnew, dc_prev = dc, torch.zeros_like(dc)
            o, c_tilde = events[t], c_tildes[t]
            d_ct = d_cnew + o * dy_t
            d_o = c_tilde * dy_t
            if d_events is not None:
                d_o = d_o + d_events[t]
            if reset_mode == "subtract_threshold":
                d_o = d_o - theta * d_cnew
                d_theta -= (o * d_cnew).sum(0)
            if d_ctildes is not None:
                d_ct = d_ct + d_ctildes[t]
            d_x = d_o * s_all[t]
            d_ct = d_ct + d_x
            d_theta -= d_x.sum(0)
            r, z, g = rs[t], zs[t], gs[t]
            dz = d_ct * (c_prev - g)
            dc_prev = dc_prev + d_ct * z
            dg = d_ct * (1.0 - z)
            dn = dg * (1.0 - g * g)
            dr = dn * ghg[t]
            d_gates[t, :, :h] = dr * r * (1.0 - r)
            d_gates[t, :, h:2 * h] = dz * z * (1.0 - z)
            d_gates[t, :, 2 * h:] = dn
            d_ghg[t] = dn * r
            d_gh = torch.cat([d_gates[t, :, :2 * h], d_ghg[t]], dim=1)
            cols = _columns(need[t - 1], ctx.sparse_density) if sparse and t > 0 else None
            if cols is None:
                dy = d_gh @ w_hh
            else:  # dy of units outside the support is never used by step t - 1
                dy = torch.zeros_like(dy_t)
                dy[:, cols] = d_gh @ w_t.index_select(0, cols).t()
            if reset_mode == "subtract_output":
                dy = dy - d_ct
            dc = dc_prev
        d_gh_all = torch.cat([d_gates[:, :, :2 * h], d_ghg], dim=2).reshape(steps * batch, 3 * h)
        y_prev_all = torch.cat([y0.unsqueeze(0), ys[:-1]], 0).reshape(steps * batch, h)
        cols = _columns(y_prev_all.ne(0).any(0), ctx.sparse_density) if sparse else None
        if cols is None:
            d_w = d_gh_all.t() @ y_prev_all
        else:  # columns of units that never fired get no weight gradient
            d_w = d_gh_all.new_zeros(3 * h, h)
            d_w[:, cols] = d_gh_all.t() @ y_prev_all.index_select(1, cols)
        d_b = d_gh_all.sum(0) if ctx.has_bias else None
        return d_gates, dy, dc, d_w, d_b, d_theta, None, None, None, None


def egru_sequence(gi: torch.Tensor, y0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor,
                  b_hh: torch.Tensor | None, theta: torch.Tensor,
                  keep: torch.Tensor | float | None, surrogate: Surrogate, reset_mode: str,
                  sparse_density: float = SPARSE_DENSITY, backend: str = "torch"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run one EGRU layer over ``T`` steps; see :class:`EGRUSequenceFn` for shapes.

    ``sparse_density`` in ``[0, 1]``: skip the columns of units not needed by the backward
    pass in steps where at most this fraction of units is needed; 0 runs the dense BPTT.
    Values and gradients are the same either way (CPU only, see the module docstring).
    ``backend``: one of :data:`BACKENDS`; the Triton path skips per tile and uses
    ``sparse_density`` for its weight gradient's column gather (0: dense; see
    :mod:`dualsparse.models.triton_egru`). Under autocast (AMP) the inputs are cast to
    the dtype of ``w_hh`` and the recurrence runs in it, autocast off. Returns
    ``(ys, events, c_tildes, c_last)``; the final output is ``ys[-1]``.
    """
    sparse_density = check_real("sparse_density", sparse_density, low=0.0, high=1.0)
    if uses_triton(backend, gi.device):
        return triton_egru.triton_egru_sequence(gi, y0, c0, w_hh, b_hh, theta, keep, surrogate,
                                                reset_mode, sparse_backward=sparse_density > 0,
                                                sparse_density=sparse_density)
    device = gi.device.type
    if torch.is_autocast_enabled(device):  # AMP: the recurrence runs in the weights' dtype
        dt = w_hh.dtype
        with torch.autocast(device, enabled=False):
            return EGRUSequenceFn.apply(
                gi.to(dt), y0.to(dt), c0.to(dt), w_hh, b_hh, theta.to(dt),
                keep.to(dt) if isinstance(keep, torch.Tensor) else keep, surrogate,
                reset_mode, sparse_density)
    return EGRUSequenceFn.apply(gi, y0, c0, w_hh, b_hh, theta, keep, surrogate, reset_mode,
                                sparse_density)
