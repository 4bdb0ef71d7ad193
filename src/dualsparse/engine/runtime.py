"""Event-driven sparse inference of stacked EGRU/GRU/LSTM layers on CPU.

Per step and layer ``k`` (batch ``B``, accumulators ``(G*H, B)``)::

    gi = b_ih + W_ih[:, active inputs]  @ x[active inputs]     (nonzero inputs only)
    gh = b_hh + W_hh[:, active units]   @ y[active units]      (units that fired last step)
    y, c, active units <- fused gates / event / reset (kernels.egru_gates etc.)

Only the nonzero weights of the active columns are touched (see :mod:`dualsparse.engine.pack`).
The results equal the PyTorch model's in eval mode up to float32 rounding; an EGRU event can
differ only where ``c~`` is within rounding of the threshold (:func:`compare_events` counts
those).

Usage::

    rt = SparseRuntime.from_model(egru.eval())          # block="auto": per-matrix format
    rt.reset(B); y = rt.step(x_t)                        # streaming, (B, I) or (I,)
    out = rt.run(x)                                      # (T, B, I) -> (T, B, H)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dualsparse.engine import kernels as K
from dualsparse.engine.pack import RESET_CODES, PackedLayer, PackedMatrix, PackedRNN, pack_rnn
from dualsparse.models.egru import EGRUState
from dualsparse.models.rnn import GRUState, LSTMState

#: ``kind`` argument of :func:`dualsparse.engine.kernels.layer_step`.
_KIND_CODES = {"egru": 0, "gru": 1, "lstm": 2}


def _to_numpy(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu").numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be floating point, got {x.dtype}")
    return x


def accumulate(mat: PackedMatrix, x: np.ndarray, active: np.ndarray, n_active: int,
               out: np.ndarray, threads: int = 1) -> None:
    """``out += W[:, active] @ x[active]`` with the kernel that fits the layout.

    Args:
        mat: packed ``(R, C)`` matrix.
        x: ``(C, B)`` float32 C-contiguous.
        active: int32 column indices (first ``n_active`` used; union over the batch).
        out: ``(mat.rows_padded, B)`` float32 C-contiguous accumulator.
        threads: > 1 uses the row-split parallel kernel (needs ``mat.nparts > 1``).
    """
    br, bc = mat.block
    if threads > 1 and mat.nparts > 1:
        K.accumulate_parallel(mat.indptr, mat.indices, mat.data, mat.splits, br, bc, x,
                              active, n_active, out)
    elif x.shape[1] == 1:
        if br == 1 and bc == 1:
            K.accumulate_csc(mat.indptr, mat.indices, mat.data, x.reshape(-1), active,
                             n_active, out.reshape(-1))
        elif br == 16 and bc == 1:
            K.accumulate_block16(mat.indptr, mat.indices, mat.data, x.reshape(-1), active,
                                 n_active, out.reshape(-1))
        elif br == 4 and bc == 4:
            K.accumulate_block4x4(mat.indptr, mat.indices, mat.data, x.reshape(-1), active,
                                  n_active, out.reshape(-1))
        else:
            K.accumulate_block(mat.indptr, mat.indices, mat.data, br, bc, x.reshape(-1),
                               active, n_active, out.reshape(-1))
    else:
        K.accumulate_batch(mat.indptr, mat.indices, mat.data, br, bc, x, active, n_active, out)


class _LayerState:
    """Buffers of one layer for a batch of ``B`` (all ``(rows, B)`` float32)."""

    def __init__(self, layer: PackedLayer, batch: int) -> None:
        h = layer.hidden_size
        self.gi = np.zeros((layer.w_ih.rows_padded, batch), dtype=np.float32)
        self.gh = np.zeros((layer.w_hh.rows_padded, batch), dtype=np.float32)
        self.b_ih = np.ascontiguousarray(np.broadcast_to(layer.b_ih[:, None], (len(layer.b_ih),
                                                                               batch)))
        self.b_hh = np.ascontiguousarray(np.broadcast_to(layer.b_hh[:, None], (len(layer.b_hh),
                                                                               batch)))
        self.y = np.zeros((h, batch), dtype=np.float32)  # output (EGRU y, GRU/LSTM h)
        self.c = np.zeros((h, batch), dtype=np.float32)  # EGRU c / LSTM c (unused for GRU)
        self.ev = np.zeros((h, batch), dtype=np.float32)
        self.ct = np.zeros((h, batch), dtype=np.float32)
        self.active = np.zeros(h, dtype=np.int32)
        self.n_active = 0  # units with nonzero y (the recurrent input of the next step)


@dataclass
class RuntimeStats:
    """Counts since the last :meth:`SparseRuntime.reset_stats`, per layer.

    ``active_inputs[k]`` / ``active_recurrent[k]``: summed number of active input / recurrent
    columns processed (union over the batch) per step; ``steps``: steps run;
    ``input_columns[k]``, ``hidden_units[k]``: the column counts (for densities);
    ``nonzero_outputs[k]``: summed nonzero outputs (over units and batch entries).
    """

    steps: int
    active_inputs: list[int]
    active_recurrent: list[int]
    input_columns: list[int]
    hidden_units: list[int]
    nonzero_outputs: list[int]
    batch: int = 1

    def activity(self) -> float:
        """Fraction of nonzero outputs over all layers, units, steps and batch entries."""
        units = sum(self.hidden_units) * self.steps * self.batch
        return sum(self.nonzero_outputs) / max(1, units)

    def input_density(self, layer: int) -> float:
        return self.active_inputs[layer] / max(1, self.steps * self.input_columns[layer])

    def recurrent_density(self, layer: int) -> float:
        return self.active_recurrent[layer] / max(1, self.steps * self.hidden_units[layer])


class SparseRuntime:
    """Streaming, event-driven inference of a packed EGRU/GRU/LSTM stack.

    Args:
        packed: the packed model (:func:`dualsparse.engine.pack.pack_rnn`).
        threads: accumulate with this many threads (row-split kernels; needs the matrices
            packed with ``nparts >= threads``). The gate kernels are single-threaded.
    """

    def __init__(self, packed: PackedRNN, threads: int = 1) -> None:
        if not packed.layers:
            raise ValueError("the packed model has no layers")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        self.packed = packed
        self.threads = threads
        self.kind = packed.layers[0].kind
        self._zone = [(np.float32(lay.zoneout), np.float32(1.0 - lay.zoneout))
                      for lay in packed.layers]
        self._x_active = np.zeros(packed.input_size, dtype=np.int32)
        # per layer, the constant arguments of kernels.layer_step (one call per layer step,
        # single-threaded); threads > 1 calls the row-split accumulate and gate kernels apart
        self._fuse = threads == 1
        self._fused = [
            ((_KIND_CODES[lay.kind], lay.w_ih.indptr, lay.w_ih.indices, lay.w_ih.data,
              *lay.w_ih.block, lay.w_hh.indptr, lay.w_hh.indices, lay.w_hh.data,
              *lay.w_hh.block, lay.b_ih, lay.b_hh),
             (lay.threshold, RESET_CODES[lay.reset_mode], lay.events, zp, zq))
            for lay, (zp, zq) in zip(packed.layers, self._zone, strict=True)]
        self.stats: RuntimeStats | None = None
        self.reset(1)
        self.reset_stats()

    @classmethod
    def from_model(cls, model: nn.Module, block: tuple[int, int] | str = "auto",
                   threads: int = 1) -> SparseRuntime:
        """Pack ``model`` (EGRU/GRU/LSTM, ``torch.nn.GRU``/``LSTM``) and build a runtime.

        ``block``: tile shape of the packed weights or ``"auto"`` (per matrix: ``(16, 1)``
        tiles for dense or row-block-sparse weights, CSC for unstructured sparsity).
        The engine computes the eval-mode model (no dropout; zoneout as its expectation).
        """
        if model.training:
            raise ValueError("put the model in eval mode (model.eval()) before packing: the "
                             "engine computes the eval-mode network")
        return cls(pack_rnn(model, block=block, nparts=threads), threads=threads)

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
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self._batch = batch_size
        self._layers = [_LayerState(lay, batch_size) for lay in self.packed.layers]
        if getattr(self, "stats", None) is not None and self.stats.batch != batch_size:
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
            y = torch.from_numpy(st.y.T.copy())
            c = torch.from_numpy(st.c.T.copy())
            out.append(EGRUState(y, c) if lay.kind == "egru" else
                       LSTMState(y, c) if lay.kind == "lstm" else GRUState(y))
        return tuple(out)

    def set_state(self, state: Any) -> None:
        """Load per-layer states (torch model form, ``(B, H)`` each); sets the batch size."""
        if not isinstance(state, (list, tuple)) or len(state) != self.num_layers:
            raise ValueError(f"state must hold one per-layer state for each of the "
                             f"{self.num_layers} layers")
        first = _to_numpy(state[0][0], "state")
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
                a = _to_numpy(t, f"state of layer {k}")
                if a.shape != expected:
                    raise ValueError(f"state {name} of layer {k} has shape {a.shape}, expected "
                                     f"{expected}")
                if not np.isfinite(a).all():
                    raise ValueError(f"state of layer {k} contains NaN or inf")
                arrays.append((k, name, a.reshape(batch, lay.hidden_size)))
        self.reset(batch)  # only once the whole state is valid
        for k, name, a in arrays:
            getattr(self._layers[k], name)[:] = a.T
        for st in self._layers:
            st.n_active = K.active_columns(st.y, st.active)

    # --------------------------------------------------------------- compute
    def _check_step_input(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, bool]:
        a = _to_numpy(x, "input")
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
        xt = np.ascontiguousarray(a.reshape(batch, -1).T, dtype=np.float32)
        return xt, unbatched

    def step_columns(self, x: np.ndarray, n_in: int, active_in: np.ndarray) -> None:
        """Advance all layers one step (no input checks; for callers that build inputs
        themselves, such as :class:`dualsparse.engine.lm.SparseLM`).

        Args:
            x: ``(I, B)`` float32 C-contiguous input columns.
            n_in, active_in: the nonzero input rows ``active_in[:n_in]`` (int32).
        """
        stats = self.stats
        if self._fuse:
            batched = self._batch != 1
            for k, (args, st) in enumerate(zip(self._fused, self._layers, strict=True)):
                n_rec = st.n_active
                n = K.layer_step(*args[0], x, active_in, n_in, st.gi, st.gh, st.y, st.c,
                                 *args[1], st.ev, st.ct, st.active, n_rec)
                st.n_active = n
                stats.active_inputs[k] += n_in
                stats.active_recurrent[k] += n_rec
                stats.nonzero_outputs[k] += int(np.count_nonzero(st.y)) if batched else n
                x, n_in, active_in = st.y, n, st.active
            stats.steps += 1
            return
        for k, (lay, st) in enumerate(zip(self.packed.layers, self._layers, strict=True)):
            g = lay.num_gates * lay.hidden_size
            st.gi[:g] = st.b_ih
            st.gh[:g] = st.b_hh
            accumulate(lay.w_ih, x, active_in, n_in, st.gi, self.threads)
            accumulate(lay.w_hh, st.y, st.active, st.n_active, st.gh, self.threads)
            stats.active_inputs[k] += n_in
            stats.active_recurrent[k] += st.n_active
            zp, zq = self._zone[k]
            if lay.kind == "egru":
                n = K.egru_gates(st.gi, st.gh, st.y, st.c, lay.threshold,
                                 RESET_CODES[lay.reset_mode], lay.events, zp, zq, st.ev, st.ct,
                                 st.active)
            elif lay.kind == "gru":
                n = K.gru_gates(st.gi, st.gh, st.y, zp, zq, st.active)
            else:
                n = K.lstm_gates(st.gi, st.gh, st.y, st.c, zp, zq, st.active)
            st.n_active = n
            stats.nonzero_outputs[k] += n if st.y.shape[1] == 1 else int(np.count_nonzero(st.y))
            x, n_in, active_in = st.y, n, st.active
        stats.steps += 1

    def output_columns(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The last layer's output ``(H, B)`` (a view) and its active rows ``(active, n)``."""
        st = self._layers[-1]
        return st.y, st.active, st.n_active

    def step(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """One time step through all layers; ``x`` ``(B, I)`` or ``(I,)``; returns the last
        layer's output ``(B, H)`` or ``(H,)`` (a new tensor)."""
        xt, unbatched = self._check_step_input(x)
        n_in = K.active_columns(xt, self._x_active)
        self.step_columns(xt, n_in, self._x_active)
        y = torch.from_numpy(self._layers[-1].y.T.copy())
        return y.reshape(-1) if unbatched else y

    def run(self, sequence: torch.Tensor | np.ndarray, reset: bool = True,
            return_sequences: bool = False):
        """Run a sequence ``(T, B, I)`` (or ``(T, I)``), time-first.

        Args:
            reset: start from the zero state (True) or continue from the current state.
            return_sequences: also return per layer a dict with ``output`` and, for EGRU,
                ``events`` and ``internal`` (pre-reset ``c~``), each ``(T, B, H)``.

        Returns:
            ``output`` ``(T, B, H_last)`` (``(T, H_last)`` unbatched), or
            ``(output, sequences)``.
        """
        a = _to_numpy(sequence, "sequence")
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
        xs = np.ascontiguousarray(seq.transpose(0, 2, 1), dtype=np.float32)  # (T, I, B)
        out = np.empty((steps, batch, self.packed.layers[-1].hidden_size), dtype=np.float32)
        recs = None
        if return_sequences:
            recs = [{name: np.empty((steps, batch, lay.hidden_size), dtype=np.float32)
                     for name in (("output", "events", "internal") if lay.kind == "egru"
                                  else ("output",))} for lay in self.packed.layers]
        for t in range(steps):
            n_in = K.active_columns(xs[t], self._x_active)
            self.step_columns(xs[t], n_in, self._x_active)
            out[t] = self._layers[-1].y.T
            if recs is not None:
                for rec, st in zip(recs, self._layers, strict=True):
                    rec["output"][t] = st.y.T
                    if "events" in rec:
                        rec["events"][t] = st.ev.T
                        rec["internal"][t] = st.ct.T
        result = torch.from_numpy(out[:, 0] if unbatched else out)
        if recs is None:
            return result
        seqs = [{n: torch.from_numpy(v[:, 0] if unbatched else v) for n, v in rec.items()}
                for rec in recs]
        return result, seqs


@dataclass
class EventComparison:
    """Events of the engine vs the torch model for one layer.

    ``mismatches``: entries whose events differ; ``near_threshold``: of those, how many have
    ``|c~ - theta| < tol`` (in either computation); ``unexplained`` = the rest (must be 0).
    """

    total: int
    mismatches: int
    near_threshold: int
    unexplained: int


def compare_events(events: torch.Tensor, events_ref: torch.Tensor, internal: torch.Tensor,
                   internal_ref: torch.Tensor, threshold: torch.Tensor,
                   tol: float = 1e-5) -> EventComparison:
    """Compare event tensors ``(T, B, H)`` from two computations of the same EGRU layer.

    A mismatch is *explained* when ``|c~ - theta| < tol`` in either computation: the two float32
    computations round differently, so a ``c~`` that close to the threshold may fall on either
    side. Note that after a mismatch the states of the two computations differ for that unit.
    """
    ev, ev_ref = events.to(torch.float32), events_ref.to(torch.float32)
    if ev.shape != ev_ref.shape:
        raise ValueError(f"event shapes differ: {tuple(ev.shape)} vs {tuple(ev_ref.shape)}")
    th = threshold.to(torch.float32)
    near = ((internal.to(torch.float32) - th).abs() < tol) | (
        (internal_ref.to(torch.float32) - th).abs() < tol)
    diff = ev != ev_ref
    mism = int(diff.sum())
    explained = int((diff & near).sum())
    return EventComparison(ev.numel(), mism, explained, mism - explained)


__all__ = ["EventComparison", "RuntimeStats", "SparseRuntime", "accumulate", "compare_events"]
