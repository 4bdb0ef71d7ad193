"""Configuration of a language-model run: the library's interface to the LM app.

:class:`LMConfig` groups four dataclasses, each with one concern:

* :class:`ModelConfig`: the :class:`~dualsparse.models.lm.RNNLanguageModel` (cell, sizes,
  dropouts, EGRU options);
* :class:`DataConfig`: corpus, data folder and token limits;
* :class:`RunConfig`: data order (batch, BPTT, carried state, AR/TAR), optimisation
  (turned into a :class:`~dualsparse.train.config.TrainConfig` by :meth:`RunConfig.train_config`)
  and bookkeeping (seed, threads, output folder);
* :class:`PruneConfig`: weight pruning during training (``prune_*`` fields).

Field names are unique over the four, so a flat dict (a sweep's run config, the command
line's namespace) maps onto them one to one. :data:`ALIASES` lists the older
awd-lstm-style spellings that flat dicts may still use (``nhid`` for ``hidden_sizes``, ...).
Words: *steps* are optimiser steps, *rounds* are pruning rounds, a segment has *time steps*.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dualsparse.data.corpora import load_corpus
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.train.config import TrainConfig
from dualsparse.train.device import check_device
from dualsparse.validation import check_block, check_choice, check_int, check_real

CELLS = ("EGRU", "LSTM", "GRU")
TIE_MODES = ("auto", "yes", "no")
CARRY_MODES = ("full", "output")
PRUNE_METHODS = ("magnitude", "block", "gl", "glp")
PRUNE_SCHEDULES = ("iterative", "agp", "narang")
#: the schedule each method uses when ``prune_schedule`` is not given (gl: its cut, no schedule)
METHOD_SCHEDULES: dict[str, str | None] = {"magnitude": "agp", "block": "narang",
                                            "glp": "narang", "gl": None}
Q_SOURCES = ("weights", "blocks")
DEFAULT_PRUNE_TENSORS = "*weight_ih_l*,*weight_hh_l*"

#: older names (flat dicts, stored runs, awd-lstm flags) -> field names
ALIASES = {"model": "cell", "emsize": "emb_size", "nhid": "hidden_sizes", "tied": "tie_weights",
           "wdrop": "dropconnect", "thr_mean": "threshold_mean", "thr_init": "threshold_init",
           "data": "corpus", "prune_steps": "prune_rounds"}


@dataclass
class ModelConfig:
    """The language model (see :class:`~dualsparse.models.lm.RNNLanguageModel`).

    ``tie_weights``: ``"auto"`` ties the decoder to the embedding when the last hidden size
    equals ``emb_size``. The EGRU options (``surrogate*``, ``threshold_*``, ``reset_mode``)
    are ignored by LSTM/GRU; None keeps the cell's default.
    """

    cell: str = "EGRU"
    emb_size: int = 200
    hidden_sizes: list[int] = field(default_factory=lambda: [200, 200])
    tie_weights: str = "auto"
    dropout: float = 0.0
    dropouth: float = 0.0
    dropouti: float = 0.0
    dropoute: float = 0.0
    dropconnect: float = 0.0
    init_range: float | None = None
    surrogate: str = "triangle"
    surrogate_gamma: float | None = None
    surrogate_width: float | None = None
    threshold_mean: float | None = None
    threshold_init: str | None = None
    threshold_parameterisation: str | None = None
    reset_mode: str | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        self.cell = check_choice("cell", str(self.cell).upper(), CELLS)
        self.emb_size = check_int("emb_size", self.emb_size, low=1)
        sizes = [self.hidden_sizes] if isinstance(self.hidden_sizes, int) else self.hidden_sizes
        self.hidden_sizes = [check_int("hidden_sizes", h, low=1) for h in sizes]
        if not self.hidden_sizes:
            raise ValueError("hidden_sizes must name at least one layer")
        self.tie_weights = check_choice("tie_weights", self.tie_weights, TIE_MODES)

    def build(self, vocab_size: int) -> RNNLanguageModel:
        """The :class:`~dualsparse.models.lm.RNNLanguageModel` for ``vocab_size`` words."""
        options: dict[str, Any] = {}
        if self.cell == "EGRU":
            for key in ("surrogate", "surrogate_gamma", "surrogate_width", "threshold_mean",
                        "threshold_init", "threshold_parameterisation", "reset_mode",
                        "backend"):
                if getattr(self, key) is not None:
                    options[key] = getattr(self, key)
        tied = {"auto": "auto", "yes": True, "no": False}[self.tie_weights]
        return RNNLanguageModel(vocab_size, self.emb_size, self.hidden_sizes,
                                cell=self.cell.lower(), tie_weights=tied, dropout=self.dropout,
                                dropouth=self.dropouth, dropouti=self.dropouti,
                                dropoute=self.dropoute, wdrop=self.dropconnect,
                                cell_options=options, init_range=self.init_range)


@dataclass
class DataConfig:
    """Corpus (``ptb`` or ``wikitext-2``) under ``data_dir`` (None: ``$DUALSPARSE_DATA``);
    ``*_tokens`` keep only the first N tokens of a split (smoke runs, tests)."""

    corpus: str = "ptb"
    data_dir: str | None = None
    train_tokens: int | None = None
    valid_tokens: int | None = None
    test_tokens: int | None = None

    def load(self) -> tuple[Any, Any, Any, Any]:
        """``(corpus, train, valid, test)``: the corpus and its ``(N,)`` token streams."""
        corpus = load_corpus(self.corpus, self.data_dir)
        return (corpus, limit_tokens(corpus.train, self.train_tokens, "--train-tokens"),
                limit_tokens(corpus.valid, self.valid_tokens, "--valid-tokens"),
                limit_tokens(corpus.test, self.test_tokens, "--test-tokens"))


def limit_tokens(data: Any, tokens: int | None, flag: str) -> Any:
    """The first ``tokens`` of ``data`` (all for None); ``flag`` names the limit in errors."""
    if tokens is None:
        return data
    if tokens < 2:
        raise ValueError(f"{flag} must be >= 2, got {tokens}")
    return data[:tokens]


@dataclass
class RunConfig:
    """Data order, optimisation and bookkeeping of a training run.

    Run length: ``max_steps`` optimiser steps, or ``epochs`` (converted with the task's
    steps per epoch). ``cosine_start`` and ``when`` count epochs; ``eval_interval`` None
    validates once per epoch. ``save`` is the run folder ('' writes nothing); a folder that
    already holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it).
    """

    batch_size: int = 20
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 35
    eval_bptt: int | None = None
    random_bptt: bool = False
    carry: str = "full"
    alpha: float = 0.0
    beta: float = 0.0
    activity_penalty: float = 0.0
    activity_target: float = 0.0
    optimizer: str = "adamw"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    momentum: float = 0.0
    wdecay: float = 0.0
    wdecay_bias: float = 0.0
    wdecay_thr: float = 0.0
    lr_bias: float = 1.0
    lr_thr: float = 1.0
    clip: float = 0.25
    epochs: float | None = None
    max_steps: int | None = None
    schedule: str = "constant"
    cosine_start: float = 0.0
    min_lr_ratio: float = 0.0
    when: list[float] = field(default_factory=list)
    gamma: float = 0.1
    warmup_steps: int = 0
    seed: int = 1111
    deterministic: bool = True
    threads: int | None = None
    device: str | None = None
    log_interval: int = 50
    eval_interval: int | None = None
    save_interval: int = 0
    save: str = "runs/lm"
    resume: bool = False
    overwrite: bool = False
    stop_at: int | None = None
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.carry = check_choice("carry", self.carry, CARRY_MODES)
        self.when = list(self.when)
        for flag, value in (("--max-steps", self.max_steps), ("--stop-at", self.stop_at),
                            ("--eval-bptt", self.eval_bptt)):
            if value is not None:
                check_int(flag, value, low=1)
        for flag, value in (("--batch-size", self.batch_size), ("--bptt", self.bptt),
                            ("--eval-batch-size", self.eval_batch_size),
                            ("--test-batch-size", self.test_batch_size)):
            check_int(flag, value, low=1)
        check_device(self.device)
        for flag, value in (("--save-interval", self.save_interval),
                            ("--warmup-steps", self.warmup_steps)):
            check_int(flag, value, low=0)
        check_real("--activity-penalty", self.activity_penalty, low=0.0)
        check_real("--activity-target", self.activity_target, low=0.0, high=1.0, high_open=True)
        self._check_optimizer_settings()

    def _optimizer_settings(self) -> dict[str, Any]:
        """The :class:`TrainConfig` fields that do not depend on the data."""
        return dict(lr=self.lr, optimizer=self.optimizer, beta1=self.beta1, beta2=self.beta2,
                    momentum=self.momentum, wdecay=self.wdecay, wdecay_bias=self.wdecay_bias,
                    wdecay_thr=self.wdecay_thr, lr_bias=self.lr_bias, lr_thr=self.lr_thr,
                    clip=self.clip, scale_lr_by_seq_len=self.random_bptt, seed=self.seed,
                    deterministic=self.deterministic)

    def _check_optimizer_settings(self) -> None:
        """Validate the optimiser settings with :class:`TrainConfig`'s own checks now, before
        any data is read (the Trainer's config needs the epoch length); errors name the flag."""
        try:
            TrainConfig(max_steps=1, schedule=self.schedule, min_lr_ratio=self.min_lr_ratio,
                        gamma=self.gamma, **self._optimizer_settings())
        except ValueError as e:
            field, _, rest = str(e).partition(" ")
            raise ValueError(f"--{field.replace('_', '-')} {rest}") from None

    def max_steps_for(self, steps_per_epoch: int) -> int:
        """``max_steps``, or ``epochs`` converted to optimiser steps."""
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is None:
            raise ValueError("give --max-steps or --epochs")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"--epochs must be a finite number > 0, got {self.epochs}")
        return max(1, round(self.epochs * steps_per_epoch))

    def train_config(self, steps_per_epoch: int, fine_tune_steps: int | None = None
                     ) -> TrainConfig:
        """The Trainer's settings; epochs are converted to steps.

        With ``fine_tune_steps``: that many steps at the run's optimiser settings, with a
        constant LR, no validation and no output (``dualsparse prune`` fine-tuning).
        """
        settings = self._optimizer_settings()
        if fine_tune_steps is not None:
            settings.update(max_steps=fine_tune_steps, eval_interval=0, out_dir=None,
                            progress=False)
        else:
            settings.update(
                max_steps=self.max_steps_for(steps_per_epoch), schedule=self.schedule,
                cosine_start=round(self.cosine_start * steps_per_epoch),
                min_lr_ratio=self.min_lr_ratio,
                when=tuple(round(w * steps_per_epoch) for w in self.when), gamma=self.gamma,
                warmup_steps=self.warmup_steps,
                eval_interval=(self.eval_interval if self.eval_interval is not None
                               else steps_per_epoch),
                log_interval=self.log_interval, save_interval=self.save_interval,
                stop_at=self.stop_at, out_dir=self.save or None,
                tensorboard=self.tensorboard, progress=self.progress)
        return TrainConfig(**settings)


