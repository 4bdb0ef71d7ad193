"""Pruning schedules, counted in optimiser steps.

A schedule has *update points* (the steps at which masks are recomputed). Between points the
masks stay fixed. :meth:`Schedule.last_update_step` gives the latest point at or before a
step, so a trainer that skips steps (resume, gradient accumulation) still applies every
change. Two kinds:

* sparsity schedules give the sparsity to reach at a point, as a function of a tensor's final
  target ``s_f``: :class:`IterativeSchedule` (prune, fine-tune, repeat in ``k`` rounds) and
  :class:`AGPSchedule` (cubic, Zhu & Gupta 2017), both reach ``s_f`` exactly at their last
  point;
* threshold schedules give a magnitude threshold as a fraction of a tensor's ``q``:
  :class:`NarangSchedule` (Narang et al. 2017, gradual threshold). Its final sparsity is *not*
  controlled directly: it depends on how the weights move during training.
"""

from __future__ import annotations

import bisect
import math
import warnings
from abc import ABC, abstractmethod
from typing import Any

import torch

from dualsparse.sparsity.scoring import block_scores
from dualsparse.validation import check_block, check_choice, check_int, check_real


def _check_step(value: Any, what: str) -> int:
    return check_int(f"{what} (an optimiser step)", value, low=0)


def _check_final(final: float) -> float:
    if not (math.isfinite(final) and 0.0 <= final < 1.0):
        raise ValueError(f"final sparsity must lie in [0, 1), got {final!r}")
    return float(final)


