"""Named training recipes for ``dualsparse train --preset NAME``.

A preset is a dict of :class:`~dualsparse.apps.lm.config.LMConfig` field values (checked
against the fields when this module is imported); flags given on the command line, or keys
of a sweep's run config, override it. ``cpu-small`` is sized to train on Penn Treebank on 2
CPU cores in about 5 minutes; the paper presets follow the recipes in ``docs/lm.md`` and
need a GPU to finish (they start and run on CPU).

Paper presets, sources: EGRU (Subramoney et al., ICLR 2023; EvNN v0.2.0 benchmark
configuration): 3 EGRU layers (1350, 1350, 750), tied 750-d embedding, AdamW betas (0, 0.999),
random BPTT around 70 with the LR scaled by the segment length, clip 0.1, embedding dropout
0.1, locked dropout 0.6 (PTB) / 0.7 (WT2) on embeddings, 0.25 between layers, DropConnect 0.7,
pseudo-derivative width 3.6 (EvNN's flag sets both the peak and the inverse half-width: in our
terms surrogate_gamma 3.6 and surrogate_width 1/3.6, a triangle of area 1), threshold mean
0.01, threshold LR x0, cosine LR from epoch 700 (PTB) / 400 (WT2). EvNN's ``train.py`` puts
every parameter except the thresholds (weights, biases, embedding) into one AdamW group with
its ``--weight_decay``, and the thresholds into a group with decay 0: so these presets decay
biases as much as weights (``wdecay_bias == wdecay``) and thresholds not at all. EvNN v0.2
learns ``theta`` directly and clamps it to [0, 1] before each forward pass: the presets use
``threshold_parameterisation="clamp"`` (the same thresholds; with threshold LR 0 both forms
train identically). AWD-LSTM (Merity et al., 2018; awd-lstm-lm README commands without
fine-tuning): 3 LSTM layers (1150, 1150, 400), tied 400-d embedding, SGD lr 30, clip 0.25,
bptt 70, dropouts 0.4/0.25 (PTB) or 0.4/0.2 (WT2) output/hidden, dropouti 0.4 (PTB) or 0.65
(WT2), dropoute 0.1, wdrop 0.5, AR 2, TAR 1, wdecay 1.2e-6; the switch to averaged SGD is not
implemented, so these reproduce the recipe only up to that switch.
"""

from __future__ import annotations

from typing import Any

from dualsparse.apps.lm.config import LMConfig

_EGRU_PAPER: dict[str, Any] = {
    "cell": "EGRU", "emb_size": 750, "hidden_sizes": [1350, 1350, 750], "optimizer": "adamw",
    "beta1": 0.0, "beta2": 0.999, "bptt": 70, "random_bptt": True, "dropoute": 0.1,
    "dropouth": 0.25, "dropout": 0.25, "dropconnect": 0.7, "clip": 0.1,
    "surrogate_gamma": 3.6, "surrogate_width": 1.0 / 3.6,
    "threshold_mean": 0.01, "threshold_parameterisation": "clamp", "lr_thr": 0.0,
    "wdecay_thr": 0.0, "schedule": "cosine", "carry": "output", "eval_batch_size": 10,
    "test_batch_size": 1,
}

_AWD_LSTM: dict[str, Any] = {
    "cell": "LSTM", "emb_size": 400, "hidden_sizes": [1150, 1150, 400], "optimizer": "sgd",
    "lr": 30.0, "clip": 0.25, "bptt": 70, "random_bptt": True, "dropout": 0.4,
    "dropoute": 0.1, "dropconnect": 0.5, "alpha": 2.0, "beta": 1.0, "wdecay": 1.2e-6,
    "wdecay_bias": 1.2e-6, "schedule": "constant", "eval_batch_size": 10, "test_batch_size": 1,
}

#: Zaremba et al. 2014 "small" as in TensorFlow's ptb_word_lm: 2 x 200 LSTM, 200-d untied
#: embedding, no dropout, SGD halved every epoch from epoch 5 on (``when`` counts epochs from
#: 0), 13 epochs, bptt 20, batch 20, every weight U(-0.1, 0.1). Published test perplexity 114.5
#: (paper) / 115.91 (TF reproduction). ptb_word_lm's cost is the cross-entropy summed over the
#: 20 time steps (averaged over the batch) with lr 1 and clip 5; our loss is the mean over all
#: tokens, so the same update is lr 1 x 20 = 20 with clip 5 / 20 = 0.25.
_PTB_SMALL: dict[str, Any] = {
    "corpus": "ptb", "emb_size": 200, "tie_weights": "no", "batch_size": 20, "bptt": 20,
    "random_bptt": False, "dropout": 0.0, "dropouth": 0.0, "dropouti": 0.0, "dropoute": 0.0,
    "dropconnect": 0.0, "epochs": 13, "init_range": 0.1, "eval_batch_size": 20,
    "test_batch_size": 1, "eval_bptt": 200, "seed": 1111, "threads": 1,
}

