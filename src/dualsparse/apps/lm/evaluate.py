"""Language-model evaluation: perplexity, activity and MAC accounting over a token stream.

:func:`evaluate_lm` computes perplexity over a token stream (the papers test at batch 1)
and, with an :class:`~dualsparse.accounting.ActivityMeter`, per-layer activity sparsity and
dense/effective MACs per token; :func:`test_report` is the test-split report of a run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import ActivityMeter
from dualsparse.apps.lm.config import CARRY_MODES
from dualsparse.data.batching import FixedBPTT, batchify
from dualsparse.validation import check_choice


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def carry_state(state: tuple, mode: str) -> tuple:
    """State passed to the next segment: detached; ``"output"`` keeps only each layer's
    output (EGRU ``y``, LSTM ``h``) and zeroes the rest (the EGRU recipe carries ``y_T``)."""
    if mode == "full":
        return tuple(tuple(t.detach() for t in s) for s in state)
    return tuple((s[0].detach(), *(torch.zeros_like(t) for t in s[1:])) for s in state)



def evaluate_lm(model: nn.Module, source: torch.Tensor, batch_size: int, bptt: int,
                carry: str = "full", meter: ActivityMeter | None = None) -> dict[str, float]:
    """Mean cross-entropy (nats/token), perplexity and activity over a token stream.

    Args:
        model: an :class:`RNNLanguageModel` (evaluated in eval mode, no gradients).
        source: ``(N,)`` token ids; cut into ``batch_size`` columns (the tail is dropped).
        bptt: segment length; the state is carried across segments.
        meter: if given, every layer's inputs/sequences and the decoder input are added.
    """
    check_choice("carry", carry, CARRY_MODES)
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
                                           getattr(rnn, "surrogate", None),
                                           reset_mode=getattr(rnn, "reset_mode", None))
                    meter.update_decoder(seqs.decoder_input, model.decoder.weight)
                state = carry_state(state, carry)
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count,
            "activity": nonzero / max(units, 1)}



def test_report(model: nn.Module, task: Any) -> dict[str, Any]:
    """Test perplexity of ``task`` (an :class:`~dualsparse.apps.lm.task.LMTask`) at its
    ``test_batch_size`` and the accounting report (as a dict, and as ``"table"`` text)."""
    meter = ActivityMeter(None, decoder=model.decoder)
    result = task.evaluate(model, "test", meter=meter)
    report = meter.report()
    return {**result, "accounting": report.to_dict(), "table": report.format_table()}


__all__ = ["carry_state", "evaluate_lm", "test_report"]
