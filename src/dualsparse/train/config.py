"""Settings of the :class:`~dualsparse.train.loop.Trainer`: :class:`TrainConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dualsparse.validation import check_choice, check_int, check_real

SCHEDULES = ("constant", "cosine", "step")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings (steps are optimiser steps).

    Attributes:
        max_steps: length of training (the schedule's horizon).
        lr: base learning rate.
        optimizer: ``"adamw"`` or ``"sgd"``.
        beta1, beta2, eps: AdamW moments (the EGRU recipe uses ``beta1=0``).
        momentum: SGD momentum.
        wdecay, wdecay_bias, wdecay_thr: weight decay of the weight / bias / threshold groups.
        lr_bias, lr_thr: learning-rate multipliers of the bias / threshold groups.
        clip: global gradient-norm clip (0 disables).
        schedule: ``"constant"``, ``"cosine"`` (from ``cosine_start`` to ``max_steps``, down to
            ``min_lr_ratio * lr``) or ``"step"`` (times ``gamma`` at each step in ``when``).
        warmup_steps: linear warm-up from 0.
        scale_lr_by_seq_len: multiply the LR by the task's ``lr_scale(batch)`` (``T / bptt``
            for random-length BPTT).
        eval_interval, log_interval, save_interval: in steps (0 disables periodic saving;
            ``latest`` is still written at every evaluation and at the end).
        stop_at: stop (with a ``latest`` checkpoint) once this step is reached, without
            changing the schedule: an interruption that ``resume`` continues from.
        seed, deterministic: RNG seed; ``torch.use_deterministic_algorithms``.
        out_dir: checkpoints, ``metrics.csv``, TensorBoard events; None writes nothing.
        select_by: key of the task's validation result that decides ``best`` (lower is
            better; e.g. ``"loss"``, or ``"error"`` for a classifier).
    """

    max_steps: int
    lr: float = 1e-3
    optimizer: str = "adamw"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    wdecay: float = 0.0
    wdecay_bias: float = 0.0
    wdecay_thr: float = 0.0
    lr_bias: float = 1.0
    lr_thr: float = 1.0
    clip: float = 0.0
    schedule: str = "constant"
    cosine_start: int = 0
    min_lr_ratio: float = 0.0
    when: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    scale_lr_by_seq_len: bool = True
    eval_interval: int = 1000
    log_interval: int = 50
    save_interval: int = 0
    stop_at: int | None = None
    seed: int = 1111
    deterministic: bool = True
    out_dir: str | None = None
    tensorboard: bool = True
    progress: bool = True
    select_by: str = "loss"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.max_steps = check_int("max_steps", self.max_steps, low=1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        for name in ("lr", "wdecay", "wdecay_bias", "wdecay_thr", "lr_bias", "lr_thr", "clip",
                     "eps", "momentum", "min_lr_ratio", "gamma"):
            check_real(name, getattr(self, name), low=0.0)
        for name in ("beta1", "beta2"):
            check_real(name, getattr(self, name), low=0.0, high=1.0, high_open=True)
        for name in ("eval_interval", "log_interval", "save_interval", "warmup_steps",
                     "cosine_start"):
            setattr(self, name, check_int(name, getattr(self, name), low=0))
        self.when = tuple(int(w) for w in self.when)
        if self.stop_at is not None:
            self.stop_at = check_int("stop_at", self.stop_at, low=1)
        if not isinstance(self.select_by, str) or not self.select_by:
            raise ValueError(f"select_by must name a validation metric, got {self.select_by!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["when"] = list(self.when)
        return d


__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig"]
