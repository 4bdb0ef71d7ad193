"""Declarative argument checks shared by the whole library (the ``core`` layer).

Each checker returns the value in its canonical type or raises a :class:`ValueError` that
names the argument (or flag) and the value it got, e.g.::

    batch_size = check_int("batch_size", batch_size, low=1)
    lr = check_real("lr", lr, low=0.0)
    p = check_real("dropout", p, low=0.0, high=1.0, high_open=True)
    mode = check_choice("reset_mode", mode, RESET_MODES)
    block = check_block("block", "16x1")            # -> (16, 1)

``bool`` is never accepted as a number (``True`` is an ``int`` in Python), and NaN or
infinite reals are refused unless ``finite=False``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def check_int(name: str, value: Any, *, low: int | None = None,
              high: int | None = None) -> int:
    """An integer (Python or numpy, not bool) in ``[low, high]``; returned as ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an int <= {high}, got {value}")
    return value


def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False,
               finite: bool = True) -> float:
    """A real number (not bool) in the interval given; returned as ``float``.

    Args:
        low, high: bounds (None: unbounded); ``low_open``/``high_open`` exclude them.
        finite: refuse NaN and infinities (NaN is always refused).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_choice(name: str, value: T, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``; the error lists them."""
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def check_block(name: str, value: Any) -> tuple[int, int]:
    """A block shape ``(rows, cols)`` of ints >= 1, from a pair or a string like ``"16x1"``."""
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{name} must look like RxC (e.g. 4x4, 16x1), got {value!r}")
        value = (int(parts[0]), int(parts[1]))
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a pair (rows, cols), got {value!r}")
    pair = tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be a pair (rows, cols), got {value!r}")
    try:
        return (check_int(name, pair[0], low=1), check_int(name, pair[1], low=1))
    except ValueError:
        raise ValueError(f"{name} must hold two ints >= 1 (rows, cols), got {value!r}") from None


__all__ = ["check_block", "check_choice", "check_int", "check_real"]
