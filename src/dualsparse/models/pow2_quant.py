"""Power-of-two weight quantiser of the embedded eGRU (float side, used in training).

Weight levels for a bit width ``b`` (2 <= b <= 5) are ``{0} U {+-2**-k : k = 0..kmax}`` with
``kmax = 2**(b-1) - 2``; for ``b = 3`` that is ``{0, +-1/4, +-1/2, +-1}`` (Amoh & Odame, 2019).

Quantisation rule for a float weight ``w``: ``k = clamp(round(-log2|w|), 0, ...)`` (so ``|w| >= 1``
maps to +-1) and the weight becomes zero when it is below the zero threshold:

* ``zero_rule="paper"`` (default, the paper's text): zero if ``|w| <= 2**-kmax`` (0.25 for 3 bits);
* ``zero_rule="code"`` (the released code): zero if ``2**round(log2|w|) < 2**-kmax``, i.e.
  ``|w| < 2**(-kmax - 0.5)`` (about 0.177 for 3 bits).

``round`` is round-half-up in the log domain: ``floor(x + 0.5)``.

This module lives in ``models`` because the eGRU cell trains through it; the integer side
(code words, packing, Q15 arithmetic) is :mod:`dualsparse.embedded.quant`, which builds on it.
"""

from __future__ import annotations

import torch

from dualsparse.validation import check_choice, check_int

Q15_ONE = 1 << 15
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
#: Pre-activations are saturated to +-SOFTSIGN_LIMIT (Q15), i.e. +-64.0, before the softsign.
SOFTSIGN_LIMIT = 64 << 15
ZERO_RULES = ("paper", "code")
MIN_BITS, MAX_BITS = 2, 5


def check_bits(bits: int) -> int:
    """Validate a weight bit width (2..5) and return it."""
    return check_int("bit width", bits, low=MIN_BITS, high=MAX_BITS)


def max_shift(bits: int) -> int:
    """Largest shift ``kmax = 2**(bits-1) - 2`` (smallest non-zero level ``2**-kmax``)."""
    return (1 << (check_bits(bits) - 1)) - 2


def levels(bits: int) -> list[float]:
    """Sorted list of representable weight values for ``bits``."""
    km = max_shift(bits)
    pos = [2.0**-k for k in range(km + 1)]
    return sorted([-p for p in pos] + [0.0] + pos)


def _zero_threshold(bits: int, zero_rule: str) -> tuple[float, bool]:
    check_choice("zero_rule", zero_rule, ZERO_RULES)
    km = max_shift(bits)
    if zero_rule == "paper":
        return 2.0**-km, True  # zero if |w| <= thr
    return 2.0 ** (-km - 0.5), False  # zero if |w| < thr


def quantize_pow2(w: torch.Tensor, bits: int = 3, zero_rule: str = "paper") -> torch.Tensor:
    """Round ``w`` (any shape, float) to the nearest power-of-two level (no gradient rule)."""
    if not torch.is_floating_point(w):
        raise ValueError(f"quantize_pow2 expects a float tensor, got {w.dtype}")
    if torch.isnan(w).any():
        raise ValueError("quantize_pow2: weights contain NaN")
    km = max_shift(bits)
    thr, inclusive = _zero_threshold(bits, zero_rule)
    a = w.abs()
    k = torch.floor(-torch.log2(a.clamp_min(1e-30)) + 0.5).clamp(0, km)
    q = torch.sign(w) * torch.exp2(-k)
    zero = a <= thr if inclusive else a < thr
    return torch.where(zero, torch.zeros_like(w), q)


class _Pow2STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, bits: int, zero_rule: str) -> torch.Tensor:  # type: ignore[override]
        return quantize_pow2(w, bits, zero_rule)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None, None


def quantize_pow2_ste(w: torch.Tensor, bits: int = 3, zero_rule: str = "paper") -> torch.Tensor:
    """Power-of-two quantiser with a straight-through estimator (identity gradient).

    Forward: :func:`quantize_pow2`; backward: the gradient flows unchanged to the stored
    full-precision weights (Hubara et al. style quantisation-aware training).
    """
    return _Pow2STE.apply(w, bits, zero_rule)


def fake_q15(x: torch.Tensor) -> torch.Tensor:
    """Round a float tensor to the Q15 grid (saturating), identity gradient inside the range."""
    y = torch.clamp(x, INT16_MIN / Q15_ONE, INT16_MAX / Q15_ONE)
    return y + (torch.round(y * Q15_ONE) / Q15_ONE - y).detach()


def softsign_float(x: torch.Tensor) -> torch.Tensor:
    """Float softsign ``x / (1 + |x|)``."""
    return x / (1.0 + x.abs())
