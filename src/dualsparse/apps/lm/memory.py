"""Memory estimates of the LM app, checked before anything large is allocated.

The estimates are deliberately rough upper bounds (float32, every activation of a segment kept
for the backward pass, AdamW's two moments); they only have to catch sizes that cannot fit,
e.g. ``--nhid 200000``, ``--bptt 100000000`` on a full corpus, or a checkpoint JSON claiming
``hidden_sizes=[300000]``, and say which flag to change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

FLOAT_BYTES = 4
#: float tensors kept per hidden unit and time step (gates, states, events, their grads)
STATE_FLOATS = 16
#: floats per logit and time step (logits, log-softmax, their gradient)
LOGIT_FLOATS = 3
#: copies of each parameter while training (weights, gradient, two AdamW moments)
TRAIN_COPIES = 4
GATES = {"EGRU": 3, "GRU": 3, "LSTM": 4}


def machine_bytes() -> int:
    """Physical memory of this machine in bytes (``DUALSPARSE_MAX_BYTES`` overrides it)."""
    override = os.environ.get("DUALSPARSE_MAX_BYTES")
    if override:
        return int(override)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf
        return 1 << 40


def lm_parameters(vocab: int, emb: int, hidden: Sequence[int], cell: str = "EGRU",
                  tied: bool = False) -> int:
    """Parameter count of an :class:`~dualsparse.models.lm.RNNLanguageModel` (biases and
    thresholds included, to a few per cent)."""
    gates = GATES.get(str(cell).upper(), 4)
    total, width = vocab * emb, emb
    for h in hidden:
        total += gates * h * (width + h) + 2 * gates * h + 2 * h
        width = h
    return total + (0 if tied else vocab * width) + vocab


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_model_config(config: dict[str, Any], where: str) -> None:
    """Refuse a stored ``model_config`` whose parameters alone exceed this machine's memory
    (before the model is built); ``where`` names the checkpoint."""
    try:
        n = lm_parameters(int(config["vocab_size"]), int(config["emb_size"]),
                          [int(h) for h in config["hidden_sizes"]], config.get("cell", "EGRU"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: model_config is incomplete or malformed ({exc!r})") from None
    need, have = n * FLOAT_BYTES, machine_bytes()
    if need > have:
        raise ValueError(f"{where}: model_config asks for {n:,} parameters ({_gb(need)}, "
                         f"hidden_sizes {config['hidden_sizes']}), more than this machine's "
                         f"{_gb(have)}; the checkpoint JSON is damaged or for another machine")


def check_training_memory(vocab: int, emb: int, hidden: Sequence[int], cell: str,
                          batch: int, bptt: int, rows: int, eval_batch: int, eval_bptt: int,
                          eval_rows: int) -> int:
    """Estimated peak bytes of training (parameters x :data:`TRAIN_COPIES` plus the
    activations of one segment of ``min(bptt, rows)`` steps, or of an evaluation segment);
    ``ValueError`` naming the flag to change when it exceeds this machine's memory."""
    params = lm_parameters(vocab, emb, hidden, cell) * FLOAT_BYTES * TRAIN_COPIES
    per_step = vocab * LOGIT_FLOATS + 2 * emb + STATE_FLOATS * sum(hidden)
    train_act = min(bptt, max(rows - 1, 1)) * batch * per_step * FLOAT_BYTES
    eval_act = min(eval_bptt, max(eval_rows - 1, 1)) * eval_batch * per_step * FLOAT_BYTES
    need, have = params + max(train_act, eval_act), machine_bytes()
    if need > have:
        if params >= max(train_act, eval_act):
            flags = "--hidden-sizes/--emb-size"
        elif train_act >= eval_act:
            flags = "--bptt or --batch-size"
        else:
            flags = "--eval-bptt or --eval-batch-size"
        raise ValueError(f"training would need about {_gb(need)} ({_gb(params)} of parameters "
                         f"and optimiser state, {_gb(max(train_act, eval_act))} of activations "
                         f"per segment), more than this machine's {_gb(have)}; lower {flags}")
    return need


__all__ = ["check_model_config", "check_training_memory", "lm_parameters", "machine_bytes"]
