"""Command-line flags of the LM app: each maps onto one config field (``dest`` = field name).

The first spelling of a flag is the field name; awd-lstm-lm / word_language_model spellings
stay as aliases (``--nhid`` for ``--hidden-sizes``, ``--emsize`` for ``--emb-size``,
``--wdrop`` for ``--dropconnect``, ``--thr-mean`` for ``--threshold-mean``, ``--model`` for
``--cell``, ``--tied`` for ``--tie-weights``, ``--data`` for ``--corpus``, ``--batch_size``
for ``--batch-size``, ``--prune-steps`` for ``--prune-rounds``). Defaults are the config
dataclasses' defaults; a ``--preset`` replaces them first (:func:`apply_preset`).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, TypeVar

from dualsparse.apps.lm.config import (
    CARRY_MODES,
    CELLS,
    PRUNE_METHODS,
    PRUNE_SCHEDULES,
    Q_SOURCES,
    TIE_MODES,
    DataConfig,
    ModelConfig,
    PruneConfig,
    RunConfig,
)
from dualsparse.apps.lm.presets import PRESETS, with_preset
from dualsparse.apps.lm.prune import FINE_TUNE_LR_SCHEDULES, FINE_TUNE_OPTIMIZERS
from dualsparse.sparsity.scoring import SCOPES, STATS, parse_block

T = TypeVar("T")


def config_from(cls: type[T], args: argparse.Namespace) -> T:
    """Dataclass ``cls`` from the parsed flags whose dests are its fields (others ignored)."""
    values: dict[str, Any] = vars(args)
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.replace(",", " ").split()]


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """:class:`DataConfig` flags."""
    d = DataConfig()
    g = parser.add_argument_group("data")
    g.add_argument("--corpus", "--data", default=d.corpus,
                   help="ptb or wikitext-2 (default %(default)s)")
    g.add_argument("--data-dir", default=d.data_dir,
                   help="folder with <corpus>/{train,valid,test}.txt (default $DUALSPARSE_DATA)")
    for split in ("train", "valid", "test"):
        g.add_argument(f"--{split}-tokens", type=int, default=None,
                       help=f"use only the first N {split} tokens (smoke runs, tests)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """:class:`ModelConfig` flags."""
    m, g = ModelConfig(), parser.add_argument_group("model")
    g.add_argument("--cell", "--model", default=m.cell, choices=CELLS, type=str.upper,
                   help="recurrent cell (default %(default)s)")
    g.add_argument("--emb-size", "--emsize", type=int, default=m.emb_size, help="embedding size")
    g.add_argument("--hidden-sizes", "--nhid", type=_int_list, default=m.hidden_sizes,
                   help="hidden sizes per layer, e.g. '1350,1350,750'")
    g.add_argument("--tie-weights", "--tied", choices=TIE_MODES, default=m.tie_weights,
                   help="tie decoder to embedding (auto: when last size == emb size)")
    g.add_argument("--dropout", type=float, default=m.dropout, help="locked dropout on the output")
    g.add_argument("--dropouth", type=float, default=m.dropouth,
                   help="locked dropout between layers")
    g.add_argument("--dropouti", type=float, default=m.dropouti,
                   help="locked dropout on embeddings")
    g.add_argument("--dropoute", type=float, default=m.dropoute, help="embedding (word) dropout")
    g.add_argument("--dropconnect", "--wdrop", type=float, default=m.dropconnect,
                   help="DropConnect on recurrent weights")
    g.add_argument("--init-range", type=float, default=m.init_range,
                   help="draw every recurrent weight and bias from U(-r, r) (default: the "
                        "layers' nn.GRU-style init)")
    g.add_argument("--surrogate", default=m.surrogate, help="EGRU pseudo-derivative shape")
    g.add_argument("--surrogate-gamma", type=float, default=m.surrogate_gamma,
                   help="EGRU pseudo-derivative peak (default 0.7)")
    g.add_argument("--surrogate-width", type=float, default=m.surrogate_width,
                   help="EGRU pseudo-derivative half-width (default 1.0)")
    g.add_argument("--threshold-mean", "--thr-mean", type=float, default=m.threshold_mean,
                   help="EGRU initial threshold mean (default 0.3)")
    g.add_argument("--threshold-init", "--thr-init", choices=["beta", "constant"],
                   default=m.threshold_init, help="EGRU threshold initialisation")
    g.add_argument("--threshold-parameterisation", choices=["sigmoid", "clamp"],
                   default=m.threshold_parameterisation,
                   help="EGRU thresholds learned as a logit (sigmoid, default) or directly and "
                        "clamped (clamp, EvNN v0.2)")
    g.add_argument("--backend", choices=["torch", "triton", "auto"], default=m.backend,
                   help="EGRU fused layer: torch (default), triton (CUDA, the gpu extra) or "
                        "auto (triton on CUDA when importable)")
    g.add_argument("--reset-mode", choices=["subtract_threshold", "subtract_output", "none"],
                   default=m.reset_mode, help="EGRU reset after an event")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """:class:`RunConfig` flags (data order, optimisation, bookkeeping)."""
    r = RunConfig()
    o = parser.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=["adamw", "sgd"], default=r.optimizer)
    o.add_argument("--lr", type=float, default=r.lr, help="base learning rate")
    o.add_argument("--beta1", type=float, default=r.beta1, help="AdamW beta1")
    o.add_argument("--beta2", type=float, default=r.beta2, help="AdamW beta2")
    o.add_argument("--momentum", type=float, default=r.momentum, help="SGD momentum")
    o.add_argument("--wdecay", type=float, default=r.wdecay, help="weight decay of weights")
    o.add_argument("--wdecay-bias", type=float, default=r.wdecay_bias,
                   help="weight decay of biases")
    o.add_argument("--wdecay-thr", type=float, default=r.wdecay_thr,
                   help="weight decay of thresholds")
    o.add_argument("--lr-bias", type=float, default=r.lr_bias, help="LR multiplier of biases")
    o.add_argument("--lr-thr", type=float, default=r.lr_thr, help="LR multiplier of thresholds")
    o.add_argument("--clip", type=float, default=r.clip, help="gradient-norm clip (0: off)")
    o.add_argument("--epochs", type=float, default=r.epochs, help="epochs (if no --max-steps)")
    o.add_argument("--max-steps", type=int, default=r.max_steps, help="optimiser steps")
    o.add_argument("--schedule", choices=["constant", "cosine", "step"], default=r.schedule)
    o.add_argument("--cosine-start", type=float, default=r.cosine_start,
                   help="epoch at which the cosine decay starts")
    o.add_argument("--min-lr-ratio", type=float, default=r.min_lr_ratio,
                   help="final LR of the cosine decay, as a fraction of --lr")
    o.add_argument("--when", type=float, nargs="*", default=r.when,
                   help="epochs at which the step schedule multiplies the LR by --gamma")
    o.add_argument("--gamma", type=float, default=r.gamma, help="step-schedule factor")
    o.add_argument("--warmup-steps", type=int, default=r.warmup_steps)
    o.add_argument("--batch-size", "--batch_size", type=int, default=r.batch_size,
                   help="sequences per optimiser step and process")
    o.add_argument("--eval-batch-size", type=int, default=r.eval_batch_size)
    o.add_argument("--test-batch-size", type=int, default=r.test_batch_size)
    o.add_argument("--bptt", type=int, default=r.bptt, help="(mean) segment length, time steps")
    o.add_argument("--eval-bptt", type=int, default=r.eval_bptt,
                   help="segment length for validation/test (default --bptt)")
    o.add_argument("--random-bptt", action=argparse.BooleanOptionalAction,
                   default=r.random_bptt,
                   help="AWD random segment lengths with LR scaled by length/bptt")
    o.add_argument("--carry", choices=list(CARRY_MODES), default=r.carry,
                   help="state carried across segments: full, or only the output")
    o.add_argument("--alpha", type=float, default=r.alpha, help="AR coefficient")
    o.add_argument("--beta", type=float, default=r.beta, help="TAR coefficient")
    o.add_argument("--activity-penalty", type=float, default=r.activity_penalty,
                   help="EGRU: coefficient of the mean event rate per layer above "
                        "--activity-target added to the loss (EvNN's activity penalty)")
    o.add_argument("--activity-target", type=float, default=r.activity_target,
                   help="event rate per layer (0..1) below which the penalty is 0")
    g = parser.add_argument_group("run")
    g.add_argument("--seed", type=int, default=r.seed)
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                   default=r.deterministic)
    g.add_argument("--threads", type=int, default=r.threads, help="torch CPU threads")
    g.add_argument("--device", default=r.device, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--log-interval", type=int, default=r.log_interval)
    g.add_argument("--eval-interval", type=int, default=r.eval_interval,
                   help="optimiser steps between validations (default: once per epoch)")
    g.add_argument("--save-interval", type=int, default=r.save_interval,
                   help="optimiser steps between 'latest' checkpoints besides each validation")
    g.add_argument("--save", default=r.save, help="output folder ('' writes nothing)")
    g.add_argument("--resume", action="store_true", help="continue from <save>/latest")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --save (default: refuse such a folder)")
    g.add_argument("--stop-at", type=int, default=r.stop_at,
                   help="stop at this step with a checkpoint (the schedule is unchanged)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=r.progress)
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction,
                   default=r.tensorboard)


def add_prune_flags(parser: argparse.ArgumentParser, command: str = "train") -> None:
    """:class:`PruneConfig` flags; ``command="prune"`` changes the defaults for one-shot or
    iterative pruning of a trained model (Narang's schedule and gl there run during the
    fine-tuning, see :func:`~dualsparse.apps.lm.prune.prune_trained`)."""
    prune, p = command == "prune", PruneConfig()
    g = parser.add_argument_group("weight pruning")
    g.add_argument("--prune-method", choices=PRUNE_METHODS,
                   default="magnitude" if prune else p.prune_method,
                   help="pruning method (default: %(default)s)")
    g.add_argument("--prune-target", type=float, default=p.prune_target,
                   help="final fraction of pruned weights in [0, 1)")
    g.add_argument("--prune-schedule", choices=PRUNE_SCHEDULES,
                   default="iterative" if prune else p.prune_schedule,
                   help="schedule in optimiser steps (default: " + (
                       "%(default)s" if prune else "agp for magnitude, narang for block and "
                       "glp; gl has none") + ")")
    g.add_argument("--prune-start", type=int, default=p.prune_start,
                   help="optimiser step of the first pruning")
    g.add_argument("--prune-end", type=int, default=p.prune_end,
                   help="optimiser step of the last pruning")
    g.add_argument("--prune-rounds", "--prune-steps", type=int,
                   default=1 if prune else p.prune_rounds,
                   help="iterative: rounds; agp: mask updates; narang: updates if no --prune-freq")
    g.add_argument("--prune-freq", type=int, default=p.prune_freq,
                   help="narang: optimiser steps between threshold updates")
    g.add_argument("--prune-ramp", type=int, default=p.prune_ramp,
                   help="narang: step where the slope rises (default start + (end-start)/3)")
    g.add_argument("--prune-ramp-mult", type=float, default=p.prune_ramp_mult,
                   help="narang: phi / theta (default %(default)s; ends near q)")
    g.add_argument("--prune-q-percentile", type=float, default=p.prune_q_percentile,
                   help="narang: q = this percentile of |w| (or of the block scores) when "
                        "pruning starts (default 100 x --prune-target)")
    g.add_argument("--prune-q-from", choices=Q_SOURCES, default=p.prune_q_from,
                   help="narang: q from the weights |w| with slopes scaled by N_b^(1/4) for "
                        "blocks (the paper, default), or from the block scores")
    g.add_argument("--prune-block", type=parse_block, default=p.prune_block,
                   help="block shape RxC (rows within a gate x columns; default 4x4 for "
                        "block/gl/glp, 1x1 for magnitude)")
    g.add_argument("--prune-score", choices=STATS, default=p.prune_score,
                   help="block statistic of |w|")
    g.add_argument("--prune-tensors", default=p.prune_tensors,
                   help="comma-separated parameter names or patterns (default %(default)s)")
    g.add_argument("--prune-scope", choices=SCOPES, default=p.prune_scope,
                   help="rank per tensor (layer) or all tensors together (global)")
    g.add_argument("--group-lasso", type=float, default=p.group_lasso,
                   help="group lasso strength lambda over the pruning blocks (gl, glp)")
    g.add_argument("--gl-threshold", type=float, default=p.gl_threshold,
                   help="gl: at --prune-end, zero the blocks whose RMS is below this "
                        "(default %(default)s); lambda, not --prune-target, sets the sparsity")


def add_train_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """All flags of ``dualsparse train --task lm``, with ``--preset`` applied from ``argv``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="named recipe; explicit flags override it")
    add_data_flags(parser)
    add_model_flags(parser)
    add_run_flags(parser)
    add_prune_flags(parser)
    apply_preset(parser, argv)


