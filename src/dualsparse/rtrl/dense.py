"""Dense RTRL as a user would write it: ``M_t = J_t M_{t-1} + Mbar_t`` by batched BLAS.

Per step the whole batch's influence update is one batched GEMM, ``torch.bmm(J_t, M_{t-1})``
``(B, H, H) x (B, H, p)``, written into a preallocated second buffer (the two buffers swap,
so no full-size tensor is allocated per step). The immediate term ``Mbar_t`` has one nonzero
per plain column (the unit the parameter feeds) and is added in place at those ``p`` entries;
the threshold columns get their full ``(H,)`` columns. Cost per step and sample: ``H^2 p``
MACs for ``J_t M_{t-1}``; memory ``2 H p`` numbers (two buffers). Pruned parameters keep
their (all-zero) columns here, so the sparse engine can be checked against it, and the
speed-up of :class:`~dualsparse.rtrl.sparse.SparseRTRL` is measured against this engine.
"""

from __future__ import annotations

import torch

from dualsparse.rtrl.base import RTRLBase
from dualsparse.rtrl.cell import recurrent_jacobian, threshold_and_slope
from dualsparse.rtrl.counters import StepRecord, dense_gradient_macs, dense_step_macs
from dualsparse.rtrl.memory import format_bytes


class DenseRTRL(RTRLBase):
    """Exact RTRL with dense matrices and one batched GEMM per step.

    Args: see :class:`~dualsparse.rtrl.base.RTRLBase`.
    """

    def influence_bytes(self, batch_size: int) -> int:
        h, p = self.spec.hidden_size, self.layout.num_columns
        item = self.cell.weight_hh.element_size()
        return batch_size * (2 * h * p + 2 * h * h) * item

    def _bytes_detail(self) -> str:
        h, p = self.spec.hidden_size, self.layout.num_columns
        item = self.cell.weight_hh.element_size()
        return (f"2 buffers of B x H x p = B x {h} x {p} entries of {item} bytes, plus J_t; "
                f"{format_bytes(2 * h * p * item)} per sample")

    def _init_influence(self) -> None:
        h, p = self.spec.hidden_size, self.layout.num_columns
        self.M = self.y.new_zeros(self.batch_size, h, p)
        self._next = torch.empty_like(self.M)
        lay = self.layout
        dev = self.y.device
        plain = ~self.is_theta
        keep = lay.kept.to(dev)
        kept_plain = plain & lay.kept                      # pruned columns get no term
        self._plain_cols = kept_plain.nonzero().squeeze(1).to(dev)
        self._plain_unit = lay.unit[kept_plain].to(dev)
        self._plain_q = (lay.slot[kept_plain] * h + lay.unit[kept_plain]).to(dev)
        self._plain_src = lay.src[kept_plain].to(dev)
        self._n_plain = int(plain.sum())
        self._theta_cols = self.is_theta.nonzero().squeeze(1).to(dev)
        self._theta_keep = keep[self._theta_cols].to(self.y.dtype)
        self._keep = keep.to(self.y.dtype)

    @property
    def m_bytes(self) -> int:
        """Bytes of ``M`` (the GEMM's output buffer, as large, is not included)."""
        return self.M.numel() * self.M.element_size()

    def influence(self) -> torch.Tensor:
        return self.M

    def step(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        spec, b, h = self.spec, self.batch_size, self.spec.hidden_size
        w, theta, slope, ls = self._forward(x)
        k = recurrent_jacobian(spec, w["weight_hh"], ls.deltas)           # (B, H, H)
        diag = ls.z * self.e_prev
        if spec.reset_mode == "subtract_output":
            diag = diag - self.a_prev
        jac = k * self.a_prev[:, None, :]
        jac.diagonal(dim1=1, dim2=2).add_(diag)
        out = self._next
        torch.bmm(jac, self.M, out=out)                                   # the H^2 p part
        vals = ls.deltas[:, self._plain_q] * self._src(x)[:, self._plain_src]
        out[:, self._plain_unit, self._plain_cols] += vals
        if self.num_theta:
            col = self._theta_cols
            scale = self.dyth_prev * slope * self._theta_keep                # (B, H)
            d_own = ls.z * self.dcth_prev
            if spec.reset_mode == "subtract_output":
                d_own = d_own - self.dyth_prev
            theta_terms = k * scale[:, None, :]
            theta_terms.diagonal(dim1=1, dim2=2).add_(d_own * slope * self._theta_keep)
            out[:, :, col] += theta_terms
        self.M, self._next = out, self.M
        active = float((self.a_prev != 0).double().mean())
        self._advance(ls)
        macs = dense_step_macs(h, self.layout.num_columns, self._n_plain, self.num_theta, b)
        self.counter.record(StepRecord(
            macs=dict(macs), dense_macs=dict(macs),
            active_fraction=active,
            j_density=float((jac != 0).double().mean()),
            m_bytes=self.m_bytes,
            m_density=float((self.M != 0).double().mean()) if self.measure_density else None,
        ))
        return ls.y

    def accumulate(self, grad_y: torch.Tensor) -> None:
        g = self._check_grad_y(grad_y)
        ls = self.last
        v = g * ls.a
        flat = torch.bmm(v[:, None, :], self.M).sum((0, 1))                 # (p,)
        if self.num_theta:
            _, slope = threshold_and_slope(self.cell, self.spec)
            flat[self._theta_cols] += (g * ls.dy_dtheta).sum(0) * slope
        self.grad_flat += flat * self._keep
        macs = dense_gradient_macs(self.spec.hidden_size, self.layout.num_columns,
                                   self.num_theta, self.batch_size)
        self.counter.add_gradient(macs, macs)
