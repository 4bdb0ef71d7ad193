"""PyTorch vs the event-driven engine on a language model: perplexity on both paths, the
ideal speed-up from the measured MACs, and measured speed-ups over dense PyTorch twins.

Used by ``make demo`` and ``benchmarks/bench_engine.py --lm``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.accounting import ActivityMeter
from dualsparse.apps.lm.evaluate import evaluate_lm
from dualsparse.engine.lm import CLOCKS, SparseLM, _check_lm, evaluate_lm_sparse
from dualsparse.engine.pack import Block
from dualsparse.models.lm import RNNLanguageModel


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
        batch_size, bptt: as :func:`~dualsparse.apps.lm.evaluate.evaluate_lm` (state fully carried).
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
    lm = _check_lm(model)
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



__all__ = ["compare_with_torch"]