class Schedule(ABC):
    """Base class: update points and JSON form."""

    kind: str = ""

    @abstractmethod
    def update_steps(self) -> list[int]:
        """Steps at which masks are recomputed, increasing."""

    def last_update_step(self, step: int) -> int | None:
        """The latest update point ``<= step``, or None before the first."""
        points = self.update_steps()
        i = bisect.bisect_right(points, _check_step(step, "step"))
        return points[i - 1] if i else None

    @property
    def end_step(self) -> int:
        return self.update_steps()[-1]

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with a ``"type"`` key (see :func:`schedule_from_dict`)."""


class SparsitySchedule(Schedule):
    """A schedule that sets target sparsities."""

    kind = "sparsity"

    @abstractmethod
    def sparsity(self, step: int, final: float) -> float:
        """Sparsity to hold at ``step`` for a tensor whose final target is ``final``
        (the value of the latest update point; 0 before the first)."""


class IterativeSchedule(SparsitySchedule):
    """Iterative pruning in ``steps`` rounds: prune, fine-tune, repeat.

    Rounds are at ``steps`` evenly spaced optimiser steps from ``start`` to ``end`` (inclusive,
    rounded to ints). After round ``i`` (1-based) of ``k`` the sparsity is

    * ``spacing="geometric"`` (default): ``1 - (1 - s_f)^(i/k)``, every round prunes the same
      fraction of the weights still alive (iterative magnitude pruning);
    * ``spacing="linear"``: ``s_f * i / k``.

    One-shot pruning is ``steps=1`` with ``start == end``.
    """

    SPACINGS = ("geometric", "linear")

    def __init__(self, steps: int, start: int, end: int, spacing: str = "geometric") -> None:
        self.steps = check_int("steps (pruning rounds)", steps, low=1)
        self.start = _check_step(start, "start")
        self.end = _check_step(end, "end")
        self.spacing = check_choice("spacing", spacing, self.SPACINGS)
        if steps == 1 and start != end:
            raise ValueError(f"a single pruning round needs start == end, got start={start}, "
                             f"end={end}")
        if end < start or (steps > 1 and end - start < steps - 1):
            raise ValueError(f"{steps} rounds need end - start >= {steps - 1}, got start={start}, "
                             f"end={end}")
        if steps == 1:
            self._points = [start]
        else:
            self._points = [start + round(i * (end - start) / (steps - 1)) for i in range(steps)]

    def update_steps(self) -> list[int]:
        return list(self._points)

    def round_sparsity(self, i: int, final: float) -> float:
        """Sparsity after round ``i`` (0 = none, ``steps`` = final)."""
        final = _check_final(final)
        if i <= 0:
            return 0.0
        if i >= self.steps:
            return final
        if self.spacing == "linear":
            return final * i / self.steps
        return 1.0 - (1.0 - final) ** (i / self.steps)

    def sparsity(self, step: int, final: float) -> float:
        i = bisect.bisect_right(self._points, _check_step(step, "step"))
        return self.round_sparsity(i, final)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "iterative", "steps": self.steps, "start": self.start, "end": self.end,
                "spacing": self.spacing}


class AGPSchedule(SparsitySchedule):
    """Automated gradual pruning (Zhu & Gupta 2017), cubic.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - start) / (end - start))^3`` at
    ``t = start, start + frequency, ..., end``; ``end - start`` must be a multiple of
    ``frequency`` so that the last point is ``end`` and ``s_end = s_f`` exactly.
    ``initial`` (``s_i``) is capped at each tensor's ``s_f``.
    """

    def __init__(self, start: int, end: int, frequency: int, initial: float = 0.0) -> None:
        self.start = _check_step(start, "start")
        self.end = _check_step(end, "end")
        check_int("frequency", frequency, low=1)
        if end < start:
            raise ValueError(f"end={end} is before start={start}")
        if (end - start) % frequency:
            raise ValueError(f"end - start = {end - start} is not a multiple of frequency="
                             f"{frequency}, so AGP would not end exactly at its target")
        self.frequency = frequency
        self.initial = _check_final(initial)
        self._n = (end - start) // frequency

    def update_steps(self) -> list[int]:
        return [self.start + j * self.frequency for j in range(self._n + 1)]

    def sparsity(self, step: int, final: float) -> float:
        final = _check_final(final)
        step = _check_step(step, "step")
        if step < self.start:
            return 0.0
        if self._n == 0 or step >= self.end:
            return final
        j = (step - self.start) // self.frequency
        s_i = min(self.initial, final)
        return final + (s_i - final) * (1.0 - j / self._n) ** 3

    def to_dict(self) -> dict[str, Any]:
        return {"type": "agp", "start": self.start, "end": self.end,
                "frequency": self.frequency, "initial": self.initial}


def narang_theta(q: float, start: int, ramp: int, end: int, frequency: int) -> float:
    """Initial slope (Narang et al. 2017, Eq. 1):
    ``theta = 2 q freq / (2 (ramp - start) + 3 (end - ramp))``."""
    _check_narang(start, ramp, end, frequency)
    return 2.0 * q * frequency / (2.0 * (ramp - start) + 3.0 * (end - ramp))


def narang_threshold(step: int, theta: float, phi: float, start: int, ramp: int,
                     frequency: int) -> float:
    """Threshold ``epsilon`` at ``step`` (Narang et al. 2017, Alg. 1):
    ``theta (step - start + 1) / freq`` before ``ramp``, then
    ``(theta (ramp - start + 1) + phi (step - ramp + 1)) / freq``. Weights (or blocks) whose
    magnitude (score) is below it are pruned."""
    if step < ramp:
        return theta * (step - start + 1) / frequency
    return (theta * (ramp - start + 1) + phi * (step - ramp + 1)) / frequency


def narang_q(weight: torch.Tensor, percentile: float = 90.0, block: tuple[int, int] = (1, 1),
             stat: str = "max") -> float:
    """Narang's ``q``: the ``percentile``-th percentile of the block scores of a (trained)
    weight; with ``ramp_multiplier = 1.5`` the threshold ends near ``q``, i.e. near
    ``percentile`` % sparsity. Linear interpolation between order statistics."""
    check_real("percentile", percentile, low=0.0, high=100.0)
    block = check_block("block shape", block)
    scores = block_scores(weight, block, stat).flatten().to(torch.float64)
    s = scores.sort().values
    pos = (s.numel() - 1) * percentile / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def block_theta(theta: float, block_elems: int) -> float:
    """Block-pruning start slope from the element-wise one (Narang et al., Block-Sparse RNNs):
    ``theta_b = theta * N_b^(1/4)``."""
    return theta * block_elems ** 0.25


def _check_narang(start: int, ramp: int, end: int, frequency: int) -> None:
    for v, what in ((start, "start"), (ramp, "ramp"), (end, "end")):
        _check_step(v, what)
    if not start < ramp < end:
        raise ValueError(f"Narang's schedule needs start < ramp < end, got start={start}, "
                         f"ramp={ramp}, end={end}")
    check_int("frequency", frequency, low=1)
    if frequency >= end - start:
        raise ValueError(f"frequency={frequency} leaves no update between start={start} and "
                         f"end={end}")


class NarangSchedule(Schedule):
    """Gradual threshold pruning (Narang et al. 2017, Alg. 1), in units of each tensor's ``q``.

    Updates every ``frequency`` steps strictly between ``start`` and ``end``. The threshold of
    a tensor is ``q * threshold_fraction(step)``: the slope ``theta = narang_theta(1, ...)``
    until ``ramp``, then ``phi = ramp_multiplier * theta``. With ``ramp_multiplier = 1.5`` the
    last threshold is about ``q``.

    Warning: the final sparsity is not controlled directly (weights move during training);
    measure it with :meth:`Pruner.report`.
    """

    kind = "threshold"

    def __init__(self, start: int, ramp: int, end: int, frequency: int = 100,
                 ramp_multiplier: float = 1.5, warn: bool = True) -> None:
        _check_narang(start, ramp, end, frequency)
        check_real("ramp_multiplier", ramp_multiplier, low=0.0, low_open=True)
        self.start, self.ramp, self.end, self.frequency = start, ramp, end, frequency
        self.ramp_multiplier = float(ramp_multiplier)
        self.theta = narang_theta(1.0, start, ramp, end, frequency)
        self.phi = self.ramp_multiplier * self.theta
        if warn:
            warnings.warn("Narang's gradual threshold does not control the final sparsity "
                          "directly; check the reached sparsity with Pruner.report()",
                          UserWarning, stacklevel=2)

    def update_steps(self) -> list[int]:
        return list(range(self.start + self.frequency, self.end, self.frequency))

    def threshold_fraction(self, step: int) -> float:
        """Threshold / q at the latest update point ``<= step`` (0 before the first)."""
        point = self.last_update_step(step)
        if point is None:
            return 0.0
        return narang_threshold(point, self.theta, self.phi, self.start, self.ramp,
                                self.frequency)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "narang", "start": self.start, "ramp": self.ramp, "end": self.end,
                "frequency": self.frequency, "ramp_multiplier": self.ramp_multiplier}


def schedule_from_dict(d: dict[str, Any] | None) -> Schedule | None:
    """Rebuild a schedule from :meth:`Schedule.to_dict` (None stays None)."""
    if d is None:
        return None
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"a schedule dict needs a 'type', got {d!r}")
    kwargs = {k: v for k, v in d.items() if k != "type"}
    classes = {"iterative": IterativeSchedule, "agp": AGPSchedule, "narang": NarangSchedule}
    if d["type"] not in classes:
        raise ValueError(f"unknown schedule type {d['type']!r}; expected one of {list(classes)}")
    if d["type"] == "narang":
        kwargs["warn"] = False
    try:
        return classes[d["type"]](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad {d['type']} schedule {d!r}: {e}") from None