PRESETS: dict[str, dict[str, Any]] = {
    "ptb-small-lstm": {**_PTB_SMALL, "cell": "LSTM", "hidden_sizes": [200, 200], "optimizer": "sgd",
                       "lr": 20.0, "clip": 0.25, "schedule": "step",
                       "when": [4, 5, 6, 7, 8, 9, 10, 11, 12], "gamma": 0.5},
    # the EGRU of the same parameter count (4,657,336 vs 4,653,200: +0.09%) and budget, tuned
    # (docs/results.md, "Reference runs"): the 332-d embedding tied to the decoder frees the
    # parameters of an untied 10,000 x 200 decoder for 2 x 332 units; AdamW as the EGRU
    # recipes, lr 3e-3, weight decay 0.1 on weights and 0.01 on biases, and the activity
    # penalty (3 x the event rate above 0.22 per layer) that keeps both layers above 0.75
    # activity sparsity; 5 epochs of the cosine schedule
    "ptb-small-egru": {**_PTB_SMALL, "cell": "EGRU", "emb_size": 332, "hidden_sizes": [332, 332],
                       "tie_weights": "yes", "optimizer": "adamw", "lr": 3e-3, "beta1": 0.0,
                       "beta2": 0.999, "wdecay": 0.1, "wdecay_bias": 0.01, "clip": 0.25,
                       "schedule": "cosine", "threshold_mean": 0.01, "activity_penalty": 3.0,
                       "activity_target": 0.22, "epochs": 5},
    # the first ptb-small-egru (until 2026-11-27): 2 x 211 (4,650,243), untied 200-d
    # embedding; lr 4e-3 from the 1500-step tuning sweep, the only setting with both layers
    # above 0.75 activity sparsity (examples/sweeps/ptb_small_egru_tuning.yaml); 5 epochs:
    # with the LSTM's 13 the cosine schedule keeps the rate high while the model overfits from
    # epoch 4 (validation 174.6 vs 151.7 at 5 epochs). Test 141.74 = 1.27x the LSTM
    "ptb-small-egru-untied": {**_PTB_SMALL, "cell": "EGRU", "hidden_sizes": [211, 211],
                              "optimizer": "adamw", "lr": 4e-3, "beta1": 0.0, "beta2": 0.999,
                              "wdecay": 0.01, "clip": 0.25, "schedule": "cosine",
                              "threshold_mean": 0.01, "epochs": 5},
    # make demo: a 2 x 200 EGRU trained for 3000 steps (1.3 epochs of PTB) at 2 threads; the
    # configuration of shared/notes/ptb-small-baseline.md (threshold mean 0.01), docs/lm.md
    "ptb-demo": {
        "corpus": "ptb", "cell": "EGRU", "emb_size": 200, "hidden_sizes": [200, 200],
        "tie_weights": "no", "optimizer": "adamw", "lr": 3e-3, "beta1": 0.0, "beta2": 0.999,
        "wdecay": 0.01, "batch_size": 20, "bptt": 20, "random_bptt": False, "clip": 0.25,
        "threshold_mean": 0.01, "schedule": "cosine", "max_steps": 3000,
        "eval_interval": 1500, "valid_tokens": 20000, "eval_batch_size": 10,
        "test_batch_size": 1, "eval_bptt": 200, "seed": 1111, "threads": 2,
    },
    "cpu-small": {
        "corpus": "ptb", "cell": "EGRU", "emb_size": 128, "hidden_sizes": [256, 128],
        "optimizer": "adamw", "lr": 3e-3, "beta1": 0.0, "beta2": 0.999, "wdecay": 0.01,
        "batch_size": 20, "bptt": 35, "random_bptt": False, "dropout": 0.0, "dropouth": 0.0,
        "dropouti": 0.0, "dropoute": 0.0, "dropconnect": 0.0, "clip": 0.25, "threshold_mean": 0.1,
        "schedule": "cosine", "min_lr_ratio": 0.1, "max_steps": 600, "eval_interval": 200,
        "valid_tokens": 20000, "eval_batch_size": 10, "test_batch_size": 1, "eval_bptt": 280,
        "seed": 1111, "threads": 1,
    },
    "ptb-egru": {**_EGRU_PAPER, "corpus": "ptb", "epochs": 1000, "batch_size": 64, "lr": 0.0012,
                 "wdecay": 0.10, "wdecay_bias": 0.10, "dropouti": 0.6, "cosine_start": 700,
                 "seed": 9612},
    "wt2-egru": {**_EGRU_PAPER, "corpus": "wikitext-2", "epochs": 800, "batch_size": 128,
                 "lr": 0.001, "wdecay": 0.12, "wdecay_bias": 0.12, "dropouti": 0.7,
                 "cosine_start": 400, "seed": 913420},
    "ptb-lstm": {**_AWD_LSTM, "corpus": "ptb", "epochs": 500, "batch_size": 20, "dropouth": 0.25,
                 "dropouti": 0.4, "seed": 141},
    "wt2-lstm": {**_AWD_LSTM, "corpus": "wikitext-2", "epochs": 750, "batch_size": 80,
                 "dropouth": 0.2, "dropouti": 0.65, "seed": 1882},
}


def get_preset(name: str) -> dict[str, Any]:
    """A copy of preset ``name``'s field values; ``ValueError`` listing the known ones
    otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return {k: (list(v) if isinstance(v, list) else v) for k, v in PRESETS[name].items()}


def with_preset(name: str | None, explicit: dict[str, Any]) -> dict[str, Any]:
    """Preset ``name``'s values overridden by ``explicit`` ones (field names).

    The run length is one setting given in two units: an explicit ``epochs`` drops the
    preset's ``max_steps`` (which would otherwise win over it), and vice versa.
    """
    values = get_preset(name) if name is not None else {}
    if explicit.get("epochs") is not None:
        values.pop("max_steps", None)
    if explicit.get("max_steps") is not None:
        values.pop("epochs", None)
    return {**values, **explicit}


def preset_config(name: str) -> LMConfig:
    """Preset ``name`` as a config (the other fields at their defaults)."""
    return LMConfig.from_dict(get_preset(name))


for _name in PRESETS:  # a misspelt field in a preset fails at import, naming the preset
    try:
        preset_config(_name)
    except ValueError as exc:
        raise ValueError(f"preset {_name!r}: {exc}") from None


__all__ = ["PRESETS", "get_preset", "preset_config", "with_preset"]
