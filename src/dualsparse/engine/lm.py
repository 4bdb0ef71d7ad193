"""The whole language model through the sparse engine, and the engine-vs-PyTorch comparison.

:class:`SparseLM` runs :class:`dualsparse.models.lm.RNNLanguageModel` (eval mode) per token:
embedding row lookup -> every recurrent layer (:class:`SparseRuntime`, activity-indexed) ->
decoder ``b + W_dec[:, active] @ y[active]`` (only the units of the last layer that are nonzero
are read, so an EGRU's silent units cost nothing in the decoder either).

Functions for the CLI and the demo:

* :func:`evaluate_lm_sparse` -- loss/perplexity over a token stream, like
  ``dualsparse.train.lm_task.evaluate_lm`` with the state carried throughout (``carry="full"``).
* :func:`evaluate_perplexity_sparse` -- just the perplexity.
* :func:`compare_with_torch` -- perplexity on both paths, activity and weight density, ideal
  speed-up (measured MACs) and measured speed-up over a dense PyTorch model of the same sizes.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.engine import kernels as K
from dualsparse.engine.pack import (
    Block,
    PackedMatrix,
    PackedRNN,
    PanelMatrix,
    pack_matrix,
    pack_panels,
    pack_rnn,
)
from dualsparse.engine.runtime import SparseRuntime, accumulate
from dualsparse.models.lm import RNNLanguageModel

#: ``"cpu"``: this thread's CPU time (single-threaded timings on a shared machine, immune to
#: being descheduled); ``"wall"``: elapsed time.
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}

#: ``block="auto"`` at 1 thread packs the decoder in 64-row panels
#: (:class:`dualsparse.engine.pack.PanelMatrix`) when they store at most this many values per
#: nonzero weight. A dense 10000x128 decoder with half its inputs active took about 100 us in
#: panels against 330 us in (16, 1) tiles (whose 40 KB accumulator is re-read and re-written
#: once per active column) on our AMD EPYC (docs/engine.md).
PANEL_MAX_FILL = 2.0


def pack_decoder(weight: torch.Tensor, block: Block = "auto", threads: int = 1
                 ) -> PackedMatrix | PanelMatrix:
    """The decoder's format: panels (``block="auto"``, 1 thread, fill ``<= PANEL_MAX_FILL``),
    else :func:`dualsparse.engine.pack.pack_matrix` with ``block``."""
    if block == "auto" and threads == 1:
        panels = pack_panels(weight, name="decoder.weight")
        if panels.stored_values <= PANEL_MAX_FILL * max(panels.nnz, 1):
            return panels
    return pack_matrix(weight, block=block, nparts=threads, name="decoder.weight")


def accumulate_decoder(mat: PackedMatrix | PanelMatrix, x: np.ndarray, active: np.ndarray,
                       n_active: int, out: np.ndarray, threads: int = 1) -> None:
    """``out += W[:, active] @ x[active]`` for either decoder format (``x`` ``(C, B)``)."""
    if isinstance(mat, PanelMatrix):
        if x.shape[1] == 1:
            K.accumulate_panels(mat.colmap, mat.data, x.reshape(-1), active, n_active,
                                out.reshape(-1))
        else:
            K.accumulate_panels_batch(mat.colmap, mat.data, x, active, n_active, out)
    else:
        accumulate(mat, x, active, n_active, out, threads)


def _check_lm(model: nn.Module) -> RNNLanguageModel:
    model = getattr(model, "module", model)  # DDP wrapper
    if not isinstance(model, RNNLanguageModel):
        raise ValueError(f"expected an RNNLanguageModel, got {type(model).__name__}")
    return model


class SparseLM:
    """Embedding, packed recurrent stack and packed decoder of a language model.

    Args:
        runtime: the recurrent stack.
        embedding: ``(V, E)`` float32.
        decoder: packed ``(V, H_last)`` (tiles/CSC or panels); decoder_bias: ``(V,)``
            float32.
    """

    def __init__(self, runtime: SparseRuntime, embedding: np.ndarray,
                 decoder: PackedMatrix | PanelMatrix,
                 decoder_bias: np.ndarray) -> None:
        if embedding.ndim != 2 or embedding.shape[1] != runtime.input_size:
            raise ValueError(f"embedding must be (V, {runtime.input_size}), got "
                             f"{embedding.shape}")
        if decoder.shape != (embedding.shape[0], runtime.packed.layers[-1].hidden_size):
            raise ValueError(f"decoder shape {decoder.shape} does not match vocabulary "
                             f"{embedding.shape[0]} x last hidden size")
        self.runtime = runtime
        self.embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        self.decoder = decoder
        self.decoder_bias = np.ascontiguousarray(decoder_bias, dtype=np.float32)
        self.vocab_size = embedding.shape[0]
        self._active = np.zeros(runtime.input_size, dtype=np.int32)
        self.reset(1)

    @classmethod
    def from_model(cls, model: nn.Module, block: Block = "auto", threads: int = 1) -> SparseLM:
        """Pack an :class:`RNNLanguageModel` (eval mode; pruned weights as exact zeros)."""
        lm = _check_lm(model)
        if lm.training:
            raise ValueError("put the model in eval mode (model.eval()) before packing")
        layers = []
        for rnn in lm.rnns:
            layers.extend(pack_rnn(rnn, block=block, nparts=threads).layers)
        runtime = SparseRuntime(PackedRNN(layers), threads=threads)
        emb = lm.embedding.weight.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(emb).all():
            raise ValueError("embedding contains NaN or inf")
        dec = pack_decoder(lm.decoder.weight, block=block, threads=threads)
        bias = lm.decoder.bias
        b = (np.zeros(lm.vocab_size, np.float32) if bias is None
             else bias.detach().to("cpu", torch.float32).numpy())
        return cls(runtime, emb, dec, b)

    @property
    def nbytes(self) -> int:
        """Packed bytes of the recurrent layers and decoder (the embedding table excluded)."""
        return self.runtime.packed.nbytes + self.decoder.nbytes + self.decoder_bias.nbytes

    @property
    def dense_nbytes(self) -> int:
        """The same with dense float32 weights."""
        return (self.runtime.packed.dense_nbytes + self.decoder.dense_nbytes
                + self.decoder_bias.nbytes)

    def reset(self, batch_size: int = 1) -> None:
        """Zero state for ``batch_size`` streams."""
        self.runtime.reset(batch_size)
        self._logits = np.zeros((self.decoder.rows_padded, batch_size), dtype=np.float32)
        self._bias = np.ascontiguousarray(np.broadcast_to(self.decoder_bias[:, None],
                                                          (self.vocab_size, batch_size)))

    def _check_tokens(self, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().to("cpu").numpy()
        a = np.asarray(tokens)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"tokens must be integer ids, got {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got range "
                             f"[{a.min()}, {a.max()}]")
        return a.astype(np.int64)

    def _step_ids(self, ids: np.ndarray) -> np.ndarray:
        """One step for ids ``(B,)``; returns logits ``(V, B)`` (internal buffer)."""
        x = np.ascontiguousarray(self.embedding[ids].T)
        n = K.active_columns(x, self._active)
        self.runtime.step_columns(x, n, self._active)
        y, active, n_y = self.runtime.output_columns()
        self._logits[: self.vocab_size] = self._bias
        accumulate_decoder(self.decoder, y, active, n_y, self._logits, self.runtime.threads)
        return self._logits[: self.vocab_size]

    def step(self, tokens: torch.Tensor | np.ndarray | int) -> torch.Tensor:
        """One token per stream: ``(B,)`` ids (or a scalar) -> logits ``(B, V)`` (or ``(V,)``)."""
        ids = self._check_tokens(tokens)
        scalar = ids.ndim == 0
        ids = ids.reshape(-1)
        if ids.shape[0] != self.runtime.batch_size:
            raise ValueError(f"got {ids.shape[0]} tokens for {self.runtime.batch_size} streams; "
                             f"call reset({ids.shape[0]}) first")
        out = torch.from_numpy(self._step_ids(ids).T.copy())
        return out[0] if scalar else out

    def run(self, tokens: torch.Tensor | np.ndarray, reset: bool = True) -> torch.Tensor:
        """Tokens ``(T, B)`` (or ``(T,)``) -> logits ``(T, B, V)`` (or ``(T, V)``).

        ``reset``: start from the zero state, else continue (the batch must match)."""
        ids = self._check_tokens(tokens)
        if ids.ndim not in (1, 2):
            raise ValueError(f"tokens must be (T, B) or (T,), got shape {ids.shape}")
        unbatched = ids.ndim == 1
        ids = ids[:, None] if unbatched else ids
        if reset:
            self.reset(ids.shape[1])
        elif ids.shape[1] != self.runtime.batch_size:
            raise ValueError(f"batch {ids.shape[1]} does not match the running batch "
                             f"{self.runtime.batch_size}")
        out = np.empty((ids.shape[0], ids.shape[1], self.vocab_size), dtype=np.float32)
        for t in range(ids.shape[0]):
            out[t] = self._step_ids(ids[t]).T
        res = torch.from_numpy(out)
        return res[:, 0] if unbatched else res


def _batchify(source: torch.Tensor, batch_size: int) -> torch.Tensor:
    if not isinstance(source, torch.Tensor) or source.dim() != 1:
        raise ValueError("source must be a 1-D tensor of token ids")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
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
        chunk: steps per call (memory of the logits only; results do not depend on it).
        clock: ``"wall"`` or ``"cpu"`` (see :data:`CLOCKS`) for ``seconds``.

    Returns:
        ``{"loss", "ppl", "tokens", "activity", "seconds", "seconds_per_token"}``; activity is
        the fraction of nonzero layer outputs, seconds the wall time of the engine.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
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
    from dualsparse.accounting import ActivityMeter
    from dualsparse.train.lm_task import evaluate_lm

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


__all__ = ["CLOCKS", "PANEL_MAX_FILL", "SparseLM", "accumulate_decoder", "compare_with_torch",
           "evaluate_lm_sparse", "evaluate_perplexity_sparse", "pack_decoder"]
