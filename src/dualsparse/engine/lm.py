"""Language-model evaluation through the engine, and the engine-vs-PyTorch comparison.

:class:`~dualsparse.engine.sparse_lm.SparseLM` (re-exported here) runs the whole model.

* :func:`evaluate_lm_sparse` -- loss/perplexity over a token stream in segment mode, like
  ``evaluate_lm`` with the state carried throughout (``carry="full"``).
* :func:`evaluate_perplexity_sparse` -- just the perplexity (``dualsparse eval --engine
  sparse``).
* :func:`compare_with_torch` -- perplexity on both paths, activity and weight density, ideal
  speed-up (measured MACs) and measured speed-up over a dense PyTorch model of the same sizes.
  (It evaluates the PyTorch path with the training code, so it belongs to the LM app; it
  stays here until it moves to ``dualsparse.apps.lm``.)
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import ActivityMeter
from dualsparse.engine.formats import Block
from dualsparse.engine.sparse_lm import Generation, SparseLM, check_lm, sample_token
from dualsparse.models.lm import RNNLanguageModel
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


def _weight_density(lm: RNNLanguageModel) -> float:
    """Nonzero fraction of the recurrent and decoder weights (what the engine multiplies)."""
    nnz = total = 0
    mats = [w for rnn in lm.rnns for w in (rnn.weight_ih_l0, rnn.weight_hh_l0)]
    for w in [*mats, lm.decoder.weight]:
        nnz += int((w != 0).sum())
        total += w.numel()
    return nnz / total


def _dense_torch_twin(lm: RNNLanguageModel) -> nn.ModuleList:
    """``torch.nn.GRU``/``LSTM`` layers (oneDNN) of the model's sizes, dense weights."""
    cls = nn.LSTM if lm.cell == "lstm" else nn.GRU
    in_sizes = (lm.emb_size, *lm.hidden_sizes[:-1])
    return nn.ModuleList(cls(i, h) for i, h in zip(in_sizes, lm.hidden_sizes, strict=True)).eval()


def _time_dense(lm: RNNLanguageModel, tokens: torch.Tensor, segment: int, clock: str
                ) -> tuple[float, float]:
    """Seconds per token of the dense PyTorch twin at batch 1: ``(streaming, sequence)``:
    one token per call, and segments of ``segment`` tokens per call."""
    twin = _dense_torch_twin(lm)
    emb = lm.embedding.weight.detach().clone()
    dec_w, dec_b = lm.decoder.weight.detach().clone(), lm.decoder.bias.detach().clone()

    def forward(ids: torch.Tensor, states: list) -> None:
        x = F.embedding(ids, emb)
        for k, rnn in enumerate(twin):
            x, states[k] = rnn(x, states[k])
        F.linear(x, dec_w, dec_b)

    ids = tokens.view(-1, 1)
    now = CLOCKS[clock]
    with torch.no_grad():
        forward(ids[:2], [None] * len(twin))  # warm-up
        states: list = [None] * len(twin)
        t0 = now()
        for t in range(ids.shape[0]):
            forward(ids[t:t + 1], states)
        stream = (now() - t0) / ids.shape[0]
        states = [None] * len(twin)
        t0 = now()
        for s in range(0, ids.shape[0], segment):
            forward(ids[s:s + segment], states)
        seq = (now() - t0) / ids.shape[0]
    return stream, seq


def compare_with_torch(model: nn.Module, tokens: torch.Tensor, batch_size: int = 1,
                       bptt: int = 64, block: Block = "auto", threads: int = 1,
                       timing_tokens: int = 1000, repeats: int = 3) -> dict[str, Any]:
    """Perplexity through PyTorch and through the engine, densities and speed-ups.

    Args:
        model: an :class:`RNNLanguageModel` (evaluated in eval mode; its mode is restored).
        threads: engine threads, and PyTorch's thread count during the call (restored).
        tokens: ``(N,)`` evaluation token ids.
        batch_size, bptt: as ``dualsparse.train.lm_task.evaluate_lm`` (state fully carried).
        timing_tokens: tokens (batch 1) over which engine and dense PyTorch are timed (this
            thread's CPU time at 1 thread, wall time otherwise; ``clock`` in the result).
        repeats: timings are medians over this many runs.

    Returns a dict: ``ppl_torch``, ``ppl_engine``, ``ppl_rel_diff``, ``activity_density``
    (nonzero outputs of all layers), ``weight_density`` (recurrent + decoder weights),
    ``ideal_speedup`` (dense / effective MACs per token, measured by the accounting module,
    decoder included) and ``ideal_speedup_rnn`` (recurrent layers only),
    ``engine_us_per_token``, ``dense_stream_us_per_token`` / ``dense_seq_us_per_token``
    (``torch.nn.GRU``/``LSTM`` twin of the same sizes, dense weights, one token per call /
    ``bptt`` tokens per call), ``speedup_stream`` / ``speedup_seq`` (dense / engine) and
    ``speedup_seq / ideal_speedup`` as ``ratio_seq``, plus ``packed_bytes`` / ``dense_bytes``.
    """
    from dualsparse.train.lm_task import evaluate_lm  # leaves engine/ with this function

    lm = check_lm(model)
    was_training = lm.training
    torch_threads = torch.get_num_threads()
    lm.eval()
    try:
        torch.set_num_threads(threads)
        meter = ActivityMeter()
        ref = evaluate_lm(lm, tokens, batch_size, bptt, meter=meter)
        report = meter.report()
        sparse = SparseLM.from_model(lm, block=block, threads=threads)
        eng = evaluate_lm_sparse(sparse, tokens, batch_size)
        timing = tokens[: max(2, timing_tokens)]
        clock = "cpu" if threads == 1 else "wall"
        t_engine = float(np.median([evaluate_lm_sparse(sparse, timing, 1, clock=clock)
                                    ["seconds_per_token"] for _ in range(repeats)]))
        dense = [_time_dense(lm, timing, bptt, clock) for _ in range(repeats)]
        t_stream = float(np.median([d[0] for d in dense]))
        t_seq = float(np.median([d[1] for d in dense]))
    finally:
        lm.train(was_training)
        torch.set_num_threads(torch_threads)
    ideal = report.total_dense_macs / max(report.total_effective_macs, 1e-12)
    return {
        "ppl_torch": ref["ppl"], "ppl_engine": eng["ppl"],
        "ppl_rel_diff": abs(eng["ppl"] - ref["ppl"]) / ref["ppl"], "tokens": eng["tokens"],
        "activity_density": eng["activity"], "activity_density_torch": ref["activity"],
        "weight_density": _weight_density(lm),
        "ideal_speedup": ideal, "ideal_speedup_rnn": report.rnn_reduction,
        "engine_us_per_token": t_engine * 1e6,
        "dense_stream_us_per_token": t_stream * 1e6, "dense_seq_us_per_token": t_seq * 1e6,
        "speedup_stream": t_stream / t_engine, "speedup_seq": t_seq / t_engine,
        "ratio_seq": t_seq / t_engine / ideal,
        "packed_bytes": sparse.nbytes, "dense_bytes": sparse.dense_nbytes,
        "threads": threads, "block": block, "clock": clock,
    }


__all__ = ["CLOCKS", "Generation", "SparseLM", "compare_with_torch", "evaluate_lm_sparse",
           "evaluate_perplexity_sparse", "sample_token"]
