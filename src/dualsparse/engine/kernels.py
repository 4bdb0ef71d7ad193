"""Numba kernels of the event-driven engine (float32, ``fastmath`` off, cached on disk).

Layouts: accumulators and states are ``(rows, B)`` (row-major, the batch innermost), so a
batched axpy updates ``B`` contiguous floats per weight. Batch-1 kernels take 1-D vectors.
Packed matrices are described in :mod:`dualsparse.engine.pack` (``indptr``, ``indices``,
``data``, tile shape ``(br, bc)``, row-range ``splits``).

Kernels:

* :func:`active_columns` -- indices of the columns where any batch entry is nonzero.
* :func:`accumulate_csc`, :func:`accumulate_block` -- ``out += W[:, active] @ x[active]`` for
  one vector (CSC / tiles; :func:`accumulate_block16`, :func:`accumulate_block4x4` are the
  SIMD-friendly specialisations; :func:`accumulate_panels` keeps 64 outputs in registers, for
  long outputs such as a decoder); :func:`accumulate_batch` for ``(C, B)`` inputs over the
  *union* of active columns; :func:`accumulate_parallel` splits the rows over threads (``prange``).
* :func:`egru_gates`, :func:`gru_gates`, :func:`lstm_gates` -- the gate nonlinearities, the
  state update, event/reset and eval-mode zoneout of one step, fused, writing the next step's
  active list. They follow ``dualsparse.models`` operation by operation in float32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

ONE = np.float32(1.0)
ZERO = np.float32(0.0)
_OPTS = {"cache": True, "fastmath": False, "nogil": True}


@njit(**_OPTS)
def active_columns(x: np.ndarray, active: np.ndarray) -> int:
    """Write the indices of rows ``j`` of ``x`` ``(C, B)`` with any nonzero into ``active``;
    return their count."""
    n = 0
    for j in range(x.shape[0]):
        for b in range(x.shape[1]):
            if x[j, b] != ZERO:
                active[n] = j
                n += 1
                break
    return n


@njit(**_OPTS)
def accumulate_csc(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, x: np.ndarray,
                   active: np.ndarray, n_active: int, out: np.ndarray) -> None:
    """CSC, one vector: ``out[i] += W[i, j] * x[j]`` over nonzero weights of active ``j``."""
    for a in range(n_active):
        j = active[a]
        xj = x[j]
        if xj == ZERO:
            continue
        for k in range(indptr[j], indptr[j + 1]):
            out[indices[k]] += data[k] * xj


@njit(**_OPTS)
def accumulate_block(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, br: int,
                     bc: int, x: np.ndarray, active: np.ndarray, n_active: int,
                     out: np.ndarray) -> None:
    """Tiles ``(br, bc)``, one vector: for each active column, a ``br``-long axpy per tile of
    its block column. ``out`` has ``rows_padded`` entries."""
    for a in range(n_active):
        j = active[a]
        xj = x[j]
        if xj == ZERO:
            continue
        bj = j // bc
        c = j - bj * bc
        for t in range(indptr[bj], indptr[bj + 1]):
            r0 = np.int64(indices[t]) * br
            base = (t * bc + c) * br
            for r in range(br):
                out[r0 + r] += data[base + r] * xj


@njit(**_OPTS)
def accumulate_block16(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                       x: np.ndarray, active: np.ndarray, n_active: int, out: np.ndarray) -> None:
    """:func:`accumulate_block` for ``(16, 1)`` tiles: the 16-long axpy has a literal trip
    count, so it compiles to SIMD (the generic kernel is ~4x slower)."""
    for a in range(n_active):
        j = active[a]
        xj = x[j]
        if xj == ZERO:
            continue
        for t in range(indptr[j], indptr[j + 1]):
            r0 = np.int64(indices[t]) * 16
            o = out[r0:r0 + 16]
            d = data[t * 16:t * 16 + 16]
            for r in range(16):
                o[r] += d[r] * xj


@njit(**_OPTS)
def accumulate_block4x4(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                        x: np.ndarray, active: np.ndarray, n_active: int,
                        out: np.ndarray) -> None:
    """:func:`accumulate_block` for ``(4, 4)`` tiles (literal 4-long axpys)."""
    for a in range(n_active):
        j = active[a]
        xj = x[j]
        if xj == ZERO:
            continue
        bj = j // 4
        c = j - bj * 4
        for t in range(indptr[bj], indptr[bj + 1]):
            r0 = np.int64(indices[t]) * 4
            base = (t * 4 + c) * 4
            o = out[r0:r0 + 4]
            d = data[base:base + 4]
            for r in range(4):
                o[r] += d[r] * xj


@njit(**_OPTS)
def accumulate_batch(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, br: int,
                     bc: int, x: np.ndarray, active: np.ndarray, n_active: int,
                     out: np.ndarray) -> None:
    """Any tile shape, ``B`` vectors: ``x`` ``(C, B)``, ``out`` ``(rows_padded, B)``.

    Each active column (the union over the batch) is read once and applied to all ``B``
    vectors (entries that are zero add exact zeros)."""
    nb = x.shape[1]
    for a in range(n_active):
        j = active[a]
        bj = j // bc
        c = j - bj * bc
        xs = x[j]
        for t in range(indptr[bj], indptr[bj + 1]):
            r0 = np.int64(indices[t]) * br
            base = (t * bc + c) * br
            for r in range(br):
                w = data[base + r]
                for b in range(nb):
                    out[r0 + r, b] += w * xs[b]


@njit(parallel=True, **_OPTS)
def accumulate_parallel(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                        splits: np.ndarray, br: int, bc: int, x: np.ndarray,
                        active: np.ndarray, n_active: int, out: np.ndarray) -> None:
    """As :func:`accumulate_batch` (``x`` ``(C, B)``), with the row ranges of ``splits``
    processed by parallel threads (disjoint rows, so no write conflicts)."""
    nb = x.shape[1]
    for p in prange(splits.shape[1] - 1):
        for a in range(n_active):
            j = active[a]
            bj = j // bc
            c = j - bj * bc
            xs = x[j]
            for t in range(splits[bj, p], splits[bj, p + 1]):
                r0 = np.int64(indices[t]) * br
                base = (t * bc + c) * br
                for r in range(br):
                    w = data[base + r]
                    row = out[r0 + r]
                    for b in range(nb):
                        row[b] += w * xs[b]



@njit(**_OPTS)
def accumulate_panels(colmap: np.ndarray, data: np.ndarray, x: np.ndarray, active: np.ndarray,
                      n_active: int, out: np.ndarray) -> None:
    """Panels of 64 rows (:class:`dualsparse.engine.pack.PanelMatrix`), one vector: per panel,
    its 64 outputs stay in a local accumulator while the active columns are added (in the
    order of ``active``, as the column kernels do, so the sums round identically); ``out``
    has ``rows_padded`` entries."""
    acc = np.empty(64, dtype=np.float32)
    for p in range(colmap.shape[0]):
        r0 = p * 64
        for r in range(64):
            acc[r] = out[r0 + r]
        for a in range(n_active):
            j = active[a]
            xj = x[j]
            s = colmap[p, j]
            if xj == ZERO or s < 0:
                continue
            d = data[np.int64(s) * 64:np.int64(s) * 64 + 64]
            for r in range(64):
                acc[r] += d[r] * xj
        for r in range(64):
            out[r0 + r] = acc[r]


@njit(**_OPTS)
def accumulate_panels_batch(colmap: np.ndarray, data: np.ndarray, x: np.ndarray,
                            active: np.ndarray, n_active: int, out: np.ndarray) -> None:
    """:func:`accumulate_panels` for ``B`` vectors: ``x`` ``(C, B)``, ``out``
    ``(rows_padded, B)``."""
    nb = x.shape[1]
    for p in range(colmap.shape[0]):
        r0 = p * 64
        for a in range(n_active):
            j = active[a]
            s = colmap[p, j]
            if s < 0:
                continue
            xs = x[j]
            base = np.int64(s) * 64
            for r in range(64):
                w = data[base + r]
                row = out[r0 + r]
                for b in range(nb):
                    row[b] += w * xs[b]


@njit(**_OPTS)
def _sigmoid(v: np.float32) -> np.float32:
    return ONE / (ONE + math.exp(-v))


@njit(**_OPTS)
def egru_gates(gi: np.ndarray, gh: np.ndarray, y: np.ndarray, c: np.ndarray,
               theta: np.ndarray, reset_code: int, events: bool, zone_p: np.float32,
               zone_q: np.float32, ev: np.ndarray, ct: np.ndarray, active: np.ndarray) -> int:
    """One EGRU step after the matmuls (``dualsparse.models.egru.egru_step``), in place.

    Args:
        gi, gh: ``(>=3H, B)`` input and recurrent pre-activations, biases included.
        y, c: ``(H, B)`` previous output and internal state, overwritten with the new ones.
        theta: ``(H,)``; reset_code: 0 subtract_threshold, 1 subtract_output, 2 none.
        events: False = plain GRU (``y = c = c~``).
        zone_p, zone_q: zoneout ``p`` and ``1 - p`` (``p = 0``: no zoneout).
        ev, ct: ``(H, B)`` outputs: events and pre-reset state ``c~``.
        active: ``(H,)`` output: units with a nonzero new ``y`` in any batch entry.

    Returns:
        the number of active units.
    """
    hsz, nb = y.shape
    n = 0
    for u in range(hsz):
        any_active = False
        th = theta[u]
        for b in range(nb):
            r = _sigmoid(gi[u, b] + gh[u, b])
            z = _sigmoid(gi[hsz + u, b] + gh[hsz + u, b])
            g = math.tanh(gi[2 * hsz + u, b] + r * gh[2 * hsz + u, b])
            c_prev = c[u, b]
            c_t = z * c_prev + (ONE - z) * g
            if not events:
                y_new = c_t
                c_new = c_t
                o = ONE
            else:
                if reset_code == 1:
                    c_t = c_t - y[u, b]
                o = ONE if c_t - th > ZERO else ZERO
                y_new = o * c_t
                c_new = c_t - o * th if reset_code == 0 else c_t
            if zone_p != ZERO:
                c_new = zone_p * c_prev + zone_q * c_new
            y[u, b] = y_new
            c[u, b] = c_new
            ev[u, b] = o
            ct[u, b] = c_t
            if y_new != ZERO:
                any_active = True
        if any_active:
            active[n] = u
            n += 1
    return n


@njit(**_OPTS)
def gru_gates(gi: np.ndarray, gh: np.ndarray, h: np.ndarray, zone_p: np.float32,
              zone_q: np.float32, active: np.ndarray) -> int:
    """One GRU step after the matmuls (``dualsparse.models.rnn.gru_step``), ``h`` ``(H, B)``
    in place; eval-mode zoneout; returns the number of units with a nonzero new ``h``."""
    hsz, nb = h.shape
    n = 0
    for u in range(hsz):
        any_active = False
        for b in range(nb):
            r = _sigmoid(gi[u, b] + gh[u, b])
            z = _sigmoid(gi[hsz + u, b] + gh[hsz + u, b])
            g = math.tanh(gi[2 * hsz + u, b] + r * gh[2 * hsz + u, b])
            h_prev = h[u, b]
            h_new = g + z * (h_prev - g)
            if zone_p != ZERO:
                h_new = zone_p * h_prev + zone_q * h_new
            h[u, b] = h_new
            if h_new != ZERO:
                any_active = True
        if any_active:
            active[n] = u
            n += 1
    return n


@njit(**_OPTS)
def lstm_gates(gi: np.ndarray, gh: np.ndarray, h: np.ndarray, c: np.ndarray,
               zone_p: np.float32, zone_q: np.float32, active: np.ndarray) -> int:
    """One LSTM step after the matmuls (``dualsparse.models.rnn.lstm_step``, gates
    ``(i, f, g, o)``), ``h``, ``c`` ``(H, B)`` in place; eval-mode zoneout on both."""
    hsz, nb = h.shape
    n = 0
    for u in range(hsz):
        any_active = False
        for b in range(nb):
            gate_i = _sigmoid(gi[u, b] + gh[u, b])
            gate_f = _sigmoid(gi[hsz + u, b] + gh[hsz + u, b])
            gate_g = math.tanh(gi[2 * hsz + u, b] + gh[2 * hsz + u, b])
            gate_o = _sigmoid(gi[3 * hsz + u, b] + gh[3 * hsz + u, b])
            h_prev = h[u, b]
            c_prev = c[u, b]
            c_new = gate_f * c_prev + gate_i * gate_g
            h_new = gate_o * math.tanh(c_new)
            if zone_p != ZERO:
                h_new = zone_p * h_prev + zone_q * h_new
                c_new = zone_p * c_prev + zone_q * c_new
            h[u, b] = h_new
            c[u, b] = c_new
            if h_new != ZERO:
                any_active = True
        if any_active:
            active[n] = u
            n += 1
    return n



@njit(**_OPTS)
def _accumulate_any(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, br: int,
                    bc: int, x: np.ndarray, active: np.ndarray, n_active: int,
                    out: np.ndarray) -> None:
    """``out += W[:, active] @ x[active]`` for ``x`` ``(C, B)``, ``out`` ``(rows_padded, B)``
    (C-contiguous), with the kernel that fits the tile shape and batch."""
    if x.shape[1] != 1:
        accumulate_batch(indptr, indices, data, br, bc, x, active, n_active, out)
        return
    xv = x.reshape(x.shape[0])
    ov = out.reshape(out.shape[0])
    if br == 1 and bc == 1:
        accumulate_csc(indptr, indices, data, xv, active, n_active, ov)
    elif br == 16 and bc == 1:
        accumulate_block16(indptr, indices, data, xv, active, n_active, ov)
    elif br == 4 and bc == 4:
        accumulate_block4x4(indptr, indices, data, xv, active, n_active, ov)
    else:
        accumulate_block(indptr, indices, data, br, bc, xv, active, n_active, ov)


@njit(**_OPTS)
def layer_step(kind: int, ih_indptr: np.ndarray, ih_indices: np.ndarray, ih_data: np.ndarray,
               ih_br: int, ih_bc: int, hh_indptr: np.ndarray, hh_indices: np.ndarray,
               hh_data: np.ndarray, hh_br: int, hh_bc: int, b_ih: np.ndarray, b_hh: np.ndarray,
               x: np.ndarray, in_active: np.ndarray, n_in: int, gi: np.ndarray, gh: np.ndarray,
               y: np.ndarray, c: np.ndarray, theta: np.ndarray, reset_code: int, events: bool,
               zone_p: np.float32, zone_q: np.float32, ev: np.ndarray, ct: np.ndarray,
               active: np.ndarray, n_rec: int) -> int:
    """One whole layer step in one call: ``gi = b_ih + W_ih[:, in_active] @ x``,
    ``gh = b_hh + W_hh[:, active[:n_rec]] @ y``, then the gates of ``kind`` (0 EGRU, 1 GRU,
    2 LSTM; arguments as :func:`egru_gates`), which overwrite ``active`` with the new active
    units. The same operations in the same order as the separate kernels.

    Returns:
        the number of active units after the step.
    """
    g = b_ih.shape[0]
    nb = y.shape[1]
    for r in range(g):
        bi = b_ih[r]
        bh = b_hh[r]
        for b in range(nb):
            gi[r, b] = bi
            gh[r, b] = bh
    _accumulate_any(ih_indptr, ih_indices, ih_data, ih_br, ih_bc, x, in_active, n_in, gi)
    _accumulate_any(hh_indptr, hh_indices, hh_data, hh_br, hh_bc, y, active, n_rec, gh)
    if kind == 0:
        return egru_gates(gi, gh, y, c, theta, reset_code, events, zone_p, zone_q, ev, ct,
                          active)
    if kind == 1:
        return gru_gates(gi, gh, y, zone_p, zone_q, active)
    return lstm_gates(gi, gh, y, c, zone_p, zone_q, active)


__all__ = ["accumulate_batch", "accumulate_block", "accumulate_block16", "accumulate_block4x4",
           "accumulate_csc", "accumulate_panels", "accumulate_panels_batch",
           "accumulate_parallel",
           "active_columns", "egru_gates", "gru_gates", "layer_step", "lstm_gates"]
