"""Event function H(x) with surrogate (pseudo-) derivatives.

The forward pass is the Heaviside step ``H(x) = 1 if x > 0 else 0`` (so ``H(0) = 0``).
The backward pass replaces the true derivative (a Dirac delta) by a *surrogate*
``dH/dx ~ s(x)`` of finite support. Every surrogate here is described by two named numbers:

``gamma``
    the peak value ``s(0)`` (EvNN calls it ``dampening_factor``).
``width``
    the **half-width** of the support, in the units of ``x`` (``c - theta``): the surrogate
    is zero for ``|x| >= width`` (for the compact shapes). EvNN's
    ``pseudo_derivative_support`` ``eps`` is an *inverse* width: ``width = 1 / eps``.

Shapes (``x`` is the distance to the threshold):

* ``"triangle"`` (default): ``gamma * max(0, 1 - |x| / width)``; area ``gamma * width``.
* ``"rectangle"``: ``gamma * 1[|x| < width]``; area ``2 * gamma * width``.
* ``"fast_sigmoid"``: ``gamma / (1 + |x| / width) ** 2`` (SuperSpike); support is unbounded,
  ``width`` sets the scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from dualsparse.validation import check_choice, check_real

SURROGATE_SHAPES = ("triangle", "rectangle", "fast_sigmoid")


@dataclass(frozen=True)
class Surrogate:
    """A surrogate derivative for the Heaviside event function.

    Args:
        shape: one of ``"triangle"``, ``"rectangle"``, ``"fast_sigmoid"``.
        gamma: peak value of the pseudo-derivative at ``x = 0`` (> 0).
        width: half-width of the support in units of ``x`` (> 0).
    """

    shape: str = "triangle"
    gamma: float = 0.7
    width: float = 1.0

    def __post_init__(self) -> None:
        check_choice("surrogate shape", self.shape, SURROGATE_SHAPES)
        check_real("surrogate gamma", self.gamma, low=0.0, low_open=True)
        check_real("surrogate width", self.width, low=0.0, low_open=True)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """Pseudo-derivative ``s(x)``, elementwise, same shape and dtype as ``x``."""
        a = x.abs() / self.width
        if self.shape == "triangle":
            return self.gamma * torch.clamp(1.0 - a, min=0.0)
        if self.shape == "rectangle":
            return self.gamma * (a < 1.0).to(x.dtype)
        return self.gamma / (1.0 + a) ** 2

    def antiderivative(self, x: torch.Tensor) -> torch.Tensor:
        """A smooth step ``S(x) = integral of s from -inf to x`` (differentiable stand-in for H).

        Its autograd derivative is exactly :meth:`derivative`; used to gradcheck the cells and
        to define the straight-through reference ``H(x) + S(x) - S(x).detach()``.
        """
        a = x / self.width
        g, w = self.gamma, self.width
        if self.shape == "triangle":
            left = 0.5 * g * w * torch.clamp(1.0 + a, min=0.0) ** 2
            right = g * w - 0.5 * g * w * torch.clamp(1.0 - a, min=0.0) ** 2
            return torch.where(a < 0, torch.where(a > -1, left, torch.zeros_like(a)),
                               torch.where(a < 1, right, torch.full_like(a, g * w)))
        if self.shape == "rectangle":
            return g * w * (torch.clamp(a, -1.0, 1.0) + 1.0)
        # fast sigmoid: integral of g / (1 + |u|)^2 du * w
        return torch.where(a < 0, g * w / (1.0 - a), g * w * (2.0 - 1.0 / (1.0 + a)))

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask of entries where the pseudo-derivative is nonzero."""
        if self.shape == "fast_sigmoid":
            return torch.ones_like(x, dtype=torch.bool)
        return x.abs() < self.width

    def to_dict(self) -> dict:
        return asdict(self)


def needed_units(events: torch.Tensor, c_tildes: torch.Tensor, theta: torch.Tensor,
                 surrogate: Surrogate) -> torch.Tensor:
    """Boolean ``(T, B, H)``: where an EGRU's ``dy_t/dc~_t`` can be nonzero (the unit fired, or
    ``c~_t - theta`` lies inside the surrogate's support); elsewhere the gradient arriving at
    ``y_t`` is never used (the backward sparsity of :mod:`dualsparse.models.egru_fused`).

    Backward sparsity is ``1 - needed_units(...).float().mean()``.
    """
    return (events > 0) | surrogate.in_support(c_tildes - theta)


class _HeavisideSurrogateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.derivative(x), None


def heaviside(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Event function: ``1[x > 0]`` forward, ``surrogate.derivative(x)`` backward."""
    return _HeavisideSurrogateFn.apply(x, surrogate)


def straight_through_heaviside(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Reference implementation of :func:`heaviside` using plain autograd (for tests)."""
    smooth = surrogate.antiderivative(x)
    return (x > 0).to(x.dtype) + (smooth - smooth.detach())


def smooth_step(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Differentiable event function ``S(x)`` whose true derivative is the surrogate."""
    return surrogate.antiderivative(x)


EventFunction = Callable[[torch.Tensor, Surrogate], torch.Tensor]


def make_surrogate(surrogate: str | Surrogate | dict, gamma: float | None = None,
                   width: float | None = None) -> Surrogate:
    """Build a :class:`Surrogate` from a shape name (with optional ``gamma``/``width``),
    a dict (from JSON configs) or an existing instance."""
    if isinstance(surrogate, Surrogate):
        if gamma is not None or width is not None:
            raise ValueError("pass gamma/width either in the Surrogate or as arguments, not both")
        return surrogate
    if isinstance(surrogate, dict):
        return Surrogate(**surrogate)
    kwargs = {"shape": surrogate}
    if gamma is not None:
        kwargs["gamma"] = gamma
    if width is not None:
        kwargs["width"] = width
    return Surrogate(**kwargs)
