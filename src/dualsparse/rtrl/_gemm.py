"""Batched-GEMM step of :class:`~dualsparse.rtrl.sparse.SparseRTRL` (``backend="gemm"``).

The same recursion as the dense engine, restricted to what sparsity leaves, for the whole batch
in a fixed number of tensor operations (no per-sample Python loop, any device):

* only the ``P`` kept columns of ``M`` are stored, and only the live block ``M[:, :, :L]``
  is multiplied (``L``: the largest number of live columns in the batch; a column becomes
  live when its immediate term is first nonzero, see :mod:`dualsparse.rtrl.sparse`; on CPU
  the bookkeeping runs in a numba helper, elsewhere all kept columns count as live);
* only the Jacobian columns of active units (``a_{t-1, j} != 0``) enter the product. The
  active units are sorted first per sample; with ``A`` the largest active count in the batch,

      M_old[A] = gather(M[:, :, :L], active rows)              (B, A, L)      copy
      M[:, :, :L] *= diag(J_t)                                 B H L          MACs
      M[:, :, :L] += (K_t[:, active] * a_{t-1}[active]) @ M_old[A]   B H A L  MACs, one bmm

  Padding entries (samples with fewer active units) have ``a = 0``, so their coefficients are
  exactly 0; the counts include them, as they are multiplied.
* the gradient contraction uses only rows with ``dL/dy_t * a_t != 0`` (gathered the same way).

It does not track zero rows (they fill within a few steps) and forms ``K_t`` densely
(``3 H^2`` MACs per sample).
"""

from __future__ import annotations

import torch

from dualsparse.rtrl.cell import CellSpec, LocalStep, recurrent_jacobian


def active_first(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per row of ``mask`` ``(B, H)``, indices with True first (stable); ``(B, A)``, ``A``.

    ``A`` is the largest True count over the batch (at least 0).
    """
    count = int(mask.sum(1).max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return order[:, :count], count


def gemm_step(spec: CellSpec, m: torch.Tensor, n_live: int, w_hh: torch.Tensor, ls: LocalStep,
              a_prev: torch.Tensor, diag: torch.Tensor, vals: torch.Tensor,
              plain_unit: torch.Tensor, plain_col: torch.Tensor, theta_unit: torch.Tensor,
              theta_col: torch.Tensor, own: torch.Tensor | None, theta_scale: torch.Tensor | None,
              macs: dict[str, int]) -> int:
    """Advance ``m`` ``(B, H, P)`` by one step in place; returns the number of ``J`` entries used.

    ``n_live``: storage columns ``[0, n_live)`` may be nonzero (all others stay zero).
    ``vals`` ``(B, P_plain)``: immediate terms of the plain columns (unit ``plain_unit``
    ``(P_plain,)``, storage column ``plain_col`` ``(B, P_plain)``); ``own`` ``(B, n_theta)``
    and ``theta_scale`` ``(B, n_theta)`` the threshold columns' own-unit terms and
    ``dy_{t-1}/dtheta * slope`` (None without them), storage columns ``theta_col``
    ``(B, n_theta)``. MACs are added to ``macs`` by category.
    """
    bsz, h, _ = m.shape
    full = m
    m = m[:, :, :n_live]
    p = n_live
    b_idx = torch.arange(bsz, device=full.device)[:, None]
    idx, n_act = active_first(a_prev != 0)
    need_k = n_act > 0 or theta_unit.numel() > 0
    k = recurrent_jacobian(spec, w_hh, ls.deltas) if need_k else None       # (B, H, H)
    if need_k:
        macs["jacobian"] += 3 * bsz * h * h
    if n_act:
        m_old = m[b_idx, idx]                                               # (B, A, L) copy
        coef = (k.gather(2, idx[:, None, :].expand(bsz, h, n_act))
                * a_prev.gather(1, idx)[:, None, :])                        # (B, H, A)
        macs["jacobian"] += bsz * h * n_act
    m.mul_(diag[:, :, None])
    macs["update"] += bsz * h * p
    if n_act:
        m.baddbmm_(coef, m_old)
        macs["update"] += bsz * h * n_act * p
    # immediate terms: index_add_ on the flat storage (linear index b*H*P + unit*P + column)
    flat = full.view(-1)
    stride_b, stride_h = full.stride(0), full.stride(1)
    base = b_idx * stride_b
    flat.index_add_(0, (base + plain_unit[None, :] * stride_h + plain_col).reshape(-1),
                    vals.reshape(-1))
    macs["update"] += vals.numel()
    n_theta = int(theta_unit.numel())
    if n_theta:
        rows = torch.arange(h, device=full.device)[None, :, None] * stride_h
        lin = base[:, :, None] + rows + theta_col[:, None, :]                 # (B, H, n_theta)
        flat.index_add_(0, lin.reshape(-1),
                        (k[:, :, theta_unit] * theta_scale[:, None, :]).reshape(-1))
        flat.index_add_(0, (base + theta_unit[None, :] * stride_h + theta_col).reshape(-1),
                        own.reshape(-1))
        macs["immediate"] += bsz * h * n_theta
        macs["update"] += bsz * h * n_theta + bsz * n_theta
    return bsz * h * min(h, n_act + 1)


def gemm_gradient(m: torch.Tensor, n_live: int, perm: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, int]:
    """``sum_b v[b] @ M[b]`` over the rows with ``v != 0`` and the live block, in kept-column
    order (``perm[b, s]`` is the kept column of storage column ``s``): ``(P,)``, MACs done."""
    bsz, _, p = m.shape
    acc = m.new_zeros(p)
    idx, n = active_first(v != 0)
    if n == 0 or n_live == 0:
        return acc, 0
    b_idx = torch.arange(bsz, device=m.device)[:, None]
    rows = m[:, :, :n_live][b_idx, idx]                                         # (B, n, L)
    part = torch.bmm(v.gather(1, idx)[:, None, :], rows)[:, 0]                  # (B, L)
    acc.index_add_(0, perm[:, :n_live].reshape(-1), part.reshape(-1))
    return acc, bsz * n * n_live
