"""The whole language model through the sparse engine, and the engine-vs-PyTorch comparison.

:class:`SparseLM` runs :class:`dualsparse.models.lm.RNNLanguageModel` (eval mode) per token:
embedding row lookup -> every recurrent layer (:class:`SparseRuntime`, activity-indexed) ->
decoder ``b + W_dec[:, active] @ y[active]`` (only the units of the last layer that are nonzero
are read, so an EGRU's silent units cost nothing in the decoder either).

Functions for the CLI and the demo:

* :func:`evaluate_lm_sparse` -- loss/perplexity over a token stream, like
  ``dualsparse.apps.lm.evaluate.evaluate_lm`` with the state carried throughout (``carry="full"``).
* :func:`evaluate_perplexity_sparse` -- just the perplexity.
* :func:`compare_with_torch` -- perplexity on both paths, activity and weight density, ideal
  speed-up (measured MACs) and measured speed-up over a dense PyTorch model of the same sizes.
"""

from __future__ import annotations

import math
import time

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


__all__ = ["CLOCKS", "PANEL_MAX_FILL", "SparseLM", "accumulate_decoder",
           "evaluate_lm_sparse", "evaluate_perplexity_sparse", "pack_decoder"]
