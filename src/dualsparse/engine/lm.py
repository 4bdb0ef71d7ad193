"""Language-model evaluation through the engine.

:class:`~dualsparse.engine.sparse_lm.SparseLM` (re-exported here) runs the whole model.

* :func:`evaluate_lm_sparse` -- loss/perplexity over a token stream in segment mode, like
  ``dualsparse.apps.lm.evaluate.evaluate_lm`` with the state carried throughout
  (``carry="full"``).
* :func:`evaluate_perplexity_sparse` -- just the perplexity (``dualsparse eval --engine
  sparse``).

The comparison with PyTorch (perplexity on both paths, ideal and measured speed-ups) is
:func:`dualsparse.apps.lm.compare.compare_with_torch`: it evaluates the PyTorch path with the
LM app's code, and the engine never imports the app.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.engine.formats import Block
from dualsparse.engine.sparse_lm import Generation, SparseLM, sample_token
from dualsparse.validation import check_choice, check_int

#: ``"cpu"``: this thread's CPU time (single-threaded timings on a shared machine, immune to
#: being descheduled); ``"wall"``: elapsed time.
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def _batchify(source: torch.Tensor, batch_size: int) -> torch.Tensor:
    if not isinstance(source, torch.Tensor) or source.dim() != 1:
        raise ValueError("source must be a 1-D tensor of token ids")
    batch_size = check_int("batch_size", batch_size, low=1)
    rows = source.numel() // batch_size
    if rows < 2:
        raise ValueError(f"need at least 2 tokens per stream, got {source.numel()} tokens for "
                         f"batch_size {batch_size}")
    return source[: rows * batch_size].view(batch_size, rows).t().contiguous()


def evaluate_lm_sparse(model: nn.Module | SparseLM, source: torch.Tensor, batch_size: int = 1,
                       block: Block = "auto", threads: int = 1, chunk: int = 64,
                       clock: str = "wall") -> dict[str, float]:
    """Cross-entropy (nats/token) and perplexity of a token stream through the engine.

    Args:
        model: an :class:`RNNLanguageModel` (packed here; eval mode) or a :class:`SparseLM`.
        source: ``(N,)`` token ids, cut into ``batch_size`` streams (the tail is dropped), the
            state carried from the first token to the last (``evaluate_lm`` with
            ``carry="full"``).
        chunk: tokens per segment (each segment runs layer by layer; results do not depend
            on it beyond float rounding order, which is identical: see SparseRuntime).
        clock: ``"wall"`` or ``"cpu"`` (see :data:`CLOCKS`) for ``seconds``.

    Returns:
        ``{"loss", "ppl", "tokens", "activity", "seconds", "seconds_per_token"}``; activity is
        the fraction of nonzero layer outputs, seconds the wall time of the engine.
    """
    now = CLOCKS[check_choice("clock", clock, sorted(CLOCKS))]
    chunk = check_int("chunk", chunk, low=1)
    if not isinstance(model, SparseLM):
        model = SparseLM.from_model(model, block=block, threads=threads)
    data = _batchify(source, batch_size)
    inputs, targets = data[:-1], data[1:]
    model.reset(batch_size)
    model.runtime.reset_stats()
    total, seconds = 0.0, 0.0
    for start in range(0, inputs.shape[0], chunk):
        t0 = now()
        logits = model.run(inputs[start:start + chunk], reset=False)
        seconds += now() - t0
        tgt = targets[start:start + chunk]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                       reduction="sum"))
    count = targets.numel()
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count,
            "activity": model.runtime.stats.activity(), "seconds": seconds,
            "seconds_per_token": seconds / count}


def evaluate_perplexity_sparse(model: nn.Module, tokens: torch.Tensor, batch_size: int = 1,
                               block: Block = "auto", threads: int = 1) -> float:
    """Perplexity of ``tokens`` ``(N,)`` through the sparse engine (see
    :func:`evaluate_lm_sparse`); for ``dualsparse eval --engine sparse``."""
    return evaluate_lm_sparse(model, tokens, batch_size, block, threads)["ppl"]


__all__ = ["CLOCKS", "Generation", "SparseLM", "evaluate_lm_sparse",
           "evaluate_perplexity_sparse", "sample_token"]
