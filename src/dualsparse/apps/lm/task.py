"""The language-modelling task that the :class:`~dualsparse.train.loop.Trainer` drives.

Training segments (fixed or AWD random-length BPTT), cross-entropy plus optional AR/TAR, the
hidden state carried (detached) across segments, validation perplexity, and its resumable
state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import ActivityMeter
from dualsparse.apps.lm.config import CARRY_MODES, RunConfig
from dualsparse.apps.lm.evaluate import carry_state, evaluate_lm
from dualsparse.data.batching import FixedBPTT, RandomBPTT, Segment, batchify
from dualsparse.models import regularizers
from dualsparse.validation import check_choice, check_int, check_real


def _layer_activity(seqs: Any) -> float:
    """Fraction of nonzero outputs over all layers' units and time steps."""
    nonzero = sum(float((s.output != 0).sum()) for s in seqs.layers)
    total = sum(s.output.numel() for s in seqs.layers)
    return nonzero / max(total, 1)


class LMTask:
    """Training data order and losses for a language model (see the module docstring).

    Args:
        train, valid, test: ``(N,)`` token streams.
        batch_size: sequences per process; bptt: (mean) segment length in tokens.
        random_bptt: AWD random segment lengths (LR scaled by ``T / bptt``) instead of fixed.
        seed: seeds the per-epoch segment lengths (same on every rank).
        eval_batch_size / test_batch_size: for validation / test (the papers test at 1).
        eval_bptt: segment length for validation/test (default ``bptt``); with
            ``carry="full"`` it changes only the speed (fewer, longer segments), not the result.
        alpha, beta: AR (on the dropped last output) and TAR (on its time differences).
        activity_penalty, activity_target: EGRU event-rate penalty (see
            :func:`~dualsparse.models.regularizers.activity_penalty`); 0 turns it off.
        carry: ``"full"`` or ``"output"`` (see :func:`carry_state`).
        rank, world_size: this process's block of batch columns under DDP.
    """

    def __init__(self, train: torch.Tensor, valid: torch.Tensor, test: torch.Tensor, *,
                 batch_size: int, bptt: int, random_bptt: bool = False, seed: int = 1111,
                 eval_batch_size: int = 10, test_batch_size: int = 1, alpha: float = 0.0,
                 beta: float = 0.0, activity_penalty: float = 0.0, activity_target: float = 0.0,
                 carry: str = "full", rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", eval_bptt: int | None = None) -> None:
        check_choice("carry", carry, CARRY_MODES)
        alpha, beta = check_real("alpha", alpha, low=0.0), check_real("beta", beta, low=0.0)
        self.activity_penalty = check_real("activity_penalty", activity_penalty, low=0.0)
        self.activity_target = check_real("activity_target", activity_target, low=0.0,
                                          high=1.0, high_open=True)
        eval_bptt = bptt if eval_bptt is None else eval_bptt
        for name, v in (("batch_size", batch_size), ("bptt", bptt), ("eval_bptt", eval_bptt),
                        ("eval_batch_size", eval_batch_size),
                        ("test_batch_size", test_batch_size)):
            check_int(name, v, low=1)
        full = batchify(train, batch_size * world_size)
        if full.size(0) < 2:
            raise ValueError(f"{train.numel()} training tokens are too few for "
                             f"{batch_size * world_size} columns")
        for split, data, flag, size, size_flag in (
                ("validation", valid, "--valid-tokens", eval_batch_size, "--eval-batch-size"),
                ("test", test, "--test-tokens", test_batch_size, "--test-batch-size")):
            if data.numel() < 2 * size:  # checked now, not after the training
                raise ValueError(f"the {split} split has {data.numel()} tokens, too few for "
                                 f"{size_flag} {size} (need >= {2 * size}; see {flag})")
        cols = slice(rank * batch_size, (rank + 1) * batch_size)
        self.source = full[:, cols].contiguous().to(device)
        self.valid, self.test = valid, test
        self.batch_size, self.bptt, self.random_bptt = batch_size, bptt, random_bptt
        self.eval_bptt = eval_bptt
        self.seed, self.alpha, self.beta, self.carry = seed, alpha, beta, carry
        self.world_size = world_size
        self.eval_batch_size, self.test_batch_size = eval_batch_size, test_batch_size
        self.epoch = 0
        self.iterator = self._make_iterator(0)
        self.state: tuple | None = None

    @classmethod
    def from_config(cls, run: RunConfig, train: torch.Tensor, valid: torch.Tensor,
                    test: torch.Tensor, *, rank: int = 0, world_size: int = 1,
                    device: torch.device | str = "cpu") -> LMTask:
        """The task of a run's data-order settings (this process's columns under DDP)."""
        return cls(train, valid, test, batch_size=run.batch_size, bptt=run.bptt,
                   random_bptt=run.random_bptt, seed=run.seed,
                   eval_batch_size=run.eval_batch_size, test_batch_size=run.test_batch_size,
                   alpha=run.alpha, beta=run.beta, activity_penalty=run.activity_penalty,
                   activity_target=run.activity_target, carry=run.carry, rank=rank,
                   world_size=world_size, device=device, eval_bptt=run.eval_bptt)

    def _make_iterator(self, epoch: int) -> FixedBPTT | RandomBPTT:
        if self.random_bptt:
            return RandomBPTT(self.source, self.bptt, seed=self.seed * 100003 + epoch)
        return FixedBPTT(self.source, self.bptt)

    @property
    def steps_per_epoch(self) -> int:
        """Segments in one epoch (epoch 0's count for random BPTT)."""
        return len(self._make_iterator(0))

    def next_batch(self) -> Segment:
        """The next training segment; starts a new epoch (and a zero state) when needed."""
        try:
            return next(self.iterator)
        except StopIteration:
            self.epoch += 1
            self.iterator = self._make_iterator(self.epoch)
            self.state = None
            return next(self.iterator)

    def lr_scale(self, batch: Segment) -> float:
        """``T / bptt`` for random-length segments, 1 for fixed ones."""
        return batch.lr_scale if self.random_bptt else 1.0

    def training_loss(self, model: nn.Module, batch: Segment
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Cross-entropy (+ AR/TAR, activity penalty) on one segment; carries the state on."""
        logits, state, seqs = model(batch.input, self.state, return_sequences=True)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.target.reshape(-1))
        loss = ce
        if self.alpha:
            loss = loss + self.alpha * seqs.decoder_input.pow(2).mean()
        if self.beta:
            out = seqs.layers[-1].output
            loss = loss + self.beta * (out[1:] - out[:-1]).pow(2).mean()
        if self.activity_penalty:
            events = [s.events for s in seqs.layers]
            if any(e is None for e in events):
                raise ValueError("the activity penalty needs an EGRU model (no events here)")
            loss = loss + regularizers.activity_penalty(events, self.activity_penalty,
                                                        self.activity_target)
        self.state = carry_state(state, self.carry)
        return loss, {"loss": float(ce.detach()), "activity": _layer_activity(seqs),
                      "tokens": batch.target.numel(), "epoch": self.epoch}

    def evaluate(self, model: nn.Module, split: str = "valid",
                 meter: ActivityMeter | None = None) -> dict[str, float]:
        """Validation (``eval_batch_size``) or test (``test_batch_size``) metrics."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        data = self.valid if split == "valid" else self.test
        bs = self.eval_batch_size if split == "valid" else self.test_batch_size
        return evaluate_lm(model, data, bs, self.eval_bptt, self.carry, meter)

    def _settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "bptt": self.bptt,
                "random_bptt": self.random_bptt, "seed": self.seed, "carry": self.carry,
                "world_size": self.world_size}

    def state_dict(self) -> dict[str, Any]:
        """Epoch, iterator position, carried hidden state, and the settings they depend on."""
        return {"epoch": self.epoch, "iterator": self.iterator.state_dict(),
                "hidden": None if self.state is None else [list(s) for s in self.state],
                "settings": self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; ``ValueError`` if the data settings differ from the saved ones."""
        saved = {"world_size": 1, **state.get("settings", {})}  # older checkpoints: 1 process
        diff = {k: (saved.get(k), v) for k, v in self._settings().items() if saved.get(k) != v}
        if diff:
            raise ValueError("cannot resume: data settings differ (saved, now): "
                             + ", ".join(f"{k}={a!r}->{b!r}" for k, (a, b) in diff.items()))
        self.epoch = int(state["epoch"])
        self.iterator = self._make_iterator(self.epoch)
        self.iterator.load_state_dict(state["iterator"])
        hidden = state["hidden"]
        if hidden is None:
            self.state = None
            return
        device = self.source.device
        self.state = tuple(tuple(t.to(device) for t in s) for s in hidden)
        if any(t.size(0) != self.batch_size for s in self.state for t in s):
            raise ValueError("saved hidden state has a different batch size than this run")



__all__ = ["LMTask", "carry_state"]