def apply_preset(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Make ``--preset NAME`` in ``argv`` set the parser's defaults (flags still override;
    see :func:`~dualsparse.apps.lm.presets.with_preset` for the run length)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--epochs", default=None)
    pre.add_argument("--max-steps", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.preset in PRESETS:  # an unknown name is reported by the parser's choices
        explicit = {k: v for k, v in (("epochs", known.epochs),
                                      ("max_steps", known.max_steps)) if v is not None}
        defaults = with_preset(known.preset, explicit)
        for key in explicit:
            defaults.pop(key)
        parser.set_defaults(**defaults)


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of ``dualsparse eval`` (fields of :class:`~dualsparse.apps.lm.commands.EvalConfig`)."""
    parser.add_argument("--checkpoint", required=True, help="run folder with best/latest.json")
    parser.add_argument("--tag", default="best", help="checkpoint name (best or latest)")
    parser.add_argument("--split", choices=["valid", "test"], default="test")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=1,
                        help="evaluation batch size")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tokens", type=int, default=None, help="first N tokens of the split")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None,
                        help="JSON result file (default <checkpoint>/eval-<tag>-<split>.json, "
                             "eval-<tag>-<split>-sparse.json with --engine sparse); an "
                             "existing --out is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file")
    parser.add_argument("--engine", choices=["torch", "sparse"], default="torch",
                        help="torch: the PyTorch model (with accounting); sparse: the "
                             "event-driven CPU engine (dualsparse.engine), same perplexity")
    parser.add_argument("--device", default=None,
                        help="device of the torch engine: cpu, cuda or cuda:N (default: "
                             "cuda if available)")


def add_prune_command_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of ``dualsparse prune``: :class:`PruneConfig` (one-shot defaults) and
    :class:`~dualsparse.apps.lm.prune.PruneRunConfig`."""
    parser.add_argument("--checkpoint", required=True, help="trained LM run folder")
    parser.add_argument("--tag", default="best")
    parser.add_argument("--data-dir", default=None)
    add_prune_flags(parser, command="prune")
    parser.add_argument("--fine-tune-steps", type=int, default=0,
                        help="optimiser steps of fine-tuning after each round (default 0)")
    parser.add_argument("--fine-tune-lr", type=float, default=None,
                        help="learning rate of the fine-tuning (default: the run's lr)")
    parser.add_argument("--fine-tune-lr-schedule", choices=FINE_TUNE_LR_SCHEDULES,
                        default="constant",
                        help="fine-tuning learning rate: constant, or per round a warm-up over "
                             "a tenth of the steps then cosine to 0 (default constant)")
    parser.add_argument("--fine-tune-optimizer", choices=FINE_TUNE_OPTIMIZERS, default="fresh",
                        help="fresh: a new optimiser each round; carry: start from the "
                             "checkpoint's optimiser moments, then each round's (default fresh)")
    parser.add_argument("--output", default=None, help="write the results JSON here")
    parser.add_argument("--save", default=None, help="write the pruned checkpoint here")
    parser.add_argument("--finalize", action="store_true",
                        help="drop the masks before saving (plain dense-with-zeros weights)")


__all__ = ["add_data_flags", "add_eval_flags", "add_model_flags", "add_prune_command_flags",
           "add_prune_flags", "config_from", "add_run_flags", "add_train_flags", "apply_preset"]
