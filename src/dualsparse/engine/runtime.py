"""Event-driven sparse inference of stacked EGRU/GRU/LSTM layers on CPU.

A segment of ``T`` steps for ``B`` sequences runs **layer by layer**::

    GI = b_ih + W_ih X           all T*B input vectors in one multi-vector event accumulate
    for t in 0..T-1:             (gates.recurrent_segment, one numba call)
        gh = b_hh + W_hh y       the units of each sequence that fired at t-1
        y, c, active <- fused gates / event / reset

Each vector has its own active columns (work follows per-sequence activity); each weight
group is read once for all vectors of a product (weight traffic follows their union).
Streaming :meth:`SparseRuntime.step` is the same with ``T = 1``. Results equal the PyTorch
model's in eval mode up to float32 rounding (identical across batch sizes, thread counts
and segment lengths); an EGRU event can differ only where ``c~`` is within rounding of the
threshold (:func:`dualsparse.engine.events.compare_events` counts those).

Usage::

    rt = SparseRuntime.from_model(egru.eval())          # block="auto": per-matrix format
    rt.reset(B); y = rt.step(x_t)                        # streaming, (B, I) or (I,)
    out = rt.run(x)                                      # (T, B, I) -> (T, B, H)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import torch
from torch import nn

from dualsparse.engine import kernels as K
from dualsparse.engine.arrays import aligned_empty, aligned_zeros
from dualsparse.engine.events import EventComparison, compare_events
from dualsparse.engine.formats import Block
from dualsparse.engine.gates import KIND_CODES, recurrent_segment
from dualsparse.engine.pack import RESET_CODES, PackedLayer, PackedRNN, pack_rnn
from dualsparse.engine.products import bias_rows, product_from_bias
from dualsparse.models.egru import EGRUState
from dualsparse.models.rnn import GRUState, LSTMState
from dualsparse.validation import check_int


def to_numpy(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    """``x`` as a floating-point numpy array (``what`` names it in errors)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu").numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be floating point, got {x.dtype}")
    return x


class NumbaThreads:
    """Context in which numba's parallel kernels use ``threads`` threads (at most numba's
    pool), restored on exit; nothing to do at one thread (the streaming hot path)."""

    __slots__ = ("before", "threads")

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.before = 0

    def __enter__(self) -> NumbaThreads:
        if self.threads > 1:
            self.before = numba.get_num_threads()
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.before:
            numba.set_num_threads(self.before)


class _LayerState:
    """Buffers of one layer for a batch of ``B`` (``(B, rows)`` float32)."""

    def __init__(self, layer: PackedLayer, batch: int, threads: int) -> None:
        h = layer.hidden_size
        # 64-byte aligned: the kernels move 16 floats at a time (engine.arrays.ALIGN_BYTES)
        self.gh = aligned_zeros((batch, layer.w_hh.rows_padded))
        self.y = aligned_zeros((batch, h))  # output (EGRU y, GRU/LSTM h)
        self.c = aligned_zeros((batch, h))  # EGRU c / LSTM c (unused for GRU)
        self.ev = aligned_zeros((batch, h))
        self.ct = aligned_zeros((batch, h))
        self.idx = np.zeros((batch, h), dtype=np.int32)  # per sequence: units with y != 0
        self.cnt = np.zeros(batch, dtype=np.int32)
        zp = np.float32(layer.zoneout)
        self.const = (KIND_CODES[layer.kind], *layer.w_hh.kernel_args(batch, threads),
                      layer.b_hh)
        self.gate_const = (layer.threshold, RESET_CODES[layer.reset_mode], layer.events, zp,
                           np.float32(1.0) - zp)
        # one step's outputs, reused by every streaming step (allocation costs more than
        # the kernels at small sizes)
        self.input_rows = layer.w_ih.rows_padded
        self.step_buffers = self._new_buffers(1, True)

    def _new_buffers(self, steps: int, record: bool) -> tuple:
        """``gi`` ``(steps * B, rows)``, ``y``/``idx`` ``(steps, B, H)``, ``cnt`` ``(steps,
        B)``, and events/``c~`` ``(steps, B, H)`` (``(1, 1, 1)`` unless ``record``)."""
        batch, h = self.y.shape
        seq = (steps, batch, h) if record else (1, 1, 1)
        return (aligned_empty((steps * batch, self.input_rows)),
                aligned_empty((steps, batch, h)),
                np.empty((steps, batch, h), dtype=np.int32),
                np.empty((steps, batch), dtype=np.int32),
                np.empty(seq, dtype=np.float32), np.empty(seq, dtype=np.float32))

    def buffers(self, steps: int, reuse: bool, record: bool) -> tuple:
        """Output buffers of a segment (:meth:`_new_buffers`); the layer's own one-step
        buffers when ``reuse`` and ``steps == 1`` (overwritten by the next step)."""
        if reuse and steps == 1:
            return self.step_buffers
        return self._new_buffers(steps, record)


