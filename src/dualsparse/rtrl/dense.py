"""Dense reference RTRL: ``M_t = J_t M_{t-1} + Mbar_t`` with full ``J_t`` and all ``p`` columns.

Cost per step and sample: ``H^2 p`` MACs for ``J_t M_{t-1}``; memory ``H p`` numbers. Pruned
parameters keep their (all-zero) columns here, so the sparse engine can be checked against it.
"""

from __future__ import annotations

import torch

from dualsparse.rtrl.base import RTRLBase
from dualsparse.rtrl.cell import recurrent_jacobian, threshold_and_slope
from dualsparse.rtrl.counters import StepRecord, dense_gradient_macs, dense_step_macs


class DenseRTRL(RTRLBase):
    """Exact RTRL with dense matrices. Args: see :class:`~dualsparse.rtrl.base.RTRLBase`."""

    def _init_influence(self) -> None:
        h, p = self.spec.hidden_size, self.layout.num_columns
        self.M = self.y.new_zeros(self.batch_size, h, p)
        lay = self.layout
        plain = ~self.is_theta
        self._plain_cols = plain.nonzero().squeeze(1)
        self._plain_unit = lay.unit[plain]
        self._plain_q = lay.slot[plain] * h + lay.unit[plain]
        self._plain_src = lay.src[plain]
        self._theta_cols = self.is_theta.nonzero().squeeze(1)
        self._keep = lay.kept.to(self.y)

    @property
    def m_bytes(self) -> int:
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
        jac = k * self.a_prev[:, None, :] + torch.diag_embed(diag)
        mbar = torch.zeros_like(self.M)
        vals = ls.deltas[:, self._plain_q] * self._src(x)[:, self._plain_src]
        mbar[:, self._plain_unit, self._plain_cols] = vals
        if self.num_theta:
            j = torch.arange(h, device=x.device)
            col = self._theta_cols
            mbar[:, :, col] = k * (self.dyth_prev * slope)[:, None, :]
            d_own = ls.z * self.dcth_prev
            if spec.reset_mode == "subtract_output":
                d_own = d_own - self.dyth_prev
            mbar[:, j, col] += d_own * slope
        mbar *= self._keep                                  # d(W * mask)/dW = mask
        self.M = torch.bmm(jac, self.M) + mbar
        active = float((self.a_prev != 0).double().mean())
        self._advance(ls)
        macs = dense_step_macs(h, self.layout.num_columns, int((~self.is_theta).sum()),
                               self.num_theta, b)
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
        flat = torch.einsum("bh,bhp->p", v, self.M)
        if self.num_theta:
            _, slope = threshold_and_slope(self.cell, self.spec)
            flat[self._theta_cols] += (g * ls.dy_dtheta).sum(0) * slope
        self.grad_flat += flat * self._keep
        macs = dense_gradient_macs(self.spec.hidden_size, self.layout.num_columns,
                                   self.num_theta, self.batch_size)
        self.counter.add_gradient(macs, macs)
