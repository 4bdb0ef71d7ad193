"""A whole :class:`~dualsparse.models.lm.RNNLanguageModel` through the event-driven engine.

:class:`SparseLM` runs in three modes with the same kernels:

* **segment** (:meth:`SparseLM.run`, evaluation): layer by layer over ``T`` tokens -- the input
  product of the whole segment as one multi-vector event accumulate (embedding rows are
  dense: a GEMM when the matrix is dense), the recurrent loop, then the decoder over the
  segment (each weight group read once for all tokens, only the units of each token that are
  nonzero);
* **streaming** (:meth:`SparseLM.step`, generation): one token per call;
* **batch**: both with ``B`` streams; each stream's work follows its own activity.

:meth:`SparseLM.generate` samples a continuation (temperature, top-k, seed) and reports the
latency of every generated token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dualsparse.engine import kernels as K
from dualsparse.engine.arrays import aligned_empty
from dualsparse.engine.formats import Block, PackedFormat, PackedMatrix
from dualsparse.engine.pack import PackedRNN, choose_format, pack_rnn
from dualsparse.engine.products import bias_rows, product_from_bias
from dualsparse.engine.rows import pack_rows
from dualsparse.engine.runtime import NumbaThreads, SparseRuntime
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.validation import check_int, check_real

#: The first layer's input product uses row-major tiles when at least this fraction of the
#: embedding is nonzero (every stored tile is then used anyway).
ROWS_MIN_INPUT_DENSITY = 0.5


def check_lm(model: nn.Module) -> RNNLanguageModel:
    """The :class:`RNNLanguageModel` inside ``model`` (a DDP wrapper is unwrapped)."""
    model = getattr(model, "module", model)
    if not isinstance(model, RNNLanguageModel):
        raise ValueError(f"expected an RNNLanguageModel, got {type(model).__name__}")
    return model


@dataclass
class Generation:
    """Result of :meth:`SparseLM.generate`: the ``n`` new token ids, and per generated token
    the seconds from the previous token to it (``latency_s[0]``: prompt included)."""

    tokens: list[int]
    latency_s: list[float]
    prompt_seconds: float


class SparseLM:
    """Embedding, packed recurrent stack and packed decoder of a language model.

    Args:
        runtime: the recurrent stack.
        embedding: ``(V, E)`` float32.
        decoder: packed ``(V, H_last)`` (any format); decoder_bias: ``(V,)`` float32.
    """

    def __init__(self, runtime: SparseRuntime, embedding: np.ndarray, decoder: PackedFormat,
                 decoder_bias: np.ndarray) -> None:
        if embedding.ndim != 2 or embedding.shape[1] != runtime.input_size:
            raise ValueError(f"embedding must be (V, {runtime.input_size}), got "
                             f"{embedding.shape}")
        if decoder.shape != (embedding.shape[0], runtime.packed.layers[-1].hidden_size):
            raise ValueError(f"decoder shape {decoder.shape} does not match vocabulary "
                             f"{embedding.shape[0]} x last hidden size")
        if decoder_bias.shape != (embedding.shape[0],):
            raise ValueError(f"decoder_bias must be ({embedding.shape[0]},), got "
                             f"{decoder_bias.shape}")
        decoder.check()
        self.runtime = runtime
        self.embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        self.decoder = decoder
        # padded with zeros to the decoder's panel rows; decoder_bias is a view of it
        self._bias_rows = bias_rows(np.asarray(decoder_bias, dtype=np.float32), decoder)
        self.decoder_bias = self._bias_rows[: decoder_bias.shape[0]]
        self.vocab_size = embedding.shape[0]

    @classmethod
    def from_model(cls, model: nn.Module, block: Block = "auto", threads: int = 1) -> SparseLM:
        """Pack an :class:`RNNLanguageModel` (eval mode; pruned weights as exact zeros).

        ``block``: the format of every matrix, decoder included (``"auto"``: per matrix, see
        :func:`dualsparse.engine.pack.choose_format`; the first layer's input matrix, when
        packed in 16x1 tiles, goes to row-major tiles
        (:class:`dualsparse.engine.rows.RowMatrix`) if at least
        :data:`ROWS_MIN_INPUT_DENSITY` of the embedding is nonzero)."""
        lm = check_lm(model)
        if lm.training:
            raise ValueError("put the model in eval mode (model.eval()) before packing")
        emb = lm.embedding.weight.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(emb).all():
            raise ValueError("embedding contains NaN or inf")
        layers = []
        for rnn in lm.rnns:
            layers.extend(pack_rnn(rnn, block=block).layers)
        first = layers[0].w_ih
        if (block == "auto" and isinstance(first, PackedMatrix) and first.block == (16, 1)
                and np.count_nonzero(emb) >= ROWS_MIN_INPUT_DENSITY * emb.size):
            layers[0].w_ih = pack_rows(first)  # its inputs, embedding rows, are dense
        runtime = SparseRuntime(PackedRNN(layers), threads=threads)
        dec = choose_format(lm.decoder.weight, block, "decoder.weight")
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

    @property
    def batch_size(self) -> int:
        return self.runtime.batch_size

    def reset(self, batch_size: int = 1) -> None:
        """Zero state for ``batch_size`` streams."""
        self.runtime.reset(batch_size)

    def _check_tokens(self, tokens: torch.Tensor | np.ndarray | int) -> np.ndarray:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        a = np.asarray(tokens)
        if a.dtype.kind not in "iu":  # (np.issubdtype costs microseconds per streaming step)
            raise ValueError(f"tokens must be integer ids, got {a.dtype}")
        if a.size:  # one streaming token: its value, without two array reductions
            lo, hi = (int(a.flat[0]),) * 2 if a.size == 1 else (a.min(), a.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got range "
                                 f"[{lo}, {hi}]")
        return a.astype(np.int64)

    def forward_ids(self, ids: np.ndarray) -> np.ndarray:
        """Ids ``(T, B)`` (no checks) -> logits ``(T * B, rows_padded)`` (columns beyond the
        vocabulary are padding), continuing from the current state."""
        steps, batch = ids.shape
        x = self.embedding[ids.reshape(-1)]
        idx = np.empty(x.shape, dtype=np.int32)
        cnt = np.empty(x.shape[0], dtype=np.int32)
        active = K.active_lists(x, idx, cnt)
        y, y_idx, y_cnt, _ = self.runtime.run_columns(x, idx, cnt, steps, active, reuse=True)
        t0 = self.runtime.clock()
        logits = self.decode(y.reshape(steps * batch, -1), y_idx.reshape(steps * batch, -1),
                             y_cnt.reshape(-1))
        self.runtime.stats.seconds["decoder"] += self.runtime.clock() - t0
        return logits

    def decode(self, y: np.ndarray, idx: np.ndarray, cnt: np.ndarray) -> np.ndarray:
        """Logits ``(n, rows_padded)`` of last-layer outputs ``y`` ``(n, H)`` with their
        active lists (no checks), starting from the bias
        (:func:`dualsparse.engine.products.product_from_bias`)."""
        n, threads = y.shape[0], self.runtime.threads
        if n == 1:  # by columns, memory-bound: alignment gains nothing (and costs 3 us)
            logits = np.empty((1, self.decoder.rows_padded), np.float32)
        else:  # 64-byte aligned rows for the register panels
            logits = aligned_empty((n, self.decoder.rows_padded))
        with NumbaThreads(threads):
            product_from_bias(self.decoder, y, idx, cnt, logits, self._bias_rows, threads)
        return logits

    def step(self, tokens: torch.Tensor | np.ndarray | int) -> torch.Tensor:
        """Streaming: one token per stream, ``(B,)`` ids (or a scalar) -> logits ``(B, V)``
        (or ``(V,)``)."""
        ids = self._check_tokens(tokens)
        scalar = ids.ndim == 0
        ids = ids.reshape(1, -1)
        if ids.shape[1] != self.batch_size:
            raise ValueError(f"got {ids.shape[1]} tokens for {self.batch_size} streams; "
                             f"call reset({ids.shape[1]}) first")
        out = torch.from_numpy(self.forward_ids(ids)[:, : self.vocab_size])
        return out[0] if scalar else out

    def run(self, tokens: torch.Tensor | np.ndarray, reset: bool = True) -> torch.Tensor:
        """Segment mode: tokens ``(T, B)`` (or ``(T,)``) -> logits ``(T, B, V)`` (or
        ``(T, V)``). ``reset``: start from the zero state, else continue (same batch)."""
        ids = self._check_tokens(tokens)
        if ids.ndim not in (1, 2):
            raise ValueError(f"tokens must be (T, B) or (T,), got shape {ids.shape}")
        unbatched = ids.ndim == 1
        ids = ids[:, None] if unbatched else ids
        if reset:
            self.reset(ids.shape[1])
        elif ids.shape[1] != self.batch_size:
            raise ValueError(f"batch {ids.shape[1]} does not match the running batch "
                             f"{self.batch_size}")
        logits = self.forward_ids(ids)[:, : self.vocab_size]
        res = torch.from_numpy(logits).view(ids.shape[0], ids.shape[1], self.vocab_size)
        return res[:, 0] if unbatched else res

    def generate(self, prompt: torch.Tensor | np.ndarray | list[int], n: int,
                 temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> Generation:
        """Sample ``n`` tokens after ``prompt`` (one stream, from the zero state).

        The prompt runs as one segment; every new token is one streaming step.

        Args:
            prompt: ``(P,)`` token ids, ``P >= 1``.
            n: tokens to generate.
            temperature: softmax temperature; ``0`` = greedy (argmax).
            top_k: sample among the ``top_k`` most likely tokens only (None: all).
            seed: seed of the sampler (``numpy.random.default_rng``).
        """
        if isinstance(prompt, list):
            prompt = np.array(prompt, dtype=np.int64)
        ids = self._check_tokens(prompt)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"prompt must be a non-empty 1-D sequence of ids, got shape "
                             f"{ids.shape}")
        n = check_int("n", n, low=0)
        temperature = check_real("temperature", temperature, low=0.0)
        if top_k is not None:
            top_k = check_int("top_k", top_k, low=1, high=self.vocab_size)
        rng = np.random.default_rng(seed)
        self.reset(1)
        t0 = time.perf_counter()
        logits = self.forward_ids(ids[:, None])[-1, : self.vocab_size]
        prompt_seconds = time.perf_counter() - t0
        tokens, latency = [], []
        start = t0
        for _ in range(n):
            tok = sample_token(logits, temperature, top_k, rng)
            tokens.append(tok)
            now = time.perf_counter()
            latency.append(now - start)
            start = now
            logits = self.forward_ids(np.array([[tok]], dtype=np.int64))[0, : self.vocab_size]
        return Generation(tokens, latency, prompt_seconds)


def sample_token(logits: np.ndarray, temperature: float, top_k: int | None,
                 rng: np.random.Generator) -> int:
    """One id from ``logits`` ``(V,)``: argmax at ``temperature == 0``, else a draw from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits."""
    if temperature == 0.0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        cut = np.partition(z, z.size - top_k)[z.size - top_k]
        z = np.where(z >= cut, z, -np.inf)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return int(rng.choice(z.size, p=p))


__all__ = ["ROWS_MIN_INPUT_DENSITY", "Generation", "SparseLM", "check_lm", "sample_token"]
