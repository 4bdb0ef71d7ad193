"""The ``toy`` run function: a real, tiny experiment that runs in about a second.

A token stream is drawn from a fixed random first-order Markov chain (``vocab`` states,
``branch`` successors each). An embedding -> EGRU/LSTM/GRU -> linear model is trained on it
by the common :class:`~dualsparse.train.loop.Trainer` (:class:`ToyTask`; AdamW with separate
weight decay for weights and biases, none on EGRU thresholds). With ``prune_method``
``"magnitude"`` its ``W_ih``/``W_hh`` are pruned by a :class:`~dualsparse.sparsity.Pruner` to
``prune_target`` in ``prune_steps`` geometric rounds spread over the first two thirds of
training. Test perplexity and the accounting report are measured on a separate sampled stream.

The run folder holds the Trainer's checkpoints (``latest``, ``best``: safetensors + JSON,
see :mod:`dualsparse.train.checkpoint`) and ``metrics.csv``; a run that finds a ``latest``
checkpoint there (its worker was killed) resumes from it and ends bitwise where an
uninterrupted run would.

Config keys and defaults: ``model`` (EGRU), ``vocab`` 16, ``branch`` 3, ``emsize`` 16,
``nhid`` 32 (int or per-layer list), ``steps`` 60, ``batch_size`` 16, ``bptt`` 20, ``lr``
0.01, ``wdecay`` 0, ``wdecay_bias`` 0, ``prune_method`` ("magnitude" or None), ``prune_target``
0, ``prune_steps`` 1, ``thr_mean`` 0.3, ``seed`` 0, ``data_seed`` 1234, ``train_tokens``
20000, ``test_tokens`` 2000 (also the validation stream's length), ``save_interval`` 20 and
``log_interval`` 10 (optimiser steps).
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import ActivityMeter
from dualsparse.experiments.metrics import summarize
from dualsparse.models import EGRU, GRU, LSTM
from dualsparse.sparsity import IterativeSchedule, Pruner
from dualsparse.train.config import TrainConfig
from dualsparse.train.loop import Trainer, set_seed
from dualsparse.validation import check_choice, check_int, check_real

TOY_DEFAULTS: dict[str, Any] = {
    "model": "EGRU", "vocab": 16, "branch": 3, "emsize": 16, "nhid": 32, "steps": 60,
    "batch_size": 16, "bptt": 20, "lr": 0.01, "wdecay": 0.0, "wdecay_bias": 0.0,
    "prune_method": "magnitude", "prune_target": 0.0, "prune_steps": 1, "thr_mean": 0.3,
    "seed": 0, "data_seed": 1234, "train_tokens": 20000, "test_tokens": 2000,
    "save_interval": 20, "log_interval": 10,
}
PRUNED_TENSORS = ("rnn.weight_ih_l*", "rnn.weight_hh_l*")


def markov_stream(vocab: int, branch: int, tokens: int, seed: int, start_seed: int = 0
                  ) -> torch.Tensor:
    """``(tokens,)`` long ids from a random first-order Markov chain fixed by ``seed``.

    Each state moves to ``branch`` fixed successors with fixed random probabilities;
    ``start_seed`` changes only the sampled path (train, valid and test use different ones).
    """
    if not 1 <= branch <= vocab:
        raise ValueError(f"branch must be in [1, vocab={vocab}], got {branch}")
    rng = np.random.default_rng(seed)
    succ = [rng.choice(vocab, branch, replace=False).tolist() for _ in range(vocab)]
    cum = [c.tolist() for c in rng.dirichlet(np.ones(branch), size=vocab).cumsum(1)]
    path = np.random.default_rng([seed, start_seed])
    state = int(path.integers(vocab))
    out = np.empty(tokens, dtype=np.int64)
    for t, u in enumerate(path.random(tokens).tolist()):
        state = succ[state][min(bisect.bisect_left(cum[state], u), branch - 1)]
        out[t] = state
    return torch.from_numpy(out)


class ToyLM(nn.Module):
    """Embedding -> recurrent stack -> linear decoder; ``forward(x (T,B)) -> logits (T,B,V)``."""

    def __init__(self, model: str, vocab: int, emsize: int, nhid: list[int],
                 thr_mean: float) -> None:
        super().__init__()
        self._config = {"model": model, "vocab": vocab, "emsize": emsize, "nhid": list(nhid),
                        "thr_mean": thr_mean}
        self.embedding = nn.Embedding(vocab, emsize)
        kind = model.upper()
        if kind == "EGRU":
            self.rnn = EGRU(emsize, nhid, threshold_mean=thr_mean)
        elif kind in ("LSTM", "GRU"):
            self.rnn = (LSTM if kind == "LSTM" else GRU)(emsize, nhid)
        else:
            raise ValueError(f"model must be EGRU, LSTM or GRU, got {model!r}")
        self.decoder = nn.Linear(nhid[-1], vocab)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (stored in checkpoints; a resume checks them)."""
        return dict(self._config)

    def forward(self, tokens: torch.Tensor, sequences: bool = False):
        x = self.embedding(tokens)
        out, _, seqs = self.rnn(x, None, return_sequences=True)
        logits = self.decoder(out)
        return (logits, x, out, seqs) if sequences else logits


def _batches(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    n = stream.numel() // batch_size
    return stream[: n * batch_size].view(batch_size, n).t().contiguous()  # (N, B)


def stream_nll(model: ToyLM, stream: torch.Tensor) -> float:
    """Mean next-token cross-entropy of ``model`` over one ``(tokens,)`` stream (batch 1)."""
    model.eval()
    with torch.no_grad():
        tokens = stream.view(-1, 1)
        logits = model(tokens[:-1])
        return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                     tokens[1:].reshape(-1)))


