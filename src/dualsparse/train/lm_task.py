"""Word-level language modelling on PTB / WikiText-2: data order, losses, evaluation, runs.

* :class:`LMTask` is what the :class:`~dualsparse.train.loop.Trainer` drives: training
  segments (fixed or AWD random-length BPTT), cross-entropy plus optional AR/TAR, the hidden
  state carried (detached) across segments, validation perplexity, and its resumable state.
* :func:`evaluate_lm` computes perplexity over a token stream (the papers test at batch 1)
  and, with an :class:`~dualsparse.accounting.ActivityMeter`, per-layer activity sparsity and
  dense/effective MACs per token.
* :func:`add_arguments` / :func:`run` implement ``dualsparse train --task lm``;
  :func:`add_eval_arguments` / :func:`run_eval` implement ``dualsparse eval``.

Flag names follow awd-lstm-lm / word_language_model where they exist (``--emsize --nhid
--lr --clip --epochs --batch_size --bptt --dropout --dropouth --dropouti --dropoute --wdrop
--seed --log-interval --save --resume --when --alpha --beta --wdecay``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import ActivityMeter
from dualsparse.data.batching import FixedBPTT, RandomBPTT, Segment, batchify
from dualsparse.models.lm import RNNLanguageModel, count_parameters
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.distributed import DistInfo, cleanup, init_distributed
from dualsparse.train.loop import TrainConfig, Trainer, set_seed
from dualsparse.train.presets import PRESETS, get_preset

CARRY_MODES = ("full", "output")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def carry_state(state: tuple, mode: str) -> tuple:
    """State passed to the next segment: detached; ``"output"`` keeps only each layer's
    output (EGRU ``y``, LSTM ``h``) and zeroes the rest (the EGRU recipe carries ``y_T``)."""
    if mode == "full":
        return tuple(tuple(t.detach() for t in s) for s in state)
    return tuple((s[0].detach(), *(torch.zeros_like(t) for t in s[1:])) for s in state)


def _layer_activity(seqs: Any) -> float:
    """Fraction of nonzero outputs over all layers' units and steps."""
    nonzero = sum(float((s.output != 0).sum()) for s in seqs.layers)
    total = sum(s.output.numel() for s in seqs.layers)
    return nonzero / max(total, 1)


def evaluate_lm(model: nn.Module, source: torch.Tensor, batch_size: int, bptt: int,
                carry: str = "full", meter: ActivityMeter | None = None) -> dict[str, float]:
    """Mean cross-entropy (nats/token), perplexity and activity over a token stream.

    Args:
        model: an :class:`RNNLanguageModel` (evaluated in eval mode, no gradients).
        source: ``(N,)`` token ids; cut into ``batch_size`` columns (the tail is dropped).
        bptt: segment length; the state is carried across segments.
        meter: if given, every layer's inputs/sequences and the decoder input are added.
    """
    if carry not in CARRY_MODES:
        raise ValueError(f"carry must be one of {CARRY_MODES}, got {carry!r}")
    model = _unwrap(model)
    device = next(model.parameters()).device
    data = batchify(source, batch_size).to(device)
    was_training = model.training
    model.eval()
    total, count, nonzero, units = 0.0, 0, 0.0, 0
    state = None
    try:
        with torch.no_grad():
            for seg in FixedBPTT(data, bptt):
                logits, state, seqs = model(seg.input, state, return_sequences=True)
                total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                               seg.target.reshape(-1), reduction="sum"))
                count += seg.target.numel()
                nonzero += sum(float((s.output != 0).sum()) for s in seqs.layers)
                units += sum(s.output.numel() for s in seqs.layers)
                if meter is not None:
                    for k, rnn in enumerate(model.rnns):
                        w_ih, w_hh, _, _ = rnn.layer_weights(0)
                        is_egru = seqs.layers[k].events is not None
                        meter.update_layer(k, w_ih, w_hh, seqs.layer_inputs[k], seqs.layers[k],
                                           rnn.threshold(0) if is_egru else None,
                                           getattr(rnn, "surrogate", None))
                    meter.update_decoder(seqs.decoder_input, model.decoder.weight)
                state = carry_state(state, carry)
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count,
            "activity": nonzero / max(units, 1)}