@dataclass
class PruneConfig:
    """Weight pruning during training; ``prune_method`` None trains dense.

    ``prune_start`` / ``prune_end`` / ``prune_freq`` / ``prune_ramp`` are optimiser steps;
    ``prune_rounds`` counts pruning rounds (iterative), mask updates (agp) or, without
    ``prune_freq``, threshold updates (narang). ``prune_block`` None means 4x4 for
    block/gl/glp and 1x1 for magnitude. ``prune_schedule`` None takes the method's default
    (:data:`METHOD_SCHEDULES`: agp for magnitude, Narang's gradual threshold for block and
    glp as in the papers, none for gl, whose cut at ``prune_end`` zeroes the blocks with RMS
    below ``gl_threshold``). Narang's ``q`` is the ``prune_q_percentile``-th percentile of
    ``|w|`` (``prune_q_from="weights"``, slopes scaled by ``N_b^(1/4)`` for blocks) or of the
    block scores (``"blocks"``) when pruning starts; None takes ``100 * prune_target``.
    """

    prune_method: str | None = None
    prune_target: float | None = None
    prune_schedule: str | None = None
    prune_start: int = 0
    prune_end: int | None = None
    prune_rounds: int = 10
    prune_freq: int | None = None
    prune_ramp: int | None = None
    prune_ramp_mult: float = 1.5
    prune_q_percentile: float | None = None
    prune_q_from: str = "weights"
    prune_block: tuple[int, int] | None = None
    prune_score: str = "max"
    prune_tensors: str = DEFAULT_PRUNE_TENSORS
    prune_scope: str = "layer"
    group_lasso: float = 0.0
    gl_threshold: float = 1e-3

    def __post_init__(self) -> None:
        if self.prune_method is not None:
            check_choice("--prune-method", self.prune_method, PRUNE_METHODS)
            if self.prune_schedule is None:
                self.prune_schedule = METHOD_SCHEDULES[self.prune_method]
        if self.prune_schedule is not None:
            check_choice("--prune-schedule", self.prune_schedule, PRUNE_SCHEDULES)
        check_choice("--prune-q-from", self.prune_q_from, Q_SOURCES)
        if self.prune_block is not None:
            self.prune_block = check_block("--prune-block", self.prune_block)
        check_real("--gl-threshold", self.gl_threshold, low=0.0, low_open=True)

    def q_percentile(self) -> float:
        """Narang's q percentile: ``prune_q_percentile``, else ``100 * prune_target``
        (else 90, the papers' choice)."""
        if self.prune_q_percentile is not None:
            return check_real("--prune-q-percentile", self.prune_q_percentile, low=0.0,
                              high=100.0, low_open=True)
        if self.prune_target:
            return round(100.0 * self.prune_target, 9)
        return 90.0


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "run": RunConfig,
                             "prune": PruneConfig}
