"""Sparse exact RTRL: the same recursion as :class:`DenseRTRL`, skipping structural zeros.

Per sample and step, with ``A`` = units with ``a_{t-1} = dy/dc~ != 0`` (fired or inside the
surrogate's support) whose row of ``M`` is nonzero, ``R`` = nonzero rows of ``M`` and only the
``P`` kept (unpruned) parameter columns stored::

    M[R]  *= diag(J_t)[R]                                  |R| P   MACs
    M     += (K_t[:, A] * a_{t-1}[A]) @ M_old[A]           H |A| P MACs (only if A is nonempty)
    M[i, col] += delta[slot, i] * src[k]                   one MAC per kept plain column

``K_t[:, A]`` is formed for the needed columns only (``3 H |A|`` MACs). Rows of ``M`` are
tracked structurally (a row becomes nonzero when something is added to it), so the first step
and units whose parameters are all pruned cost nothing. The gradient contraction uses only the
rows with ``dL/dy_t * a_t != 0``. Counts go to :attr:`counter` as the code runs.

Batch samples are processed one at a time (their active sets differ).
"""

from __future__ import annotations

import torch

from dualsparse.rtrl.base import RTRLBase
from dualsparse.rtrl.cell import recurrent_jacobian, threshold_and_slope
from dualsparse.rtrl.counters import (
    StepRecord,
    dense_gradient_macs,
    dense_step_macs,
    zero_macs,
)


class SparseRTRL(RTRLBase):
    """Exact RTRL exploiting activity and parameter sparsity.

    Args: see :class:`~dualsparse.rtrl.base.RTRLBase`. ``M`` is stored as ``(B, H, P)`` for
    the ``P`` kept columns only.
    """

    def _init_influence(self) -> None:
        lay, h = self.layout, self.spec.hidden_size
        dev = self.y.device
        kept = lay.kept_index
        is_th = self.is_theta[kept]
        plain = (~is_th).nonzero().squeeze(1)
        theta = is_th.nonzero().squeeze(1)
        self._p = int(kept.numel())
        self._plain_pos = plain.to(dev)                        # positions in the kept columns
        self._plain_unit = lay.unit[kept][plain].to(dev)
        self._plain_q = (lay.slot[kept][plain] * h + lay.unit[kept][plain]).to(dev)
        self._plain_src = lay.src[kept][plain].to(dev)
        self._theta_pos = theta.to(dev)
        self._theta_unit = lay.unit[kept][theta].to(dev)
        self._kept_index = kept.to(dev)
        self.M = self.y.new_zeros(self.batch_size, h, self._p)
        self.row_nz = torch.zeros(self.batch_size, h, dtype=torch.bool, device=dev)
        plain_rows = torch.zeros(h, dtype=torch.bool, device=dev)
        plain_rows[self._plain_unit] = True
        self._plain_rows = plain_rows

    @property
    def num_kept(self) -> int:
        return self._p

    @property
    def m_bytes(self) -> int:
        return self.M.numel() * self.M.element_size()

    def influence(self) -> torch.Tensor:
        full = self.M.new_zeros(self.batch_size, self.spec.hidden_size, self.layout.num_columns)
        full[:, :, self._kept_index] = self.M
        return full

    def step(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        spec, h, p = self.spec, self.spec.hidden_size, self._p
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
        for b in range(self.batch_size):
            mb, rows = self.M[b], self.row_nz[b]
            a_b = self.a_prev[b]
            act = a_b != 0
            active_sum += float(act.double().mean())
            use = (act & rows).nonzero().squeeze(1)              # active columns of J worth doing
            n_use = int(use.numel())
            th_need = (self.dyth_prev[b, self._theta_unit] != 0).nonzero().squeeze(1)
            th_units = self._theta_unit[th_need]
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
            if n_use:
                m_act = mb.index_select(0, use)                    # (|A|, P) copy of old rows
                coef = kc[:, pos[use]] * a_b[use]                    # (H, |A|)
                macs["jacobian"] += h * n_use
            r_idx = rows.nonzero().squeeze(1)
            if r_idx.numel() == h:
                mb.mul_(diag[b, :, None])
            elif r_idx.numel():
                mb[r_idx] = mb[r_idx] * diag[b, r_idx, None]
            macs["update"] += int(r_idx.numel()) * p
            if n_use:
                mb.addmm_(coef, m_act)
                macs["update"] += h * n_use * p
                new_rows |= (coef != 0).any(1)
            mb.index_put_((self._plain_unit, self._plain_pos), vals[b], accumulate=True)
            macs["update"] += int(vals.size(1))
            new_rows |= self._plain_rows
            if n_theta:
                own = ls.z[b, self._theta_unit] * self.dcth_prev[b, self._theta_unit]
                if spec.reset_mode == "subtract_output":
                    own = own - self.dyth_prev[b, self._theta_unit]
                own = own * slope[self._theta_unit]
                mb.index_put_((self._theta_unit, self._theta_pos), own, accumulate=True)
                macs["immediate"] += 3 * n_theta
                macs["update"] += n_theta
                new_rows[self._theta_unit] = True
                if th_need.numel():
                    scale = self.dyth_prev[b, th_units] * slope[th_units]
                    colv = kc[:, pos[th_units]] * scale                   # (H, |th_need|)
                    mb[:, self._theta_pos[th_need]] += colv
                    macs["immediate"] += h * int(th_need.numel()) + int(th_need.numel())
                    macs["update"] += h * int(th_need.numel())
                    new_rows |= (colv != 0).any(1)
            self.row_nz[b] = new_rows
        n_plain = int((~self.is_theta).sum())
        dense = dense_step_macs(h, self.layout.num_columns, n_plain, self.num_theta,
                                self.batch_size)
        self._advance(ls)
        bsz = self.batch_size
        self.counter.record(StepRecord(
            macs=macs, dense_macs=dense, active_fraction=active_sum / bsz,
            j_density=j_entries / (bsz * h * h), m_bytes=self.m_bytes,
            m_density=(float((self.M != 0).sum()) / (bsz * h * self.layout.num_columns)
                       if self.measure_density else None),
        ))
        return ls.y

    def accumulate(self, grad_y: torch.Tensor) -> None:
        g = self._check_grad_y(grad_y)
        ls = self.last
        v = g * ls.a
        acc = self.M.new_zeros(self._p)
        macs = v.numel()
        for b in range(self.batch_size):
            rows = ((v[b] != 0) & self.row_nz[b]).nonzero().squeeze(1)
            if rows.numel():
                acc.addmv_(self.M[b].index_select(0, rows).t(), v[b, rows])
                macs += int(rows.numel()) * self._p
        if self._theta_pos.numel():
            _, slope = threshold_and_slope(self.cell, self.spec)
            u = self._theta_unit
            acc[self._theta_pos] += (g[:, u] * ls.dy_dtheta[:, u]).sum(0) * slope[u]
            macs += 2 * int(u.numel()) * self.batch_size
        self.grad_flat[self._kept_index] += acc
        dense = dense_gradient_macs(self.spec.hidden_size, self.layout.num_columns,
                                    self.num_theta, self.batch_size)
        self.counter.add_gradient(macs, dense)