class LMTask:
    """Training data order and losses for a language model (see module docstring).

    Args:
        train, valid, test: ``(N,)`` token streams.
        batch_size: sequences per process; bptt: (mean) segment length in tokens.
        random_bptt: AWD random segment lengths (LR scaled by ``T / bptt``) instead of fixed.
        seed: seeds the per-epoch segment lengths (same on every rank).
        eval_batch_size / test_batch_size: for validation / test (the papers test at 1).
        eval_bptt: segment length for validation/test (default ``bptt``); with
            ``carry="full"`` it changes only the speed (fewer, longer segments), not the result.
        alpha, beta: AR (on the dropped last output) and TAR (on its time differences).
        carry: ``"full"`` or ``"output"`` (see :func:`carry_state`).
        rank, world_size: this process's block of batch columns under DDP.
    """

    def __init__(self, train: torch.Tensor, valid: torch.Tensor, test: torch.Tensor, *,
                 batch_size: int, bptt: int, random_bptt: bool = False, seed: int = 1111,
                 eval_batch_size: int = 10, test_batch_size: int = 1, alpha: float = 0.0,
                 beta: float = 0.0, carry: str = "full", rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", eval_bptt: int | None = None) -> None:
        if carry not in CARRY_MODES:
            raise ValueError(f"carry must be one of {CARRY_MODES}, got {carry!r}")
        for name, v in (("alpha", alpha), ("beta", beta)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        eval_bptt = bptt if eval_bptt is None else eval_bptt
        for name, v in (("batch_size", batch_size), ("bptt", bptt), ("eval_bptt", eval_bptt),
                        ("eval_batch_size", eval_batch_size),
                        ("test_batch_size", test_batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        full = batchify(train, batch_size * world_size)
        if full.size(0) < 2:
            raise ValueError(f"{train.numel()} training tokens are too few for "
                             f"{batch_size * world_size} columns")
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
        """Cross-entropy (+ AR/TAR) on one segment; carries the state to the next one."""
        logits, state, seqs = model(batch.input, self.state, return_sequences=True)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.target.reshape(-1))
        loss = ce
        if self.alpha:
            loss = loss + self.alpha * seqs.decoder_input.pow(2).mean()
        if self.beta:
            out = seqs.layers[-1].output
            loss = loss + self.beta * (out[1:] - out[:-1]).pow(2).mean()
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


# ------------------------------------------------------------------------------ arguments
def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.replace(",", " ").split()]


def add_model_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", default="ptb", help="corpus: ptb or wikitext-2 (default ptb)")
    g.add_argument("--data-dir", default=None,
                   help="folder with <corpus>/{train,valid,test}.txt (default $DUALSPARSE_DATA)")
    g.add_argument("--train-tokens", type=int, default=None,
                   help="use only the first N training tokens (smoke runs, tests)")
    g.add_argument("--valid-tokens", type=int, default=None,
                   help="validate on the first N validation tokens")
    g.add_argument("--test-tokens", type=int, default=None,
                   help="test on the first N test tokens")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``dualsparse train --task lm`` (a preset fills in defaults first)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="named recipe; explicit flags override it")
    add_model_data_arguments(parser)
    m = parser.add_argument_group("model")
    m.add_argument("--model", default="EGRU", choices=["EGRU", "LSTM", "GRU"],
                   type=str.upper, help="recurrent cell (default EGRU)")
    m.add_argument("--emsize", type=int, default=200, help="embedding size")
    m.add_argument("--nhid", type=_int_list, default=[200, 200],
                   help="hidden sizes per layer, e.g. '1350,1350,750'")
    m.add_argument("--tied", choices=["auto", "yes", "no"], default="auto",
                   help="tie decoder to embedding (auto: when last size == emsize)")
    m.add_argument("--dropout", type=float, default=0.0, help="locked dropout on the output")
    m.add_argument("--dropouth", type=float, default=0.0, help="locked dropout between layers")
    m.add_argument("--dropouti", type=float, default=0.0, help="locked dropout on embeddings")
    m.add_argument("--dropoute", type=float, default=0.0, help="embedding (word) dropout")
    m.add_argument("--wdrop", type=float, default=0.0, help="DropConnect on recurrent weights")
    m.add_argument("--init-range", type=float, default=None,
                   help="draw every recurrent weight and bias from U(-r, r) (default: the "
                        "layers' nn.GRU-style init)")
    m.add_argument("--surrogate", default="triangle", help="EGRU pseudo-derivative shape")
    m.add_argument("--surrogate-gamma", type=float, default=None,
                   help="EGRU pseudo-derivative peak (default 0.7)")
    m.add_argument("--surrogate-width", type=float, default=None,
                   help="EGRU pseudo-derivative half-width (default 1.0)")
    m.add_argument("--thr-mean", type=float, default=None,
                   help="EGRU initial threshold mean (default 0.3)")
    m.add_argument("--thr-init", choices=["beta", "constant"], default=None,
                   help="EGRU threshold initialisation")
    m.add_argument("--reset-mode", choices=["subtract_threshold", "subtract_output", "none"],
                   default=None, help="EGRU reset after an event")
    o = parser.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    o.add_argument("--lr", type=float, default=1e-3, help="base learning rate")
    o.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    o.add_argument("--beta2", type=float, default=0.999, help="AdamW beta2")
    o.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    o.add_argument("--wdecay", type=float, default=0.0, help="weight decay of weights")
    o.add_argument("--wdecay-bias", type=float, default=0.0, help="weight decay of biases")
    o.add_argument("--wdecay-thr", type=float, default=0.0, help="weight decay of thresholds")
    o.add_argument("--lr-bias", type=float, default=1.0, help="LR multiplier of biases")
    o.add_argument("--lr-thr", type=float, default=1.0, help="LR multiplier of thresholds")
    o.add_argument("--clip", type=float, default=0.25, help="gradient-norm clip (0: off)")
    o.add_argument("--epochs", type=float, default=None, help="epochs (if no --max-steps)")
    o.add_argument("--max-steps", type=int, default=None, help="optimiser steps")
    o.add_argument("--schedule", choices=["constant", "cosine", "step"], default="constant")
    o.add_argument("--cosine-start", type=float, default=0.0,
                   help="epoch at which the cosine decay starts")
    o.add_argument("--min-lr-ratio", type=float, default=0.0,
                   help="final LR of the cosine decay, as a fraction of --lr")
    o.add_argument("--when", type=float, nargs="*", default=[],
                   help="epochs at which the step schedule multiplies the LR by --gamma")
    o.add_argument("--gamma", type=float, default=0.1, help="step-schedule factor")
    o.add_argument("--warmup-steps", type=int, default=0)
    o.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=20,
                   help="sequences per step and process")
    o.add_argument("--eval-batch-size", type=int, default=10)
    o.add_argument("--test-batch-size", type=int, default=1)
    o.add_argument("--bptt", type=int, default=35, help="(mean) segment length")
    o.add_argument("--eval-bptt", type=int, default=None,
                   help="segment length for validation/test (default --bptt)")
    o.add_argument("--random-bptt", action=argparse.BooleanOptionalAction, default=False,
                   help="AWD random segment lengths with LR scaled by length/bptt")
    o.add_argument("--carry", choices=list(CARRY_MODES), default="full",
                   help="state carried across segments: full, or only the output")
    o.add_argument("--alpha", type=float, default=0.0, help="AR coefficient")
    o.add_argument("--beta", type=float, default=0.0, help="TAR coefficient")
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=1111)
    r.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    r.add_argument("--log-interval", type=int, default=50)
    r.add_argument("--eval-interval", type=int, default=None,
                   help="steps between validations (default: once per epoch)")
    r.add_argument("--save-interval", type=int, default=0,
                   help="steps between 'latest' checkpoints besides each validation")
    r.add_argument("--save", default="runs/lm", help="output folder ('' writes nothing)")
    r.add_argument("--resume", action="store_true", help="continue from <save>/latest")
    r.add_argument("--stop-at", type=int, default=None,
                   help="stop at this step with a checkpoint (the schedule is unchanged)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)


def apply_preset(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Make ``--preset NAME`` set the parser's defaults (flags still override)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--epochs", default=None)
    pre.add_argument("--max-steps", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.preset in PRESETS:  # an unknown name is reported by the parser's choices
        defaults = get_preset(known.preset)
        # the run length is one setting given in two units: an explicit --epochs replaces
        # the preset's --max-steps (which would otherwise win over it), and vice versa
        if known.epochs is not None:
            defaults.pop("max_steps", None)
        if known.max_steps is not None:
            defaults.pop("epochs", None)
        parser.set_defaults(**defaults)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``dualsparse eval``."""
    parser.add_argument("--checkpoint", required=True, help="run folder with best/latest.json")
    parser.add_argument("--tag", default="best", help="checkpoint name (best or latest)")
    parser.add_argument("--split", choices=["valid", "test"], default="test")
    parser.add_argument("--batch-size", type=int, default=1, help="evaluation batch size")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tokens", type=int, default=None, help="first N tokens of the split")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None,
                        help="JSON result file (default <checkpoint>/eval-<tag>-<split>.json)")
    parser.add_argument("--engine", choices=["torch", "sparse"], default="torch",
                        help="torch: the PyTorch model (with accounting); sparse: the "
                             "event-driven CPU engine (dualsparse.engine), same perplexity")


# ---------------------------------------------------------------------------------- runs
def build_model(args: argparse.Namespace, vocab_size: int) -> RNNLanguageModel:
    """The :class:`RNNLanguageModel` that ``args`` describe."""
    options: dict[str, Any] = {}
    if args.model == "EGRU":
        for flag, key in (("surrogate", "surrogate"), ("surrogate_gamma", "surrogate_gamma"),
                          ("surrogate_width", "surrogate_width"), ("thr_mean", "threshold_mean"),
                          ("thr_init", "threshold_init"), ("reset_mode", "reset_mode")):
            value = getattr(args, flag, None)
            if value is not None:
                options[key] = value
    tied = {"auto": "auto", "yes": True, "no": False}[args.tied]
    return RNNLanguageModel(vocab_size, args.emsize, args.nhid, cell=args.model.lower(),
                            tie_weights=tied, dropout=args.dropout, dropouth=args.dropouth,
                            dropouti=args.dropouti, dropoute=args.dropoute, wdrop=args.wdrop,
                            cell_options=options,
                            init_range=getattr(args, "init_range", None))


def _set_threads(threads: int | None) -> None:
    """``--threads``: torch CPU threads (None or 0 leaves torch's default)."""
    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be >= 1 (or 0 for torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def _slice(data: torch.Tensor, tokens: int | None, name: str) -> torch.Tensor:
    if tokens is None:
        return data
    if tokens < 2:
        flag = f"--{name}-tokens" if name else "--tokens"
        raise ValueError(f"{flag} must be >= 2, got {tokens}")
    return data[:tokens]


def load_splits(args: argparse.Namespace) -> tuple[Any, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """``(corpus, train, valid, test)`` with the ``--*-tokens`` limits applied."""
    from dualsparse.data.corpora import load_corpus
    corpus = load_corpus(args.data, args.data_dir)
    return (corpus, _slice(corpus.train, args.train_tokens, "train"),
            _slice(corpus.valid, args.valid_tokens, "valid"),
            _slice(corpus.test, args.test_tokens, "test"))


def train_config(args: argparse.Namespace, steps_per_epoch: int) -> TrainConfig:
    """:class:`TrainConfig` from ``args``; epochs are converted to steps."""
    if args.max_steps is not None:
        max_steps = args.max_steps
    elif args.epochs is not None:
        if not (math.isfinite(args.epochs) and args.epochs > 0):
            raise ValueError(f"--epochs must be a finite number > 0, got {args.epochs}")
        max_steps = max(1, round(args.epochs * steps_per_epoch))
    else:
        raise ValueError("give --max-steps or --epochs")
    return TrainConfig(
        max_steps=max_steps, lr=args.lr, optimizer=args.optimizer, beta1=args.beta1,
        beta2=args.beta2, momentum=args.momentum, wdecay=args.wdecay,
        wdecay_bias=args.wdecay_bias, wdecay_thr=args.wdecay_thr, lr_bias=args.lr_bias,
        lr_thr=args.lr_thr, clip=args.clip, schedule=args.schedule,
        cosine_start=round(args.cosine_start * steps_per_epoch),
        min_lr_ratio=args.min_lr_ratio, when=tuple(round(w * steps_per_epoch) for w in args.when),
        gamma=args.gamma, warmup_steps=args.warmup_steps, scale_lr_by_seq_len=args.random_bptt,
        eval_interval=args.eval_interval if args.eval_interval is not None else steps_per_epoch,
        log_interval=args.log_interval, save_interval=args.save_interval, stop_at=args.stop_at,
        seed=args.seed, deterministic=args.deterministic, out_dir=args.save or None,
        tensorboard=args.tensorboard, progress=args.progress,
    )


def build_trainer(args: argparse.Namespace, dist: DistInfo | None = None,
                  pruner_factory: Callable[[nn.Module], Any] | None = None) -> Trainer:
    """Corpus, task, model, optimiser and trainer for ``args`` (resumed with ``--resume``)."""
    dist = dist or DistInfo()
    _set_threads(args.threads)
    set_seed(args.seed, args.deterministic)
    corpus, train, valid, test = load_splits(args)
    task = LMTask(train, valid, test, batch_size=args.batch_size, bptt=args.bptt,
                  random_bptt=args.random_bptt, seed=args.seed,
                  eval_batch_size=args.eval_batch_size, test_batch_size=args.test_batch_size,
                  alpha=args.alpha, beta=args.beta, carry=args.carry, rank=dist.rank,
                  world_size=dist.world_size, device=dist.device,
                  eval_bptt=getattr(args, "eval_bptt", None))
    model = build_model(args, len(corpus.vocab)).to(dist.device)
    if dist.enabled:  # same initial weights everywhere (DDP broadcasts them), own dropout
        torch.manual_seed(args.seed + 1 + dist.rank)
    pruner = pruner_factory(model) if pruner_factory is not None else None
    cfg = train_config(args, task.steps_per_epoch)
    run_config = {k: v for k, v in vars(args).items() if not callable(v)}
    trainer = Trainer(model, task, cfg, pruner=pruner, dist=dist, run_config=run_config)
    if args.resume:
        if not args.save:
            raise ValueError("--resume needs --save pointing at the run folder")
        trainer.resume(args.save)
        if dist.enabled and dist.rank > 0:
            # the checkpoint holds rank 0's RNG and carried state: give the other ranks
            # their own dropout stream and a fresh state (DDP resume is not bitwise)
            torch.manual_seed(args.seed + 1 + dist.rank + 1_000_003 * trainer.step)
            trainer.task.state = None
    return trainer


def test_report(model: RNNLanguageModel, task: LMTask) -> dict[str, Any]:
    """Test perplexity at ``test_batch_size`` and the accounting report (as a dict)."""
    meter = ActivityMeter(None, decoder=model.decoder)
    result = task.evaluate(model, "test", meter=meter)
    report = meter.report()
    return {**result, "accounting": report.to_dict(), "table": report.format_table()}


def _load_best_weights(trainer: Trainer, out_dir: str) -> str:
    """Load ``best`` weights into the trainer's model if present; returns the tag used.

    Only a missing ``best`` falls back to the final weights; a damaged one raises."""
    if not (Path(out_dir) / "best.json").is_file():
        return "final"
    tensors, meta = ckpt.load_checkpoint(out_dir, "best")
    part = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    aliases = {k[6:]: v[6:] for k, v in meta["aliases"].items()}
    ckpt.load_model_tensors(trainer.model, part, aliases)
    return f"best (step {meta['step']})"


def run(args: argparse.Namespace, pruner_factory: Callable[[nn.Module], Any] | None = None
        ) -> dict[str, Any]:
    """``dualsparse train --task lm``: train, then test the best checkpoint at batch 1."""
    dist = init_distributed(args.device)
    try:
        trainer = build_trainer(args, dist, pruner_factory)
        model = trainer.model
        if dist.is_main:
            print(f"model: {args.model} emb {args.emsize} hidden {args.nhid}, "
                  f"{count_parameters(model):,} parameters "
                  f"({count_parameters(model, exclude_embedding=True):,} in the RNN); "
                  f"{trainer.cfg.max_steps} steps, {trainer.task.steps_per_epoch} per epoch",
                  flush=True)
        summary = trainer.fit()
        result: dict[str, Any] = {"train": summary, "parameters": count_parameters(model),
                                  "rnn_parameters": count_parameters(model, True)}
        if summary["finished"] and dist.is_main:
            used = _load_best_weights(trainer, args.save) if args.save else "final"
            t0 = time.perf_counter()
            test = test_report(model, trainer.task)
            result["test"] = {k: v for k, v in test.items() if k != "table"}
            result["test"].update(weights=used, batch_size=args.test_batch_size,
                                  seconds=time.perf_counter() - t0)
            print(f"test ({used}, batch {args.test_batch_size}): loss {test['loss']:.4f} "
                  f"ppl {test['ppl']:.2f}\n{test['table']}", flush=True)
        if args.save and dist.is_main:
            ckpt.atomic_write_json(Path(args.save) / "results.json",
                                   {"config": trainer.run_config, **result})
        return result
    finally:
        cleanup(dist)


def load_model_from_checkpoint(directory: str | os.PathLike[str], tag: str = "best"
                               ) -> tuple[RNNLanguageModel, dict[str, Any]]:
    """The model stored in checkpoint ``tag`` of a run folder, and the checkpoint's JSON."""
    tensors, meta = ckpt.load_checkpoint(directory, tag)
    model = RNNLanguageModel.from_config(meta["model_config"])
    part = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    aliases = {k[6:]: v[6:] for k, v in meta["aliases"].items()}
    # a run trained with a pruner also holds its bool mask buffers ("<param>_mask"); the
    # pruned weights are stored as zeros, so the plain model computes the same function
    fresh = model.state_dict()
    for key in [k for k in part if k.endswith("_mask") and k not in fresh]:
        part.pop(key)
    ckpt.load_model_tensors(model, part, aliases)
    return model, meta


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """``dualsparse eval``: perplexity and accounting of a saved model on valid or test."""
    _set_threads(args.threads)
    model, meta = load_model_from_checkpoint(args.checkpoint, args.tag)
    cfg = meta["run_config"]
    from dualsparse.data.corpora import load_corpus
    corpus = load_corpus(cfg["data"], args.data_dir or cfg.get("data_dir"))
    if len(corpus.vocab) != model.vocab_size:
        raise ValueError(f"the checkpoint's vocabulary has {model.vocab_size} words, corpus "
                         f"{cfg['data']!r} has {len(corpus.vocab)}")
    data = corpus.valid if args.split == "valid" else corpus.test
    if args.tokens is not None:
        data = _slice(data, args.tokens, "")
    path = Path(args.out) if args.out else (Path(args.checkpoint)
                                            / f"eval-{args.tag}-{args.split}.json")
    if getattr(args, "engine", "torch") == "sparse":
        return _run_eval_sparse(args, model, meta, data, path)
    meter = ActivityMeter(None, decoder=model.decoder)
    bptt = cfg.get("eval_bptt") or cfg["bptt"]
    res = evaluate_lm(model, data, args.batch_size, bptt, cfg.get("carry", "full"), meter)
    report = meter.report()
    out = {"checkpoint": str(args.checkpoint), "tag": args.tag, "step": meta["step"],
           "split": args.split, "batch_size": args.batch_size, **res,
           "engine": "torch", "accounting": report.to_dict()}
    ckpt.atomic_write_json(path, out)
    print(f"{args.split} ({args.tag}, step {meta['step']}, batch {args.batch_size}): "
          f"loss {res['loss']:.4f} ppl {res['ppl']:.2f}\n{report.format_table()}\n"
          f"written to {path}")
    return out


def _run_eval_sparse(args: argparse.Namespace, model: RNNLanguageModel, meta: dict[str, Any],
                     data: torch.Tensor, path: Path) -> dict[str, Any]:
    """``dualsparse eval --engine sparse``: perplexity through the event-driven engine.

    The engine carries the full state over the whole split, so this equals the PyTorch path
    with ``carry="full"`` (the default for every preset except the paper EGRU ones).
    """
    from dualsparse.engine.lm import evaluate_lm_sparse

    cfg = meta["run_config"]
    if cfg.get("carry", "full") != "full":
        print("note: this run carries only y between segments in PyTorch evaluation; the "
              "engine carries the full state (y and c)")
    res = evaluate_lm_sparse(model.eval(), data, args.batch_size, threads=args.threads or 1)
    out = {"checkpoint": str(args.checkpoint), "tag": args.tag, "step": meta["step"],
           "split": args.split, "batch_size": args.batch_size, "engine": "sparse", **res}
    ckpt.atomic_write_json(path, out)
    print(f"{args.split} ({args.tag}, step {meta['step']}, batch {args.batch_size}, sparse "
          f"engine): loss {res['loss']:.4f} ppl {res['ppl']:.2f}, activity "
          f"{res['activity']:.3f}, {1e6 * res['seconds_per_token']:.0f} us/token\n"
          f"written to {path}")
    return out


def prune_hooks(checkpoint: str, tag: str = "best", data_dir: str | None = None
                ) -> tuple[RNNLanguageModel, Callable[[nn.Module, Any, int], dict[str, Any]],
                           Callable[[nn.Module], float]]:
    """``(model, fine_tune, evaluate)`` for ``dualsparse prune`` on a trained LM run.

    ``fine_tune(model, pruner, steps)`` trains ``steps`` more steps with the run's settings
    and the pruner attached; ``evaluate(model)`` returns the validation perplexity.
    """
    model, meta = load_model_from_checkpoint(checkpoint, tag)
    run_cfg = dict(meta["run_config"])
    if data_dir is not None:
        run_cfg["data_dir"] = data_dir
    args = argparse.Namespace(**run_cfg)
    _, train, valid, test = load_splits(args)

    def make_task() -> LMTask:
        return LMTask(train, valid, test, batch_size=args.batch_size, bptt=args.bptt,
                      random_bptt=args.random_bptt, seed=args.seed,
                      eval_batch_size=args.eval_batch_size,
                      test_batch_size=args.test_batch_size, alpha=args.alpha, beta=args.beta,
                      carry=args.carry, eval_bptt=getattr(args, "eval_bptt", None))

    def fine_tune(model: nn.Module, pruner: Any, steps: int) -> dict[str, Any]:
        cfg = TrainConfig(max_steps=steps, lr=args.lr, optimizer=args.optimizer,
                          beta1=args.beta1, beta2=args.beta2, momentum=args.momentum,
                          wdecay=args.wdecay, wdecay_bias=args.wdecay_bias,
                          wdecay_thr=args.wdecay_thr, lr_bias=args.lr_bias,
                          lr_thr=args.lr_thr, clip=args.clip,
                          scale_lr_by_seq_len=args.random_bptt, eval_interval=0,
                          seed=args.seed, deterministic=args.deterministic, out_dir=None,
                          progress=False)
        return Trainer(model, make_task(), cfg, pruner=pruner).fit()

    def evaluate(model: nn.Module) -> float:
        return make_task().evaluate(model, "valid")["ppl"]

    return model, fine_tune, evaluate


def pruned_run_saver(checkpoint: str, tag: str = "best"
                     ) -> Callable[[nn.Module, Any, str], None]:
    """``save(model, pruner_or_None, path)`` for ``dualsparse prune --save``: writes a run
    folder (checkpoint ``best``) that ``dualsparse eval`` and ``dualsparse prune`` read like a
    trained run; it keeps the source run's settings and records where it was pruned from."""
    source = ckpt.read_checkpoint_meta(checkpoint, tag)

    def save(model: nn.Module, pruner: Any, path: str) -> None:
        tensors, aliases = ckpt.model_tensors(model)
        meta = {"step": source["step"], "model_config": model.get_config(),
                "aliases": {f"model.{k}": f"model.{v}" for k, v in aliases.items()},
                "run_config": source["run_config"],
                "pruner": None if pruner is None else pruner.state_dict(),
                "pruned_from": {"checkpoint": str(checkpoint), "tag": tag}}
        ckpt.save_checkpoint(path, "best", {f"model.{k}": v for k, v in tensors.items()}, meta)

    return save


def format_summary(result: dict[str, Any]) -> str:
    """A short JSON rendering of a run result without the long per-neuron lists."""
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items()
                    if k not in ("per_neuron_activity", "activity_histogram",
                                 "distance_histogram", "history")}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj
    return json.dumps(strip(result), indent=2)


__all__ = ["CARRY_MODES", "LMTask", "add_arguments", "add_eval_arguments", "apply_preset",
           "build_model", "build_trainer", "carry_state", "evaluate_lm",
           "load_model_from_checkpoint", "prune_hooks", "run", "run_eval", "test_report",
           "train_config"]
