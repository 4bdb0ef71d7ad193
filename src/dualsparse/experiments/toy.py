"""The ``toy`` run function: a real, tiny experiment that runs in about a second.

A token stream is drawn from a fixed random first-order Markov chain (``vocab`` states,
``branch`` successors each). An embedding -> EGRU/LSTM/GRU -> linear model is trained on it
with AdamW (separate weight decay for weights and for biases; none on EGRU thresholds). Its
``W_ih``/``W_hh`` are magnitude-pruned to ``prune_target`` in ``prune_steps`` rounds during
the first two thirds of training (geometric rounds, masks re-applied after every step).
Test perplexity and the accounting report are measured on a separate sampled stream.

Config keys and defaults: ``model`` (EGRU), ``vocab`` 16, ``branch`` 3, ``emsize`` 16,
``nhid`` 32 (int or per-layer list), ``steps`` 60, ``batch_size`` 16, ``bptt`` 20, ``lr``
0.01, ``wdecay`` 0, ``wdecay_bias`` 0, ``prune_method`` ("magnitude" or None), ``prune_target``
0, ``prune_steps`` 1, ``thr_mean`` 0.3, ``seed`` 0, ``data_seed`` 1234, ``train_tokens``
20000, ``test_tokens`` 2000.
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
from dualsparse.atomic import atomic_write
from dualsparse.experiments.metrics import summarize

TOY_DEFAULTS: dict[str, Any] = {
    "model": "EGRU", "vocab": 16, "branch": 3, "emsize": 16, "nhid": 32, "steps": 60,
    "batch_size": 16, "bptt": 20, "lr": 0.01, "wdecay": 0.0, "wdecay_bias": 0.0,
    "prune_method": "magnitude", "prune_target": 0.0, "prune_steps": 1, "thr_mean": 0.3,
    "seed": 0, "data_seed": 1234, "train_tokens": 20000, "test_tokens": 2000,
}


def markov_stream(vocab: int, branch: int, tokens: int, seed: int, start_seed: int = 0
                  ) -> torch.Tensor:
    """``(tokens,)`` long ids from a random first-order Markov chain fixed by ``seed``.

    Each state moves to ``branch`` fixed successors with fixed random probabilities;
    ``start_seed`` changes only the sampled path (train and test use different ones).
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
        from dualsparse.models import EGRU, GRU, LSTM
        self.embedding = nn.Embedding(vocab, emsize)
        kind = model.upper()
        if kind == "EGRU":
            self.rnn = EGRU(emsize, nhid, threshold_mean=thr_mean)
        elif kind in ("LSTM", "GRU"):
            self.rnn = (LSTM if kind == "LSTM" else GRU)(emsize, nhid)
        else:
            raise ValueError(f"model must be EGRU, LSTM or GRU, got {model!r}")
        self.decoder = nn.Linear(nhid[-1], vocab)

    def forward(self, tokens: torch.Tensor, sequences: bool = False):
        x = self.embedding(tokens)
        out, _, seqs = self.rnn(x, None, return_sequences=True)
        logits = self.decoder(out)
        return (logits, x, out, seqs) if sequences else logits


def _prunable(model: ToyLM) -> list[torch.nn.Parameter]:
    return [p for n, p in model.rnn.named_parameters() if n.startswith("weight_")]


def _magnitude_masks(params: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    masks = []
    for p in params:
        k = int(round(sparsity * p.numel()))
        mask = torch.ones_like(p, dtype=torch.bool)
        if k > 0:
            idx = p.detach().abs().reshape(-1).argsort()[:k]
            mask.view(-1)[idx] = False
        masks.append(mask)
    return masks


def _batches(stream: torch.Tensor, batch_size: int, bptt: int) -> torch.Tensor:
    n = stream.numel() // batch_size
    return stream[: n * batch_size].view(batch_size, n).t().contiguous()  # (N, B)


def run_toy(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train and measure the toy model ``config`` describes (see module docstring)."""
    unknown = set(config) - set(TOY_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown toy config keys {sorted(unknown)}; known: "
                         f"{sorted(TOY_DEFAULTS)}")
    c = {**TOY_DEFAULTS, **config}
    nhid = [c["nhid"]] if isinstance(c["nhid"], int) else list(c["nhid"])
    target, rounds = float(c["prune_target"]), int(c["prune_steps"])
    if not 0.0 <= target < 1.0:
        raise ValueError(f"prune_target must lie in [0, 1), got {target}")
    if rounds < 1:
        raise ValueError(f"prune_steps must be >= 1, got {rounds}")
    if c["prune_method"] not in ("magnitude", None, "none"):
        raise ValueError(f"toy runs prune by 'magnitude' (or None), got {c['prune_method']!r}")
    prune = target > 0 and c["prune_method"] == "magnitude"
    torch.manual_seed(int(c["seed"]))
    train = _batches(markov_stream(c["vocab"], c["branch"], c["train_tokens"], c["data_seed"], 1),
                     c["batch_size"], c["bptt"])
    test = markov_stream(c["vocab"], c["branch"], c["test_tokens"], c["data_seed"], 2)
    model = ToyLM(c["model"], c["vocab"], c["emsize"], nhid, c["thr_mean"])
    groups: dict[str, list[nn.Parameter]] = {"weight": [], "bias": [], "other": []}
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        groups["weight" if leaf.startswith("weight") else
               "bias" if leaf.startswith("bias") else "other"].append(p)
    opt = torch.optim.AdamW([{"params": groups["weight"], "weight_decay": c["wdecay"]},
                             {"params": groups["bias"], "weight_decay": c["wdecay_bias"]},
                             {"params": groups["other"], "weight_decay": 0.0}], lr=c["lr"])
    steps, bptt = int(c["steps"]), int(c["bptt"])
    prune_end = max(1, (2 * steps) // 3)
    schedule = {max(1, round(i * prune_end / rounds)): 1 - (1 - target) ** (i / rounds)
                for i in range(1, rounds + 1)} if prune else {}
    params, masks = _prunable(model), None
    pos = 0
    for step in range(1, steps + 1):
        if pos + bptt + 1 > train.size(0):
            pos = 0
        x, y = train[pos:pos + bptt], train[pos + 1:pos + bptt + 1]
        pos += bptt
        loss = F.cross_entropy(model(x).reshape(-1, c["vocab"]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in schedule:
            masks = _magnitude_masks(params, schedule[step])
        if masks is not None:
            with torch.no_grad():
                for p, m in zip(params, masks, strict=True):
                    p.mul_(m)
    model.eval()
    meter = ActivityMeter(model.rnn, decoder=model.decoder)
    with torch.no_grad():
        tokens = test.view(-1, 1)
        logits, x, out, seqs = model(tokens[:-1], sequences=True)
        nll = float(F.cross_entropy(logits.reshape(-1, c["vocab"]), tokens[1:].reshape(-1)))
        meter.update(x, seqs)
        meter.update_decoder(out)
    run_dir = Path(run_dir)
    ckpt = run_dir / "model.safetensors"
    from safetensors.torch import save as st_save
    blob = st_save({k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_write(ckpt, lambda f: f.write(blob))
    return summarize(meter.report().to_dict(), test_ppl=math.exp(nll), checkpoint=str(ckpt),
                     train_loss=float(loss.detach()))


__all__ = ["TOY_DEFAULTS", "ToyLM", "markov_stream", "run_toy"]