@dataclass
class RuntimeStats:
    """Counts since the last :meth:`SparseRuntime.reset_stats`, per layer.

    ``active_inputs[k]`` / ``active_recurrent[k]``: active input / recurrent columns
    processed, summed over steps and sequences; ``steps``: steps run;
    ``input_columns[k]``, ``hidden_units[k]``: the column counts (for densities);
    ``nonzero_outputs[k]``: summed nonzero outputs (over units, steps and sequences);
    ``seconds``: time per part (``"input"``: input products, ``"recurrent"``: recurrent
    products and gates, ``"decoder"``: a language model's decoder), in seconds of the
    runtime's ``clock``.
    """

    steps: int
    active_inputs: list[int]
    active_recurrent: list[int]
    input_columns: list[int]
    hidden_units: list[int]
    nonzero_outputs: list[int]
    batch: int = 1
    seconds: dict[str, float] = field(default_factory=lambda: {"input": 0.0, "recurrent": 0.0,
                                                               "decoder": 0.0})

    def activity(self) -> float:
        """Fraction of nonzero outputs over all layers, units, steps and sequences."""
        units = sum(self.hidden_units) * self.steps * self.batch
        return sum(self.nonzero_outputs) / max(1, units)

    def input_density(self, layer: int) -> float:
        return self.active_inputs[layer] / max(1, self.steps * self.batch
                                               * self.input_columns[layer])

    def recurrent_density(self, layer: int) -> float:
        return self.active_recurrent[layer] / max(1, self.steps * self.batch
                                                  * self.hidden_units[layer])