_OWNER = {f.name: name for name, cls in SECTIONS.items() for f in fields(cls)}


def field_names() -> set[str]:
    """Every field name of the four sections (the flat keys and argparse dests)."""
    return set(_OWNER)


def canonical(values: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """``values`` (flat) with :data:`ALIASES` renamed to field names.

    Raises:
        ValueError: a field given twice (by name and alias) or, if ``strict``, unknown keys.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name in out:
            raise ValueError(f"LM config key {name!r} given twice (also as {key!r})")
        if name in _OWNER:
            out[name] = value
        elif strict:
            unknown = sorted(k for k in values if ALIASES.get(k, k) not in _OWNER)
            raise ValueError(f"unknown LM run config keys {unknown}")
    return out


@dataclass
class LMConfig:
    """Everything a language-model run needs (see the module docstring)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def __post_init__(self) -> None:
        if self.run.activity_penalty and self.model.cell != "EGRU":
            raise ValueError(f"--activity-penalty needs --cell EGRU ({self.model.cell} "
                             "has no events)")

    def to_dict(self) -> dict[str, Any]:
        """``{"model": {...}, "data": {...}, "run": {...}, "prune": {...}}`` (JSON-safe)."""
        out = {name: asdict(getattr(self, name)) for name in SECTIONS}
        block = out["prune"]["prune_block"]
        out["prune"]["prune_block"] = None if block is None else list(block)
        return out

    def flat(self) -> dict[str, Any]:
        """All fields in one dict (field name -> value)."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True) -> LMConfig:
        """Inverse of :meth:`to_dict`; also takes a flat dict with :data:`ALIASES`
        (sweep run configs, runs saved before the sections existed). ``strict=False``
        ignores unknown keys (e.g. a stored run's ``task`` or ``preset``)."""
        if any(isinstance(values.get(name), dict) for name in SECTIONS):
            flat: dict[str, Any] = {}
            for name in SECTIONS:
                flat.update(values.get(name) or {})
            values = {**{k: v for k, v in values.items() if k not in SECTIONS}, **flat}
        flat = canonical(values, strict=strict)
        parts = {name: {} for name in SECTIONS}
        for key, value in flat.items():
            parts[_OWNER[key]][key] = value
        return cls(**{name: SECTIONS[name](**parts[name]) for name in SECTIONS})

    @classmethod
    def from_namespace(cls, args: Any) -> LMConfig:
        """From parsed flags whose dests are field names (other attributes are ignored)."""
        values = {k: v for k, v in vars(args).items() if k in _OWNER}
        return cls.from_dict(values)


__all__ = ["ALIASES", "CARRY_MODES", "CELLS", "DEFAULT_PRUNE_TENSORS", "DataConfig", "LMConfig",
           "METHOD_SCHEDULES", "ModelConfig", "PRUNE_METHODS", "PRUNE_SCHEDULES", "PruneConfig",
           "Q_SOURCES", "RunConfig", "canonical", "field_names",
           "limit_tokens"]
