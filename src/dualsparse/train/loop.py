"""A small, readable training loop: optimiser groups, schedules, clipping, checkpoints, logs.

One :class:`Trainer` step::

    batch = task.next_batch()                       # the task owns data order and carried state
    loss, stats = task.training_loss(model, batch)  # + pruner.penalty() if there is a pruner
    lr = base_lr * group_multiplier * schedule(step) * task.lr_scale(batch)
    backward; clip_grad_norm_(clip); optimizer.step(); pruner.step(step)

Parameter groups (:func:`parameter_groups`): ``weights`` (``weight_*`` and the embedding),
``biases`` (``bias_*``) and ``thresholds`` (``threshold_raw_*``, EGRU), each with its own
weight decay and learning-rate multiplier; the EGRU recipes tune activity through these.

The task is duck-typed (see :class:`dualsparse.train.lm_task.LMTask`): ``next_batch()``,
``training_loss(model, batch) -> (loss, {name: float})``, ``lr_scale(batch)``,
``evaluate(model, split) -> {"loss": ..., ...}``, ``state_dict()`` / ``load_state_dict()``.

Checkpoints (``latest`` every ``save_interval`` steps and at every evaluation, ``best`` on
the lowest validation loss) hold the model, optimiser, RNG states, task state (iterator
position, carried hidden state), pruner state and the full config; ``resume=True`` continues
bitwise-identically on CPU with ``deterministic=True``.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dualsparse.train import checkpoint as ckpt
from dualsparse.train.distributed import DistInfo, broadcast_flag

SCHEDULES = ("constant", "cosine", "step")
OPTIMIZERS = ("adamw", "sgd")
CSV_FIELDS = ("step", "epoch", "split", "loss", "ppl", "lr", "activity", "grad_norm",
              "tokens_per_s", "elapsed_s")


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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected {SCHEDULES}")
        for name in ("lr", "wdecay", "wdecay_bias", "wdecay_thr", "lr_bias", "lr_thr", "clip",
                     "eps", "momentum", "min_lr_ratio", "gamma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        for name in ("eval_interval", "log_interval", "save_interval", "warmup_steps",
                     "cosine_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.when = tuple(int(w) for w in self.when)
        if self.stop_at is not None and self.stop_at < 1:
            raise ValueError(f"stop_at must be >= 1, got {self.stop_at}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["when"] = list(self.when)
        return d


# ------------------------------------------------------------------------------ helpers
def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seed the global state others use)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def parameter_kind(name: str) -> str:
    """``"thresholds"``, ``"biases"`` or ``"weights"`` from a parameter name."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf.startswith("threshold"):
        return "thresholds"
    if leaf.startswith("bias"):
        return "biases"
    return "weights"


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Optimiser groups ``weights`` / ``biases`` / ``thresholds`` (empty ones left out).

    Each group carries ``name``, ``lr_mult`` and ``weight_decay``; a shared (tied) parameter
    appears once.
    """
    settings = {"weights": (1.0, cfg.wdecay), "biases": (cfg.lr_bias, cfg.wdecay_bias),
                "thresholds": (cfg.lr_thr, cfg.wdecay_thr)}
    members: dict[str, list[nn.Parameter]] = {k: [] for k in settings}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        members[parameter_kind(name)].append(p)
    groups = []
    for kind, params in members.items():
        if params:
            mult, wd = settings[kind]
            groups.append({"params": params, "name": kind, "lr_mult": mult, "weight_decay": wd,
                           "lr": cfg.lr * mult})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (``betas=(beta1, beta2)``) or SGD over :func:`parameter_groups`."""
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Schedule multiplier for the update made at 0-based ``step``."""
    f = 1.0
    if cfg.warmup_steps and step < cfg.warmup_steps:
        f = (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine" and step >= cfg.cosine_start:
        span = max(1, cfg.max_steps - cfg.cosine_start)
        progress = min(1.0, (step - cfg.cosine_start) / span)
        f *= cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "step":
        f *= cfg.gamma ** sum(step >= w for w in cfg.when)
    return f


class MetricsLog:
    """``metrics.csv`` (one row per log/eval event) and optional TensorBoard scalars."""

    def __init__(self, out_dir: Path | None, tensorboard: bool, resume_step: int | None) -> None:
        self.path = None if out_dir is None else out_dir / "metrics.csv"
        self.writer = None
        if self.path is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out_dir / "tensorboard"),
                                        purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` by a run that was killed (they will be redone)."""
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        lines = [",".join(CSV_FIELDS)] + [",".join(r.get(k, "") or "" for k in CSV_FIELDS)
                                          for r in rows]
        ckpt.atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode())

    def write(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})
        if self.writer is not None:
            for key in ("loss", "ppl", "lr", "activity", "grad_norm", "tokens_per_s"):
                if row.get(key) is not None:
                    self.writer.add_scalar(f"{row['split']}/{key}", row[key], row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


# ------------------------------------------------------------------------------ trainer
class Trainer:
    """Runs the optimisation of ``model`` on ``task`` (see module docstring).

    Args:
        model: the module to train (unwrapped; wrapped in DDP here when ``dist`` says so).
        task: provides batches, losses, evaluation and its own resumable state.
        cfg: :class:`TrainConfig`.
        pruner: optional object with ``attach_optimizer``, ``penalty``, ``step``,
            ``state_dict`` (JSON) and ``load_state_dict``.
        dist: process placement from :func:`~dualsparse.train.distributed.init_distributed`.
        run_config: the full command configuration, stored in every checkpoint.
    """

    def __init__(self, model: nn.Module, task: Any, cfg: TrainConfig, pruner: Any = None,
                 dist: DistInfo | None = None, run_config: dict[str, Any] | None = None
                 ) -> None:
        self.model, self.task, self.cfg, self.pruner = model, task, cfg, pruner
        self.dist = dist or DistInfo()
        self.run_config = run_config or {}
        self.optimizer = build_optimizer(model, cfg)
        if pruner is not None:
            pruner.attach_optimizer(self.optimizer)
        self.forward_model: nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.forward_model = DDP(model, device_ids=ids)
        self.step = 0
        self.best_val: float | None = None
        self.history: list[dict[str, Any]] = []
        # training losses since the last metrics.csv row (checkpointed, so that a resumed
        # run logs the same mean as an uninterrupted one)
        self.log_window: list[float] = []
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir and self.dist.is_main else None

    # -------------------------------------------------------------- checkpoints
    def state_tensors_and_meta(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to resume, split into tensors and JSON."""
        tensors, aliases = ckpt.model_tensors(self.model)
        tensors = {f"model.{k}": v for k, v in tensors.items()}
        meta = {
            "step": self.step,
            "aliases": {f"model.{k}": f"model.{v}" for k, v in aliases.items()},
            "model_config": getattr(self.model, "get_config", dict)(),
            "train_config": self.cfg.to_dict(),
            "run_config": self.run_config,
            "optimizer": ckpt.split_state(ckpt.optimizer_state(self.optimizer), "optim",
                                          tensors),
            "rng": ckpt.split_state(ckpt.rng_state(), "rng", tensors),
            "task": ckpt.split_state(self.task.state_dict(), "task", tensors),
            "pruner": None if self.pruner is None else self.pruner.state_dict(),
            "best_val": self.best_val,
            "history": self.history,
            "log_window": self.log_window,
            "git_commit": ckpt.git_commit(),
        }
        return tensors, meta

    def save(self, tag: str) -> None:
        """Write checkpoint ``tag`` (rank 0 only; no-op without ``out_dir``)."""
        if self.out_dir is None:
            return
        tensors, meta = self.state_tensors_and_meta()
        ckpt.save_checkpoint(self.out_dir, tag, tensors, meta)

    def resume(self, directory: str | os.PathLike[str], tag: str = "latest") -> None:
        """Restore model, optimiser, RNG, task and pruner state from a checkpoint."""
        tensors, meta = ckpt.load_checkpoint(directory, tag)
        model_cfg = getattr(self.model, "get_config", dict)()
        if meta.get("model_config") != model_cfg:
            diff = sorted(k for k in set(model_cfg) | set(meta.get("model_config") or {})
                          if (meta.get("model_config") or {}).get(k) != model_cfg.get(k))
            raise ckpt.CheckpointError(
                f"checkpoint in {directory} was made for a different model (config keys that "
                f"differ: {diff})")
        model_part = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        aliases = {k[len("model."):]: v[len("model."):] for k, v in meta["aliases"].items()}
        ckpt.load_model_tensors(self.model, model_part, aliases)
        # the moments come from the checkpoint; the hyperparameters (weight decay, betas,
        # momentum, lr multipliers) stay those of this run's config, as the flags say
        settings = [{k: v for k, v in g.items() if k != "params"}
                    for g in self.optimizer.param_groups]
        ckpt.load_optimizer_state(self.optimizer, ckpt.join_state(meta["optimizer"], tensors))
        for group, kept in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(kept)
        self.task.load_state_dict(ckpt.join_state(meta["task"], tensors))
        if self.pruner is not None:
            if meta.get("pruner") is None:
                raise ckpt.CheckpointError("the checkpoint has no pruner state, but a pruner "
                                           "was given")
            self.pruner.load_state_dict(meta["pruner"])
        ckpt.set_rng_state(ckpt.join_state(meta["rng"], tensors))
        self.step = int(meta["step"])
        self.best_val = meta.get("best_val")
        self.history = list(meta.get("history", []))
        self.log_window = [float(v) for v in meta.get("log_window", [])]

    # ------------------------------------------------------------------ training
    def _set_lr(self, scale: float) -> float:
        f = lr_factor(self.step, self.cfg) * scale
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.lr * g["lr_mult"] * f
        return self.cfg.lr * f

    def train_step(self) -> dict[str, Any]:
        """One optimiser step; returns its loss, lr, grad norm and the task's stats."""
        self.model.train()
        batch = self.task.next_batch()
        loss, stats = self.task.training_loss(self.forward_model, batch)
        if self.pruner is not None:
            penalty = self.pruner.penalty()
            if penalty is not None:
                loss = loss + penalty
        if not bool(torch.isfinite(loss)):
            raise RuntimeError(f"training loss is {loss.item()} at step {self.step}; lower the "
                               "learning rate or enable --clip")
        scale = float(self.task.lr_scale(batch)) if self.cfg.scale_lr_by_seq_len else 1.0
        lr = self._set_lr(scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.cfg.clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in params if p.grad is not None])))
        self.optimizer.step()
        if self.pruner is not None:
            self.pruner.step(self.step)
        self.step += 1
        return {"loss": float(stats.get("loss", loss.item())), "lr": lr, "grad_norm": grad_norm,
                **{k: v for k, v in stats.items() if k != "loss"}}

    def _best_eligible(self) -> bool:
        """Only a model whose pruning schedule has finished may become ``best``: before that
        its masks are not final, and a less-pruned early checkpoint would win on validation.
        The last step is always eligible."""
        schedule = getattr(self.pruner, "schedule", None)
        end = getattr(schedule, "end_step", None)
        return end is None or self.step > end or self.step >= self.cfg.max_steps

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics; saves ``best`` when the validation loss improves."""
        result = self.task.evaluate(self.model, "valid")
        improved = self._best_eligible() and (self.best_val is None
                                              or result["loss"] < self.best_val)
        improved = broadcast_flag(self.dist, improved)
        if improved:
            self.best_val = result["loss"]
        entry = {"step": self.step, "valid_loss": result["loss"],
                 "valid_ppl": _ppl(result["loss"])}
        self.history.append(entry)
        if improved:
            self.save("best")
        return {**result, "improved": improved}

    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps`` (or ``stop_at``); returns a summary dict."""
        cfg = self.cfg
        log = MetricsLog(self.out_dir, cfg.tensorboard,
                         self.step if self.step > 0 else None) if self.out_dir else None
        stop = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
        bar = None
        if cfg.progress and self.dist.is_main and self.step < stop:
            from tqdm.auto import tqdm
            bar = tqdm(total=stop, initial=self.step, unit="step", dynamic_ncols=True,
                       disable=None)  # None: no bar when stderr is not a terminal
        t0, tokens = time.perf_counter(), 0
        last = {}
        try:
            while self.step < stop:
                last = self.train_step()
                saved = False
                tokens += int(last.get("tokens", 0))
                self.log_window.append(last["loss"])
                elapsed = time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{last['loss']:.3f}", "ppl": f"{_ppl(last['loss']):.1f}"}
                    if "activity" in last:
                        post["act"] = f"{last['activity']:.3f}"
                    bar.set_postfix(post, refresh=False)
                if self.step % max(cfg.log_interval, 1) == 0 or self.step == stop:
                    if log:
                        mean = sum(self.log_window) / len(self.log_window)
                        log.write({"step": self.step, "epoch": last.get("epoch"),
                                   "split": "train", "loss": mean, "ppl": _ppl(mean),
                                   "lr": last["lr"], "activity": last.get("activity"),
                                   "grad_norm": last["grad_norm"],
                                   "tokens_per_s": tokens / max(elapsed, 1e-9),
                                   "elapsed_s": elapsed})
                    self.log_window = []
                at_eval = cfg.eval_interval and self.step % cfg.eval_interval == 0
                if at_eval or self.step == cfg.max_steps:
                    res = self.evaluate()
                    if log:
                        log.write({"step": self.step, "epoch": last.get("epoch"),
                                   "split": "valid", "loss": res["loss"],
                                   "ppl": _ppl(res["loss"]), "activity": res.get("activity"),
                                   "elapsed_s": time.perf_counter() - t0})
                    if bar is not None:
                        bar.write(f"step {self.step}: valid loss {res['loss']:.4f} "
                                  f"ppl {_ppl(res['loss']):.2f}"
                                  + (" (best)" if res["improved"] else ""))
                    self.save("latest")
                    saved = True
                elif cfg.save_interval and self.step % cfg.save_interval == 0:
                    self.save("latest")
                    saved = True
            if last and not saved:  # stopped by stop_at between saves
                self.save("latest")
        finally:
            if bar is not None:
                bar.close()
            if log:
                log.close()
        return {"step": self.step, "finished": self.step >= cfg.max_steps,
                "best_valid_loss": self.best_val,
                "best_valid_ppl": None if self.best_val is None else _ppl(self.best_val),
                "last_train_loss": last.get("loss"), "history": self.history,
                "train_seconds": time.perf_counter() - t0}


__all__ = ["CSV_FIELDS", "OPTIMIZERS", "SCHEDULES", "MetricsLog", "TrainConfig", "Trainer",
           "build_optimizer", "lr_factor", "parameter_groups", "parameter_kind", "set_seed"]
