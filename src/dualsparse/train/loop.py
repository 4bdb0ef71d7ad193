"""The :class:`Trainer`: a small, readable loop with clipping, checkpoints and logs.

One :class:`Trainer` step::

    batch = task.next_batch()                       # the task owns data order and carried state
    loss, stats = task.training_loss(model, batch)  # + pruner.penalty() if there is a pruner
    lr = base_lr * group_multiplier * schedule(step) * task.lr_scale(batch)
    backward; clip_grad_norm_(clip); optimizer.step(); pruner.step(step)

The task implements :class:`dualsparse.train.task.Task`; optimiser groups and schedules are in
:mod:`dualsparse.train.optim`, ``metrics.csv`` in :mod:`dualsparse.train.metrics_log`.

Checkpoints (:mod:`dualsparse.train.checkpoint`; ``latest`` every ``save_interval`` steps and
at every evaluation, ``best`` on the lowest validation ``select_by`` metric) hold the model,
optimiser, RNG states, task state (iterator position, carried hidden state), pruner state and
the full config; ``resume`` continues bitwise-identically on CPU with ``deterministic=True``.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from dualsparse.train import checkpoint as ckpt
from dualsparse.train.config import TrainConfig
from dualsparse.train.distributed import DistInfo, broadcast_flag
from dualsparse.train.metrics_log import MetricsLog
from dualsparse.train.metrics_log import perplexity as _ppl
from dualsparse.train.optim import build_optimizer, lr_factor
from dualsparse.train.task import Task


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


# ------------------------------------------------------------------------------ trainer
class Trainer:
    """Runs the optimisation of ``model`` on ``task`` (see module docstring).

    Args:
        model: the module to train (unwrapped; wrapped in DDP here when ``dist`` says so).
        task: a :class:`~dualsparse.train.task.Task` (batches, losses, evaluation and its
            own resumable state).
        cfg: :class:`TrainConfig`.
        pruner: optional object with ``attach_optimizer``, ``penalty``, ``step``,
            ``state_dict`` (JSON) and ``load_state_dict``.
        dist: process placement from :func:`~dualsparse.train.distributed.init_distributed`.
        run_config: the full command configuration, stored in every checkpoint.
    """

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, pruner: Any = None,
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
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(model, device_ids=ids)
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
        ckpt.load_model_part(self.model, tensors, meta)
        self.load_optimizer_moments(ckpt.join_state(meta["optimizer"], tensors))
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
        if self.out_dir is not None and Path(directory).resolve() == self.out_dir.resolve():
            ckpt.adopt_checkpoint_files(directory)  # this run's files: replaced as it goes on

    def load_optimizer_moments(self, state: dict[str, Any]) -> None:
        """Load the optimiser's moments from ``state`` (:func:`~dualsparse.train.checkpoint.
        optimizer_state` form); the hyperparameters (lr, weight decay, betas, momentum, lr
        multipliers) stay those of this run's config, as the flags say."""
        settings = [{k: v for k, v in g.items() if k != "params"}
                    for g in self.optimizer.param_groups]
        ckpt.load_optimizer_state(self.optimizer, state)
        for group, kept in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(kept)

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
        """Validation metrics; saves ``best`` when the ``select_by`` metric improves."""
        result = self.task.evaluate(self.model, "valid")
        key = self.cfg.select_by
        if key not in result:
            raise ValueError(f"select_by={key!r} is not among the task's validation metrics "
                             f"{sorted(result)}")
        value = float(result[key])
        improved = self._best_eligible() and (self.best_val is None or value < self.best_val)
        improved = broadcast_flag(self.dist, improved)
        if improved:
            self.best_val = value
        entry = {"step": self.step, "valid_loss": result["loss"],
                 "valid_ppl": _ppl(result["loss"])}
        if key != "loss":
            entry[f"valid_{key}"] = value
        self.history.append(entry)
        if improved:
            self.save("best")
        return {**result, "improved": improved}

    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps`` (or ``stop_at``); returns a summary dict."""
        cfg = self.cfg
        extra = tuple(getattr(self.task, "metric_fields", ()))
        log = MetricsLog(self.out_dir, cfg.tensorboard, self.step if self.step > 0 else None,
                         extra) if self.out_dir else None
        stop = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
        bar = None
        if cfg.progress and self.dist.is_main and self.step < stop:
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
                        log.write({**{k: res.get(k) for k in extra},
                                   "step": self.step, "epoch": last.get("epoch"),
                                   "split": "valid", "loss": res["loss"],
                                   "ppl": _ppl(res["loss"]), "activity": res.get("activity"),
                                   "elapsed_s": time.perf_counter() - t0})
                    if bar is not None:
                        bar.write(f"step {self.step}: valid loss {res['loss']:.4f} "
                                  + self._eval_text(res)
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
        summary = {"step": self.step, "finished": self.step >= cfg.max_steps}
        if cfg.select_by == "loss":
            summary.update(best_valid_loss=self.best_val, best_valid_ppl=None
                           if self.best_val is None else _ppl(self.best_val))
        else:
            summary[f"best_valid_{cfg.select_by}"] = self.best_val
        return {**summary, "last_train_loss": last.get("loss"), "history": self.history,
                "train_seconds": time.perf_counter() - t0}

    def _eval_text(self, res: dict[str, Any]) -> str:
        key = self.cfg.select_by
        if key == "loss":
            return f"ppl {_ppl(res['loss']):.2f}"
        return f"{key} {float(res[key]):.4f}"


__all__ = ["TrainConfig", "Trainer", "set_seed"]