class SparseRuntime:
    """Event-driven inference of a packed EGRU/GRU/LSTM stack (streaming or segments).

    Args:
        packed: the packed model (:func:`dualsparse.engine.pack.pack_rnn`).
        threads: threads of the products (row groups; results identical at any count). The
            gate kernels run on one thread.
    """

    def __init__(self, packed: PackedRNN, threads: int = 1) -> None:
        packed.check()
        self.packed = packed
        self.threads = check_int("threads", threads, low=1)
        self.kind = packed.layers[0].kind
        #: clock of :attr:`RuntimeStats.seconds` (``time.thread_time`` for single-threaded
        #: timings on a shared machine)
        self.clock = time.perf_counter
        self.stats: RuntimeStats | None = None
        #: per layer, ``b_ih`` padded to its input matrix's rows: the input products start
        #: from it (:func:`dualsparse.engine.products.product_from_bias`)
        self._input_bias = [bias_rows(lay.b_ih, lay.w_ih) for lay in packed.layers]
        self.reset(1)
        self.reset_stats()

    @classmethod
    def from_model(cls, model: nn.Module, block: Block = "auto",
                   threads: int = 1) -> SparseRuntime:
        """Pack ``model`` (EGRU/GRU/LSTM, ``torch.nn.GRU``/``LSTM``) and build a runtime.

        ``block``: tile shape of the packed weights, ``"dense"``, or ``"auto"`` (per matrix:
        dense, 16x1 tiles or CSC, :func:`dualsparse.engine.formats.choose_format`). The
        engine computes the eval-mode model (no dropout; zoneout as its expectation).
        """
        if model.training:
            raise ValueError("put the model in eval mode (model.eval()) before packing: the "
                             "engine computes the eval-mode network")
        return cls(pack_rnn(model, block=block), threads=threads)

    # ----------------------------------------------------------------- state
    @property
    def num_layers(self) -> int:
        return len(self.packed.layers)

    @property
    def input_size(self) -> int:
        return self.packed.input_size

    @property
    def batch_size(self) -> int:
        return self._batch

    def reset(self, batch_size: int = 1) -> None:
        """Zero state for ``batch_size`` sequences (statistics restart if the batch changes)."""
        self._batch = check_int("batch_size", batch_size, low=1)
        self._layers = [_LayerState(lay, self._batch, self.threads)
                        for lay in self.packed.layers]
        if self.stats is not None and self.stats.batch != self._batch:
            self.reset_stats()  # counts are per batch size

    def reset_stats(self) -> None:
        n = self.num_layers
        self.stats = RuntimeStats(0, [0] * n, [0] * n,
                                  [lay.input_size for lay in self.packed.layers],
                                  [lay.hidden_size for lay in self.packed.layers], [0] * n,
                                  self._batch)

    @property
    def state(self) -> tuple:
        """Per-layer states as the torch models return them (``(B, H)`` tensors, copies)."""
        out = []
        for lay, st in zip(self.packed.layers, self._layers, strict=True):
            y, c = torch.from_numpy(st.y.copy()), torch.from_numpy(st.c.copy())
            out.append(EGRUState(y, c) if lay.kind == "egru" else
                       LSTMState(y, c) if lay.kind == "lstm" else GRUState(y))
        return tuple(out)

    def set_state(self, state: Any) -> None:
        """Load per-layer states (torch model form, ``(B, H)`` each); sets the batch size."""
        if not isinstance(state, (list, tuple)) or len(state) != self.num_layers:
            raise ValueError(f"state must hold one per-layer state for each of the "
                             f"{self.num_layers} layers")
        first = to_numpy(state[0][0], "state")
        if first.ndim not in (1, 2):
            raise ValueError(f"state tensors must be (B, H) or (H,), got shape {first.shape}")
        batch = first.shape[0] if first.ndim == 2 else 1
        arrays = []
        for k, (lay, s) in enumerate(zip(self.packed.layers, state, strict=True)):
            want = 2 if lay.kind in ("egru", "lstm") else 1
            if len(s) != want:
                raise ValueError(f"state of layer {k} must have {want} tensors, got {len(s)}")
            expected = (batch, lay.hidden_size) if first.ndim == 2 else (lay.hidden_size,)
            for name, t in zip(("y", "c"), s, strict=False):
                a = to_numpy(t, f"state of layer {k}")
                if a.shape != expected:
                    raise ValueError(f"state {name} of layer {k} has shape {a.shape}, expected "
                                     f"{expected}")
                if not np.isfinite(a).all():
                    raise ValueError(f"state of layer {k} contains NaN or inf")
                arrays.append((k, name, a.reshape(batch, lay.hidden_size)))
        self.reset(batch)  # only once the whole state is valid
        for k, name, a in arrays:
            getattr(self._layers[k], name)[:] = a
        for st in self._layers:
            K.active_lists(st.y, st.idx, st.cnt)

    # --------------------------------------------------------------- compute
    def run_columns(self, x: np.ndarray, idx: np.ndarray, cnt: np.ndarray, steps: int,
                    active: int, record: bool = False,
                    reuse: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """Advance all layers ``steps`` steps, layer by layer (no input checks; for callers
        that build inputs themselves, such as :class:`dualsparse.engine.lm.SparseLM`).

        Args:
            x: ``(steps * B, I)`` float32 C-contiguous inputs, step-major.
            idx, cnt: their active columns (:func:`dualsparse.engine.kernels.active_lists`).
            active: ``cnt.sum()`` (what ``active_lists`` returns).
            record: also return each layer's ``(y, events, c~)``, each ``(steps, B, H)``.
            reuse: a single step writes into buffers owned by the runtime, which the next
                step overwrites (streaming callers that copy what they keep).

        Returns:
            the last layer's ``y`` ``(steps, B, H)``, its active lists ``idx`` ``(steps, B,
            H)`` and ``cnt`` ``(steps, B)``, and per layer ``(y, events, c~)`` if ``record``.
        """
        stats, batch, threads = self.stats, self._batch, self.threads
        recs = []
        with NumbaThreads(threads):
            for k, (lay, st) in enumerate(zip(self.packed.layers, self._layers, strict=True)):
                t0 = self.clock()
                gi, y_seq, idx_seq, cnt_seq, ev_seq, ct_seq = st.buffers(steps, reuse, record)
                product_from_bias(lay.w_ih, x, idx, cnt, gi, self._input_bias[k], threads)
                t1 = self.clock()
                h = lay.hidden_size
                nonzero, columns = recurrent_segment(
                    *st.const, gi.reshape(steps, batch, -1), st.gh, st.y, st.c, *st.gate_const,
                    st.ev, st.ct, st.idx, st.cnt, y_seq, idx_seq, cnt_seq, record, ev_seq,
                    ct_seq)
                stats.seconds["input"] += t1 - t0
                stats.seconds["recurrent"] += self.clock() - t1
                stats.active_inputs[k] += active
                stats.active_recurrent[k] += columns
                stats.nonzero_outputs[k] += nonzero
                active = nonzero  # the next layer's active inputs
                if record:
                    recs.append((y_seq, ev_seq, ct_seq))
                x = y_seq.reshape(steps * batch, h)
                idx = idx_seq.reshape(steps * batch, h)
                cnt = cnt_seq.reshape(-1)
        stats.steps += steps
        return y_seq, idx_seq, cnt_seq, recs

    def _check_step_input(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, bool]:
        a = to_numpy(x, "input")
        unbatched = a.ndim == 1
        if a.ndim not in (1, 2) or a.shape[-1] != self.input_size:
            raise ValueError(f"step input must be ({self.input_size},) or (B, {self.input_size}), "
                             f"got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("input contains NaN or inf")
        batch = 1 if unbatched else a.shape[0]
        if batch != self._batch:
            raise ValueError(f"input batch {batch} does not match the runtime's batch "
                             f"{self._batch}; call reset({batch}) first")
        return np.ascontiguousarray(a.reshape(batch, -1), dtype=np.float32), unbatched

    def step(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """One time step through all layers; ``x`` ``(B, I)`` or ``(I,)``; returns the last
        layer's output ``(B, H)`` or ``(H,)`` (a new tensor)."""
        xt, unbatched = self._check_step_input(x)
        idx = np.empty(xt.shape, dtype=np.int32)
        cnt = np.empty(xt.shape[0], dtype=np.int32)
        active = K.active_lists(xt, idx, cnt)
        y = torch.from_numpy(self.run_columns(xt, idx, cnt, 1, active, reuse=True)[0][0].copy())
        return y.reshape(-1) if unbatched else y

    def run(self, sequence: torch.Tensor | np.ndarray, reset: bool = True,
            return_sequences: bool = False):
        """Run a sequence ``(T, B, I)`` (or ``(T, I)``), time-first, as one segment.

        Args:
            reset: start from the zero state (True) or continue from the current state.
            return_sequences: also return per layer a dict with ``output`` and, for EGRU,
                ``events`` and ``internal`` (pre-reset ``c~``), each ``(T, B, H)``.

        Returns:
            ``output`` ``(T, B, H_last)`` (``(T, H_last)`` unbatched), or
            ``(output, sequences)``.
        """
        a = to_numpy(sequence, "sequence")
        if a.ndim not in (2, 3) or a.shape[-1] != self.input_size:
            raise ValueError(f"sequence must be (T, B, {self.input_size}) or "
                             f"(T, {self.input_size}), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("sequence contains NaN or inf")
        unbatched = a.ndim == 2
        seq = a[:, None, :] if unbatched else a
        steps, batch = seq.shape[0], seq.shape[1]
        if reset:
            self.reset(batch)
        elif batch != self._batch:
            raise ValueError(f"sequence batch {batch} does not match the runtime's batch "
                             f"{self._batch}")
        xs = np.ascontiguousarray(seq.reshape(steps * batch, -1), dtype=np.float32)
        idx = np.empty(xs.shape, dtype=np.int32)
        cnt = np.empty(xs.shape[0], dtype=np.int32)
        active = K.active_lists(xs, idx, cnt)
        out, _, _, recs = self.run_columns(xs, idx, cnt, steps, active, record=return_sequences)
        if not return_sequences:
            return torch.from_numpy(out[:, 0] if unbatched else out)
        seqs = []
        for lay, (y_k, ev_k, ct_k) in zip(self.packed.layers, recs, strict=True):
            rec = {"output": y_k}
            if lay.kind == "egru":
                rec["events"], rec["internal"] = ev_k, ct_k
            seqs.append({n: torch.from_numpy(v[:, 0] if unbatched else v)
                         for n, v in rec.items()})
        return seqs[-1]["output"], seqs


__all__ = ["EventComparison", "NumbaThreads", "RuntimeStats", "SparseRuntime",
           "compare_events", "to_numpy"]
