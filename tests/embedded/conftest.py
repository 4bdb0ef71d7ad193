"""Shared inputs of the embedded tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _limit_inputs(rng: np.random.Generator | int, b: int, t: int, i: int,
                  zero_row: bool = False) -> np.ndarray:
    """Random Q15 sequences ``(b, t, i)`` (``b >= 3``, 4 with ``zero_row``) whose first three
    are all -32768, all +32767 and random int16 limits; with ``zero_row`` the fourth is all
    zero."""
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    x = rng.integers(-32768, 32768, (b, t, i))
    x[0], x[1] = -32768, 32767  # saturating extremes
    x[2] = rng.choice([-32768, 32767], (t, i))
    if zero_row:
        x[3] = 0
    return x


@pytest.fixture
def q15_limit_inputs() -> Callable[..., np.ndarray]:
    """``make(rng_or_seed, b, t, i, zero_row=False)``: Q15 inputs that include int16 limits."""
    return _limit_inputs
