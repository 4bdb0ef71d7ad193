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
      M[:, :, :L] *= diag(J_t)                                 (lazy, below)
      M[:, :, :L] += (K_t[:, active] * a_{t-1}[active]) @ M_old[A]   B H A L  MACs, one bmm

  The diagonal part costs no pass over ``M``: the engine stores ``M = diag(r) N`` with a
  per-row scale ``r`` ``(B, H)``; a step multiplies ``r`` by ``diag(J_t)`` and adds the
  off-diagonal and immediate terms to ``N`` divided by the new ``r`` (the GEMM's coefficients
  and the ``P`` immediate values absorb the factors). A row whose scale leaves
  ``[SCALE_MIN, SCALE_MAX]`` or becomes 0 is multiplied out (one row pass) and its scale
  reset to 1, so nothing overflows; the result equals the explicit recursion to rounding.

  Padding entries (samples with fewer active units) have ``a = 0``, so their coefficients are
  exactly 0; the counts include them, as they are multiplied.
* the gradient contraction uses only rows with ``dL/dy_t * a_t != 0`` (gathered the same way).

It does not track zero rows (they fill within a few steps) and forms ``K_t`` densely
(``3 H^2`` MACs per sample).
"""

from __future__ import annotations

import numpy as np
import torch

from dualsparse.rtrl import _kernels
from dualsparse.rtrl.cell import CellSpec, LocalStep, recurrent_jacobian

#: a row's lazy scale outside ``[SCALE_MIN, SCALE_MAX]`` (or 0) is multiplied into the row
SCALE_MIN, SCALE_MAX = 1e-100, 1e100


def active_first(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per row of ``mask`` ``(B, H)``, indices with True first (stable); ``(B, A)``, ``A``.

    ``A`` is the largest True count over the batch (at least 0).
    """
    count = int(mask.sum(1).max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return order[:, :count], count


def gemm_step(spec: CellSpec, m: torch.Tensor, row_scale: torch.Tensor, perm: torch.Tensor,
              where: torch.Tensor, live: np.ndarray, w_hh: torch.Tensor, ls: LocalStep,
              a_prev: torch.Tensor, diag: torch.Tensor, src: torch.Tensor,
              plain_q: torch.Tensor, plain_src: torch.Tensor, plain_pos: torch.Tensor,
              plain_unit: torch.Tensor, theta_unit: torch.Tensor, theta_pos: torch.Tensor,
              own: torch.Tensor, theta_scale: torch.Tensor, macs: dict[str, int],
              use_numba: bool = True) -> int:
    """Advance ``M = diag(row_scale) m`` by one step, ``m`` ``(B, H, P)`` and ``row_scale``
    ``(B, H)`` in place; returns the number of ``J`` entries used.

    ``perm``/``where`` ``(B, P)`` map storage to kept columns and back, ``live`` ``(B,)``
    counts each sample's live columns (storage ``[0, live[b])``; the others are zero); all
    three are updated when columns become live. ``src`` ``(B, I + H + 1)`` is
    ``concat(x, y_{t-1}, 1)``; a plain (kept) column's immediate term is
    ``deltas[plain_q] * src[plain_src]`` on row ``plain_unit``, kept column ``plain_pos``.
    ``own``, ``theta_scale`` ``(B, n_theta)``: the threshold columns' own-unit terms and
    ``dy_{t-1}/dtheta * slope`` (``n_theta`` may be 0). MACs are added to ``macs``.
    ``use_numba``: immediate terms and live columns by the numba helper (CPU tensors only);
    otherwise by ``index_add_``, which needs every kept column live (``where`` the identity).
    """
    bsz, h, _ = m.shape
    full = m
    p = int(live.max())
    m = m[:, :, :p]
    b_idx = torch.arange(bsz, device=full.device)[:, None]
    idx, n_act = active_first(a_prev != 0)
    need_k = n_act > 0 or bool((theta_scale != 0).any())
    k = recurrent_jacobian(spec, w_hh, ls.deltas) if need_k else None       # (B, H, H)
    if need_k:
        macs["jacobian"] += 3 * bsz * h * h
    s_old = row_scale.clone()
    s_new = row_scale.mul_(diag)                                            # lazy diag(J_t)
    if n_act:
        m_old = m[b_idx, idx]                                               # (B, A, L) copy
        coef = (k.gather(2, idx[:, None, :].expand(bsz, h, n_act))
                * (a_prev * s_old).gather(1, idx)[:, None, :])              # (B, H, A)
        macs["jacobian"] += 2 * bsz * h * n_act
    # rows whose scale left [SCALE_MIN, SCALE_MAX] (or hit 0) are stored explicitly again
    mag = s_new.abs()
    bad = (mag < SCALE_MIN) | (mag > SCALE_MAX)
    if bool(bad.any()):
        bb, ii = bad.nonzero(as_tuple=True)
        m[bb, ii] *= s_new[bb, ii, None]
        s_new[bb, ii] = 1.0
        macs["update"] += int(bb.numel()) * p
    inv = 1.0 / s_new                                                       # (B, H)
    if n_act:
        m.baddbmm_(coef * inv[:, :, None], m_old)
        macs["jacobian"] += bsz * h * n_act
        macs["update"] += bsz * h * n_act * p
    # immediate terms (and new live columns)
    if use_numba:
        macs["immediate"] += int(_kernels.gemm_immediate(
            full.numpy(), inv.contiguous().numpy(), perm.numpy(), where.numpy(), live,
            ls.deltas.contiguous().numpy(), src.contiguous().numpy(), plain_q.numpy(),
            plain_src.numpy(), plain_pos.numpy(), plain_unit.numpy(), theta_unit.numpy(),
            theta_pos.numpy(), own.contiguous().numpy(), theta_scale.contiguous().numpy(),
            (k if k is not None else full.new_zeros(bsz, h, h)).contiguous().numpy()))
    else:
        _immediate_torch(full, inv, where, ls.deltas, src, plain_q, plain_src, plain_pos,
                         plain_unit, theta_unit, theta_pos, own, theta_scale, k, macs)
    return bsz * h * min(h, n_act + 1)


def _immediate_torch(m: torch.Tensor, inv: torch.Tensor, where: torch.Tensor,
                     deltas: torch.Tensor, src: torch.Tensor, plain_q: torch.Tensor,
                     plain_src: torch.Tensor, plain_pos: torch.Tensor, plain_unit: torch.Tensor,
                     theta_unit: torch.Tensor, theta_pos: torch.Tensor, own: torch.Tensor,
                     theta_scale: torch.Tensor, k: torch.Tensor | None,
                     macs: dict[str, int]) -> None:
    """Off-CPU immediate terms (all kept columns are live, ``where`` is the identity)."""
    bsz, h, _ = m.shape
    flat = m.view(-1)
    stride_b, stride_h = m.stride(0), m.stride(1)
    base = torch.arange(bsz, device=m.device)[:, None] * stride_b
    vals = deltas[:, plain_q] * src[:, plain_src] * inv[:, plain_unit]
    cols = where[:, plain_pos]
    flat.index_add_(0, (base + plain_unit[None, :] * stride_h + cols).reshape(-1),
                    vals.reshape(-1))
    macs["immediate"] += 2 * vals.numel()
    n_theta = int(theta_unit.numel())
    if n_theta:
        tcol = where[:, theta_pos]
        rows = torch.arange(h, device=m.device)[None, :, None] * stride_h
        lin = base[:, :, None] + rows + tcol[:, None, :]                     # (B, H, n_theta)
        kk = k if k is not None else m.new_zeros(bsz, h, h)
        terms = kk[:, :, theta_unit] * theta_scale[:, None, :] * inv[:, :, None]
        flat.index_add_(0, lin.reshape(-1), terms.reshape(-1))
        flat.index_add_(0, (base + theta_unit[None, :] * stride_h + tcol).reshape(-1),
                        (own * inv[:, theta_unit]).reshape(-1))
        macs["immediate"] += 3 * bsz * h * n_theta + 2 * bsz * n_theta


def gemm_gradient(m: torch.Tensor, n_live: int, perm: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``v[b] @ m[b]`` over the rows with ``v != 0`` and the live block ``[0, n_live)``.

    Returns kept-column ids ``perm[:, :n_live]`` and the values, both flat ``(B n_live,)``
    (to be summed into the gradient), and the MACs done. (With row scales, pass
    ``v * row_scale``.)
    """
    bsz = m.size(0)
    idx, n = active_first(v != 0)
    if n == 0 or n_live == 0:
        empty = perm[:, :0].reshape(-1)
        return empty, m.new_zeros(0), 0
    b_idx = torch.arange(bsz, device=m.device)[:, None]
    rows = m[:, :, :n_live][b_idx, idx]                                         # (B, n, L)
    part = torch.bmm(v.gather(1, idx)[:, None, :], rows)[:, 0]                  # (B, L)
    return perm[:, :n_live].reshape(-1), part.reshape(-1), bsz * n * n_live
