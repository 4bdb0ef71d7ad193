"""Sparse exact RTRL: the same recursion as :class:`DenseRTRL`, skipping structural zeros.

Three kinds of zeros are skipped, per sample and step:

* **pruned parameters**: only the ``P`` kept columns of ``M`` are stored;
* **zero columns of M** ("live" columns): the column of ``W_hh[g, i, j]`` stays zero until the
  presynaptic unit ``j`` emits its first event (its immediate term is ``delta * y_j``); a column
  becomes live when its immediate term is first nonzero. Live columns are kept first in storage
  (a per-sample permutation; swapping two all-zero columns moves no data), so all products
  run on the contiguous block ``M[:, :L]``;
* **inactive units**: column ``j`` of the off-diagonal Jacobian is skipped when
  ``a_{t-1, j} = dy/dc~ = 0`` (no event, outside the surrogate's support) or row ``j`` of ``M``
  is zero (rows are tracked structurally).

With ``A`` the used active units, ``R`` the nonzero rows and ``L`` the live columns::

    M[R, :L] *= diag(J_t)[R]                                  |R| L   MACs
    M[:, :L] += (K_t[:, A] * a_{t-1}[A]) @ M_old[A, :L]       H |A| L MACs
    M[i, col] += delta[slot, i] * src[k]                      one MAC per nonzero entry

``K_t[:, A]`` is formed for the needed columns only (``3 H |A|`` MACs). Rows of ``M`` are
tracked structurally (a row becomes nonzero when something is added to it), so the first step
and units whose parameters are all pruned cost nothing. The gradient contraction uses only the
rows with ``dL/dy_t * a_t != 0``. Counts go to :attr:`counter` as the code runs.

Backends (all exact, tested against each other and BPTT):

* ``"gemm"`` (any device; ``"auto"`` picks it from ``H = 96`` on): the whole batch in one
  batched GEMM per step over the active rows and the kept columns
  (:mod:`dualsparse.rtrl._gemm`); no live-column or row bookkeeping, so it skips only pruned
  columns and inactive units, at BLAS speed.
* ``"numba"`` (CPU; ``"auto"`` picks it below ``H = 96`` or for a sparse ``K``): one numba
  kernel updates the whole batch (:mod:`dualsparse.rtrl._kernels`) with everything above, and
  ``K_t`` is formed and multiplied only on its structural nonzeros: entry ``(i, j)`` exists
  when some gate keeps ``W_hh[g, i, j]``, so the off-diagonal product costs ``nnz(K[:, A]) L``
  instead of ``H |A| L`` MACs, in plain loops.
* ``"torch"`` (any device): the batch one sample at a time with the dense ``K_t[:, A]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dualsparse.rtrl import _gemm, _kernels
from dualsparse.rtrl.base import RTRLBase
from dualsparse.rtrl.cell import recurrent_jacobian, threshold_and_slope
from dualsparse.rtrl.counters import (
    StepRecord,
    dense_gradient_macs,
    dense_step_macs,
    zero_macs,
)
from dualsparse.rtrl.memory import format_bytes
from dualsparse.validation import check_choice

BACKENDS = ("auto", "gemm", "numba", "torch")


#: ``backend="auto"`` uses the batched GEMM from this many hidden units on (below it the
#: numba kernel's lower per-step overhead wins) ...
AUTO_GEMM_MIN_HIDDEN = 96
#: ... unless fewer than this fraction of ``K``'s entries are kept (numba skips the others)
AUTO_NUMBA_MAX_K_DENSITY = 0.4


class SparseRTRL(RTRLBase):
    """Exact RTRL exploiting activity and parameter sparsity.

    Args: see :class:`~dualsparse.rtrl.base.RTRLBase`. ``M`` is allocated as ``(B, H, P)`` for
    the ``P`` kept columns only; per sample the first ``live[b]`` storage columns are in use.
    ``backend``: ``"gemm"`` (any device; one batched GEMM over the active rows and kept
    columns per step, :mod:`dualsparse.rtrl._gemm`), ``"numba"`` (CPU only; batched kernel
    with plain loops, also skips never-touched columns, zero rows and pruned entries of
    ``K_t``), ``"torch"`` (any device; per-sample loop with the live-column bookkeeping) or
    ``"auto"``: numba on CPU when ``H < AUTO_GEMM_MIN_HIDDEN`` or fewer than
    ``AUTO_NUMBA_MAX_K_DENSITY`` of ``K``'s entries are kept, gemm otherwise.
    """

    def __init__(self, cell: nn.Module, masks: dict[str, torch.Tensor] | None = None,
                 train_thresholds: bool = True, measure_density: bool = False,
                 backend: str = "auto", max_bytes: int | None = None) -> None:
        super().__init__(cell, masks, train_thresholds, measure_density, max_bytes)
        check_choice("backend", backend, BACKENDS)
        cpu = cell.weight_hh.device.type == "cpu"
        if backend in ("numba", "auto") and not cpu:
            backend = "gemm" if backend == "auto" else backend
        if backend == "numba" and not cpu:
            raise ValueError("backend='numba' needs a CPU cell")
        h = self.spec.hidden_size
        self._n_plain = int((~self.is_theta).sum())
        m = self.masks.get("weight_hh")
        struct = (torch.ones(h, h, dtype=torch.bool) if m is None
                  else m.cpu().reshape(3, h, h).any(0))                   # (i, j) of K kept
        #: kept fraction of K's entries (some gate keeps W_hh[:, i, j])
        self.k_density = float(struct.double().mean())
        if backend == "auto":
            small = h < AUTO_GEMM_MIN_HIDDEN or self.k_density < AUTO_NUMBA_MAX_K_DENSITY
            backend = "numba" if small else "gemm"
        self.backend = backend
        #: gemm backend: live-column bookkeeping and immediate terms by numba (CPU only);
        #: off CPU every kept column is live and the terms are added by ``index_add_``
        self._gemm_numba = cpu
        #: numba backend: columns of ``M`` per pass of the influence update (bitwise the same
        #: result for any value >= 1; the default keeps a row's chunk in L1)
        self.update_chunk = _kernels.UPDATE_CHUNK
        cols = struct.t().numpy()                                         # [j, i]
        self._kptr = np.concatenate([[0], np.cumsum(cols.sum(1))]).astype(np.int64)
        self._krows = np.nonzero(cols)[1].astype(np.int64)
        rows = struct.numpy()                                             # [i, j]
        self._rptr = np.concatenate([[0], np.cumsum(rows.sum(1))]).astype(np.int64)
        self._rcols = np.nonzero(rows)[1].astype(np.int64)

    def influence_bytes(self, batch_size: int) -> int:
        h, p = self.spec.hidden_size, int(self.layout.kept.sum())
        item = self.cell.weight_hh.element_size()
        # M (B, H, P) plus one sample's copy of the rows the off-diagonal product reads
        return (batch_size + 1) * h * p * item

    def _fixed_bytes(self) -> int:
        return self.influence_bytes(0)

    def _bytes_detail(self) -> str:
        h, p = self.spec.hidden_size, int(self.layout.kept.sum())
        item = self.cell.weight_hh.element_size()
        return (f"B x H x P = B x {h} x {p} kept columns of {item} bytes, plus one sample's "
                f"work copy; {format_bytes(h * p * item)} per sample")

    def _init_influence(self) -> None:
        lay, h, bsz = self.layout, self.spec.hidden_size, self.batch_size
        dev = self.y.device
        kept = lay.kept_index
        is_th = self.is_theta[kept]
        plain = (~is_th).nonzero().squeeze(1)
        theta = is_th.nonzero().squeeze(1)
        self._p = int(kept.numel())
        self._plain_pos = plain.to(dev)                        # kept-column ids of plain columns
        self._plain_unit = lay.unit[kept][plain].to(dev)
        self._plain_q = (lay.slot[kept][plain] * h + lay.unit[kept][plain]).to(dev)
        self._plain_src = lay.src[kept][plain].to(dev)
        self._theta_pos = theta.to(dev)
        self._theta_unit = lay.unit[kept][theta].to(dev)
        self._kept_index = kept.to(dev)
        self.M = self.y.new_zeros(bsz, h, self._p)
        self.row_nz = torch.zeros(bsz, h, dtype=torch.bool, device=dev)
        self.perm = torch.arange(self._p, device=dev).repeat(bsz, 1)   # storage -> kept column
        self.where = self.perm.clone()                                 # kept column -> storage
        self.is_live = torch.zeros(bsz, self._p, dtype=torch.bool, device=dev)
        self.live = np.zeros(bsz, dtype=np.int64)                      # live columns
        if self.backend == "gemm":             # no row bookkeeping; columns only on CPU
            self.row_nz.fill_(True)
            self.row_scale = self.y.new_ones(bsz, h)   # M = diag(row_scale) self.M
            if not self._gemm_numba:
                self.is_live.fill_(True)
                self.live.fill(self._p)

    @property
    def num_kept(self) -> int:
        return self._p

    @property
    def m_bytes(self) -> int:
        return self.M.numel() * self.M.element_size()

    def influence(self) -> torch.Tensor:
        full = self.M.new_zeros(self.batch_size, self.spec.hidden_size, self.layout.num_columns)
        m = self.M * self.row_scale[:, :, None] if self.backend == "gemm" else self.M
        for b in range(self.batch_size):
            full[b][:, self._kept_index[self.perm[b]]] = m[b]
        return full

    def _make_live(self, b: int, newly: torch.Tensor) -> None:
        """Move the (all-zero) columns ``newly`` (kept-column ids) to the live block."""
        live = self.live[b]
        tail = self.perm[b, live:]
        self.is_live[b, newly] = True
        rest = tail[~self.is_live[b, tail]]
        self.perm[b, live:] = torch.cat([newly, rest])
        self.where[b, self.perm[b, live:]] = torch.arange(live, self._p, device=newly.device)
        self.live[b] = live + int(newly.numel())

    def step(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        if self.backend == "numba":
            return self._step_numba(x)
        if self.backend == "gemm":
            return self._step_gemm(x)
        return self._step_torch(x)

    def _step_gemm(self, x: torch.Tensor) -> torch.Tensor:
        spec, bsz = self.spec, self.batch_size
        w, theta, slope, ls = self._forward(x)
        diag = ls.z * self.e_prev
        if spec.reset_mode == "subtract_output":
            diag = diag - self.a_prev
        macs = zero_macs()
        tu = self._theta_unit
        if tu.numel():
            own = ls.z[:, tu] * self.dcth_prev[:, tu]
            if spec.reset_mode == "subtract_output":
                own = own - self.dyth_prev[:, tu]
            own = own * slope[tu]
            scale = self.dyth_prev[:, tu] * slope[tu]
            macs["immediate"] += 4 * int(tu.numel()) * bsz
        else:
            own = scale = x.new_zeros(bsz, 0)
        j_entries = _gemm.gemm_step(
            spec, self.M, self.row_scale, self.perm, self.where, self.live, w["weight_hh"], ls,
            self.a_prev, diag, self._src(x), self._plain_q, self._plain_src, self._plain_pos,
            self._plain_unit, tu, self._theta_pos, own, scale, macs, self._gemm_numba)
        active_sum = float((self.a_prev != 0).double().mean(1).sum())
        self._finish_step(ls, macs, active_sum, j_entries)
        return ls.y

    def _step_numba(self, x: torch.Tensor) -> torch.Tensor:
        spec, h, bsz = self.spec, self.spec.hidden_size, self.batch_size
        w, theta, slope, ls = self._forward(x)
        diag = ls.z * self.e_prev
        if spec.reset_mode == "subtract_output":
            diag = diag - self.a_prev
        vals = ls.deltas[:, self._plain_q] * self._src(x)[:, self._plain_src]   # (B, P_plain)
        macs = zero_macs()
        macs["immediate"] += vals.numel()
        tu = self._theta_unit
        n_theta = int(tu.numel())
        if n_theta:
            own = ls.z[:, tu] * self.dcth_prev[:, tu]
            if spec.reset_mode == "subtract_output":
                own = own - self.dyth_prev[:, tu]
            own = own * slope[tu]
            macs["immediate"] += 3 * n_theta * bsz
        else:
            own = vals.new_zeros(bsz, 0)
        counts = np.zeros(3, dtype=np.int64)
        dh = ls.deltas[:, 3 * h:].reshape(bsz, 3, h)
        active_sum, j_entries = _kernels.sparse_step(
            self.M.numpy(), self.row_nz.numpy(), self.perm.numpy(), self.where.numpy(),
            self.live, self.a_prev.contiguous().numpy(), diag.contiguous().numpy(),
            dh.contiguous().numpy(), w["weight_hh"].reshape(3, h, h).contiguous().numpy(),
            self._kptr, self._krows, self._rptr, self._rcols, vals.contiguous().numpy(),
            self._plain_pos.numpy(), self._plain_unit.numpy(), tu.numpy(), self._theta_pos.numpy(),
            own.contiguous().numpy(), self.dyth_prev.contiguous().numpy(),
            slope.contiguous().numpy(), counts, self.update_chunk)
        macs["jacobian"] += int(counts[0])
        macs["immediate"] += int(counts[1])
        macs["update"] += int(counts[2])
        self._finish_step(ls, macs, active_sum, j_entries)
        return ls.y

    def _finish_step(self, ls, macs: dict[str, int], active_sum: float, j_entries: int) -> None:
        h, bsz = self.spec.hidden_size, self.batch_size
        dense = dense_step_macs(h, self.layout.num_columns, self._n_plain, self.num_theta, bsz)
        self._advance(ls)
        self.counter.record(StepRecord(
            macs=macs, dense_macs=dense, active_fraction=active_sum / bsz,
            j_density=j_entries / (bsz * h * h), m_bytes=self.m_bytes,
            m_density=(float((self.M != 0).sum()) / (bsz * h * self.layout.num_columns)
                       if self.measure_density else None),
        ))

    def _step_torch(self, x: torch.Tensor) -> torch.Tensor:
        spec, h = self.spec, self.spec.hidden_size
        w, theta, slope, ls = self._forward(x)
        w_hh = w["weight_hh"]
        diag = ls.z * self.e_prev
        if spec.reset_mode == "subtract_output":
            diag = diag - self.a_prev
        vals = ls.deltas[:, self._plain_q] * self._src(x)[:, self._plain_src]   # (B, P_plain)
        macs = zero_macs()
        macs["immediate"] += vals.numel()
        active_sum = 0.0
        j_entries = 0
        n_theta = int(self._theta_pos.numel())
        tu = self._theta_unit
        if n_theta:
            own = ls.z[:, tu] * self.dcth_prev[:, tu]
            if spec.reset_mode == "subtract_output":
                own = own - self.dyth_prev[:, tu]
            own = own * slope[tu]
            macs["immediate"] += 3 * n_theta * self.batch_size
        for b in range(self.batch_size):
            mb, rows = self.M[b], self.row_nz[b]
            a_b = self.a_prev[b]
            act = a_b != 0
            active_sum += float(act.double().mean())
            use = (act & rows).nonzero().squeeze(1)              # active columns of J worth doing
            n_use = int(use.numel())
            nz_plain = vals[b] != 0
            th_need = (self.dyth_prev[b, tu] != 0).nonzero().squeeze(1) if n_theta else use[:0]
            th_units = tu[th_need]
            # columns of M becoming live this step (their immediate term is nonzero)
            fresh = torch.zeros(self._p, dtype=torch.bool, device=x.device)
            fresh[self._plain_pos[nz_plain]] = True
            if n_theta:
                fresh[self._theta_pos[th_need]] = True
                fresh[self._theta_pos[own[b] != 0]] = True
            fresh &= ~self.is_live[b]
            n_live = self.live[b]                                # columns that may be nonzero
            if bool(fresh.any()):
                self._make_live(b, fresh.nonzero().squeeze(1))
            need = torch.zeros(h, dtype=torch.bool, device=x.device)
            need[use] = True
            need[th_units] = True
            cols = need.nonzero().squeeze(1)                     # columns of K to form
            pos = torch.cumsum(need, 0) - 1                      # unit -> position in cols
            kc = (recurrent_jacobian(spec, w_hh, ls.deltas[b:b + 1], cols)[0]
                  if cols.numel() else None)                     # (H, |cols|)
            macs["jacobian"] += 3 * h * int(cols.numel())
            j_entries += h * n_use + h - n_use                   # active columns + diagonal
            new_rows = rows.clone()
            live_m = mb[:, :n_live]
            if n_use and n_live:
                m_act = live_m.index_select(0, use)                # (|A|, L) copy of old rows
                coef = kc[:, pos[use]] * a_b[use]                  # (H, |A|)
                macs["jacobian"] += h * n_use
            r_idx = rows.nonzero().squeeze(1)
            if r_idx.numel() == h:
                live_m.mul_(diag[b, :, None])
            elif r_idx.numel():
                live_m[r_idx] = live_m[r_idx] * diag[b, r_idx, None]
            macs["update"] += int(r_idx.numel()) * n_live
            if n_use and n_live:
                live_m.addmm_(coef, m_act)
                macs["update"] += h * n_use * n_live
                new_rows |= (coef != 0).any(1)
            where = self.where[b]
            nzp = nz_plain.nonzero().squeeze(1)
            mb.index_put_((self._plain_unit[nzp], where[self._plain_pos[nzp]]), vals[b, nzp],
                          accumulate=True)
            macs["update"] += int(nzp.numel())
            new_rows[self._plain_unit[nzp]] = True
            if n_theta:
                nzo = (own[b] != 0).nonzero().squeeze(1)
                mb.index_put_((tu[nzo], where[self._theta_pos[nzo]]), own[b, nzo],
                              accumulate=True)
                macs["update"] += int(nzo.numel())
                new_rows[tu[nzo]] = True
                if th_need.numel():
                    scale = self.dyth_prev[b, th_units] * slope[th_units]
                    colv = kc[:, pos[th_units]] * scale            # (H, |th_need|)
                    mb[:, where[self._theta_pos[th_need]]] += colv
                    macs["immediate"] += h * int(th_need.numel()) + int(th_need.numel())
                    macs["update"] += h * int(th_need.numel())
                    new_rows |= (colv != 0).any(1)
            self.row_nz[b] = new_rows
        self._finish_step(ls, macs, active_sum, j_entries)
        return ls.y

    @property
    def live_fraction(self) -> float:
        """Mean fraction of the kept columns of ``M`` that are live (may be nonzero)."""
        return int(self.live.sum()) / (self.batch_size * self._p) if self._p else 0.0

    def accumulate(self, grad_y: torch.Tensor) -> None:
        g = self._check_grad_y(grad_y)
        ls = self.last
        v = g * ls.a
        macs = v.numel()
        acc = None
        if self.backend == "gemm":            # straight into grad_flat: no (P,) temporaries
            cols, part, done = _gemm.gemm_gradient(self.M, int(self.live.max()), self.perm,
                                                   v * self.row_scale)
            self.grad_flat.index_add_(0, self._kept_index[cols], part)
            macs += done + v.numel()
        else:
            acc = self.M.new_zeros(self._p)
        if self.backend == "numba":
            macs += int(_kernels.sparse_gradient(self.M.numpy(), self.row_nz.numpy(),
                                                 self.perm.numpy(), self.live,
                                                 v.contiguous().numpy(), acc.numpy()))
        for b in range(self.batch_size if self.backend == "torch" else 0):
            n_live = self.live[b]
            rows = ((v[b] != 0) & self.row_nz[b]).nonzero().squeeze(1)
            if rows.numel() and n_live:
                part = self.M[b, :, :n_live].index_select(0, rows).t() @ v[b, rows]
                acc[self.perm[b, :n_live]] += part
                macs += int(rows.numel()) * n_live
        if acc is not None:
            self.grad_flat.index_add_(0, self._kept_index, acc)
        if self._theta_pos.numel():
            _, slope = threshold_and_slope(self.cell, self.spec)
            u = self._theta_unit
            self.grad_flat.index_add_(0, self._kept_index[self._theta_pos],
                                      (g[:, u] * ls.dy_dtheta[:, u]).sum(0) * slope[u])
            macs += 2 * int(u.numel()) * self.batch_size
        dense = dense_gradient_macs(self.spec.hidden_size, self.layout.num_columns,
                                    self.num_theta, self.batch_size)
        self.counter.add_gradient(macs, dense)
