"""EGRU thresholds: how the learnable tensor maps to ``theta``, and how it is initialised.

Two parameterisations of ``theta`` (one per unit) inside ``threshold_range = (low, high)``:

* ``"sigmoid"`` (default): the parameter is a logit, ``theta = low + (high - low) *
  sigmoid(raw)``. Always inside the range, exact gradients, but the gradient is scaled by
  ``(high - low) * s (1 - s)``: a threshold near 0 or 1 barely moves.
* ``"clamp"`` (EvNN v0.2): the parameter *is* ``theta``; its value is clamped to
  ``[low, high]`` in the forward pass and the gradient passes straight through (identity).
  EvNN clamps the parameter in place before every forward pass; here the stored value may
  drift outside the range while the value used is clamped (no hidden in-place writes). With
  a threshold learning rate of 0 (the EGRU paper recipes) both are identical.

Initialisation ``"beta"`` draws ``u ~ Beta(alpha, 3)`` with ``alpha = 3 m / (1 - m)``, so that
``E[u] = m`` for ``m = (threshold_mean - low) / (high - low)`` (EvNN's choice), then maps
``theta = low + (high - low) u``. The logit of the sigmoid form is infinite at ``u`` = 0 or 1,
so there the draws are clamped to ``[BETA_CLAMP, 1 - BETA_CLAMP]`` first; for small means this
clamp is not rare (at ``m = 0.01``, ``alpha`` is 0.03 and about three quarters of the draws lie
below ``1e-4``): those units start at ``theta = low + (high - low) * 1e-4``. The clamp form
needs no clamp and stores the draws as they are. ``"constant"`` sets every threshold to
``threshold_mean``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from dualsparse.validation import check_choice, check_real

THRESHOLD_INITS = ("beta", "constant")
THRESHOLD_PARAMETERISATIONS = ("sigmoid", "clamp")
#: Beta draws are clamped to ``[BETA_CLAMP, 1 - BETA_CLAMP]`` before the logit (sigmoid form).
BETA_CLAMP = 1e-4


class Thresholds:
    """Validated threshold settings with the map from the stored tensor to ``theta``.

    Args:
        init: ``"beta"`` or ``"constant"``.
        mean: mean (or value) of the initial thresholds, strictly inside ``range``.
        range: ``(low, high)``, finite, ``low < high``.
        parameterisation: ``"sigmoid"`` or ``"clamp"`` (see the module docstring).
    """

    def __init__(self, init: str, mean: float, range: Sequence[float],
                 parameterisation: str = "sigmoid") -> None:
        self.init = check_choice("threshold_init", init, THRESHOLD_INITS)
        self.parameterisation = check_choice("threshold_parameterisation", parameterisation,
                                             THRESHOLD_PARAMETERISATIONS)
        try:
            low, high = (float(v) for v in range)
        except (TypeError, ValueError):
            raise ValueError(f"threshold_range must be a pair of numbers (low, high), got "
                             f"{range!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"threshold_range must be finite (low, high) with low < high, "
                             f"got {tuple(range)}")
        mean = check_real("threshold_mean", mean)
        if not low < mean < high:
            raise ValueError(f"threshold_mean={mean} must lie strictly inside "
                             f"threshold_range=({low}, {high})")
        self.mean, self.range = mean, (low, high)

    def init_raw(self, raw: torch.Tensor) -> None:
        """Fill the stored tensor ``(H,)`` in place with initial thresholds (no grad)."""
        low, high = self.range
        m = (self.mean - low) / (high - low)
        if self.init == "constant":
            u = torch.full(raw.shape, m, dtype=torch.float64)
        else:
            alpha = 3.0 * m / (1.0 - m)
            u = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(3.0)).sample(raw.shape)
        with torch.no_grad():
            raw.copy_(self._raw_from_unit(u).to(raw))

    def _raw_from_unit(self, u: torch.Tensor) -> torch.Tensor:
        if self.parameterisation == "clamp":
            low, high = self.range
            return low + (high - low) * u
        u = u.clamp(BETA_CLAMP, 1.0 - BETA_CLAMP)
        return torch.log(u / (1.0 - u))

    def raw_from_value(self, theta: torch.Tensor) -> torch.Tensor:
        """The stored tensor that gives thresholds ``theta`` (strictly inside the range)."""
        if self.parameterisation == "clamp":
            return theta.clone()
        low, high = self.range
        u = (theta - low) / (high - low)
        return torch.log(u / (1.0 - u))

    def value(self, raw: torch.Tensor) -> torch.Tensor:
        """``theta`` ``(H,)`` from the stored tensor (differentiable)."""
        low, high = self.range
        if self.parameterisation == "clamp":
            # the value is clamped, the gradient is the identity (straight through)
            return raw + (raw.clamp(low, high) - raw).detach()
        return low + (high - low) * torch.sigmoid(raw)

    def slope(self, raw: torch.Tensor) -> torch.Tensor:
        """``d theta / d raw`` ``(H,)`` as used by the gradient (1 for the clamp form)."""
        if self.parameterisation == "clamp":
            return torch.ones_like(raw)
        low, high = self.range
        s = torch.sigmoid(raw)
        return (high - low) * s * (1.0 - s)

    def config(self) -> dict[str, Any]:
        return {"threshold_init": self.init, "threshold_mean": self.mean,
                "threshold_range": list(self.range),
                "threshold_parameterisation": self.parameterisation}


__all__ = ["BETA_CLAMP", "THRESHOLD_INITS", "THRESHOLD_PARAMETERISATIONS", "Thresholds"]