class ToyTask:
    """The toy language-modelling :class:`~dualsparse.train.task.Task`: fixed ``bptt``
    segments of a ``(N, B)`` batched stream in order, wrapping around at its end."""

    def __init__(self, train: torch.Tensor, valid: torch.Tensor, bptt: int) -> None:
        self.train, self.valid = train, valid
        self.bptt = check_int("bptt", bptt, low=1)
        if self.steps_per_epoch < 1:
            raise ValueError(f"train_tokens give {train.size(0)} rows per column, too few for "
                             f"bptt={bptt}")
        self.pos, self.epoch = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return (self.train.size(0) - 1) // self.bptt

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, target)``, each ``(bptt, B)``."""
        if self.pos + self.bptt + 1 > self.train.size(0):
            self.pos, self.epoch = 0, self.epoch + 1
        x = self.train[self.pos:self.pos + self.bptt]
        y = self.train[self.pos + 1:self.pos + self.bptt + 1]
        self.pos += self.bptt
        return x, y

    def lr_scale(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        return 1.0

    def training_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        return loss, {"tokens": y.numel(), "epoch": self.epoch}

    def evaluate(self, model: nn.Module, split: str = "valid") -> dict[str, float]:
        check_choice("split", split, ("valid",))
        nll = stream_nll(model, self.valid)
        return {"loss": nll, "ppl": math.exp(min(nll, 50.0))}

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "epoch": self.epoch,
                "settings": {"bptt": self.bptt, "shape": list(self.train.shape)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"bptt": self.bptt, "shape": list(self.train.shape)}
        if state.get("settings") != mine:
            raise ValueError(f"cannot resume: toy data settings differ (saved "
                             f"{state.get('settings')}, now {mine})")
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])


def _config(config: dict[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(TOY_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown toy config keys {sorted(unknown)}; known: "
                         f"{sorted(TOY_DEFAULTS)}")
    c = {**TOY_DEFAULTS, **config}
    check_real("prune_target", c["prune_target"], low=0.0, high=1.0, high_open=True)
    check_int("prune_steps", c["prune_steps"], low=1)
    check_choice("prune_method", c["prune_method"], ("magnitude", None, "none"))
    for key in ("steps", "batch_size", "vocab", "emsize", "train_tokens", "test_tokens"):
        check_int(key, c[key], low=1)
    for key in ("save_interval", "log_interval"):
        check_int(key, c[key], low=0)
    return c


def make_pruner(model: ToyLM, target: float, rounds: int, steps: int) -> Pruner:
    """Magnitude pruning of ``W_ih``/``W_hh`` to ``target`` in ``rounds`` geometric rounds,
    the last one after two thirds of the ``steps`` optimiser steps."""
    end = max(1, (2 * steps) // 3)
    if rounds > end:
        raise ValueError(f"prune_steps={rounds} rounds need at least as many optimiser steps "
                         f"in the first two thirds of training (steps={steps} gives {end})")
    start = max(1, round(end / rounds))
    spec = {"tensors": list(PRUNED_TENSORS), "sparsity": target, "block": [1, 1]}
    return Pruner(model, spec, IterativeSchedule(rounds, start - 1, end - 1))


def run_toy(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train (or resume) and measure the toy model ``config`` describes (module docstring)."""
    c = _config(config)
    nhid = [c["nhid"]] if isinstance(c["nhid"], int) else list(c["nhid"])
    target, steps = float(c["prune_target"]), int(c["steps"])
    set_seed(int(c["seed"]), deterministic=False)
    train = _batches(markov_stream(c["vocab"], c["branch"], c["train_tokens"], c["data_seed"], 1),
                     c["batch_size"])
    valid = markov_stream(c["vocab"], c["branch"], c["test_tokens"], c["data_seed"], 3)
    test = markov_stream(c["vocab"], c["branch"], c["test_tokens"], c["data_seed"], 2)
    model = ToyLM(c["model"], c["vocab"], c["emsize"], nhid, c["thr_mean"])
    pruner = (make_pruner(model, target, int(c["prune_steps"]), steps)
              if target > 0 and c["prune_method"] == "magnitude" else None)
    run_dir = Path(run_dir)
    cfg = TrainConfig(max_steps=steps, lr=c["lr"], wdecay=c["wdecay"],
                      wdecay_bias=c["wdecay_bias"], scale_lr_by_seq_len=False, eval_interval=0,
                      log_interval=c["log_interval"], save_interval=c["save_interval"],
                      seed=int(c["seed"]), deterministic=False, out_dir=str(run_dir),
                      tensorboard=False, progress=False)
    trainer = Trainer(model, ToyTask(train, valid, c["bptt"]), cfg, pruner=pruner,
                      run_config=c)
    if (run_dir / "latest.json").is_file():
        trainer.resume(run_dir)
    summary = trainer.fit()
    meter = ActivityMeter(model.rnn, decoder=model.decoder)
    model.eval()
    with torch.no_grad():
        tokens = test.view(-1, 1)
        logits, x, out, seqs = model(tokens[:-1], sequences=True)
        nll = float(F.cross_entropy(logits.reshape(-1, c["vocab"]), tokens[1:].reshape(-1)))
        meter.update(x, seqs)
        meter.update_decoder(out)
    return summarize(meter.report().to_dict(), test_ppl=math.exp(nll),
                     val_ppl=summary["best_valid_ppl"], checkpoint=str(run_dir / "latest.json"),
                     train_loss=summary["last_train_loss"])


__all__ = ["TOY_DEFAULTS", "ToyLM", "ToyTask", "make_pruner", "markov_stream", "run_toy",
           "stream_nll"]
