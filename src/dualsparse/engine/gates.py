"""Numba gate kernels and the recurrent loop of one layer over a segment.

Layout: sequence-major, ``(B, rows)`` (one row per sequence of the batch): pre-activations
``gi``, ``gh`` ``(B, >= G*H)``, states ``y``, ``c`` ``(B, H)``. Each gate kernel fuses one step
(gates, state update, event, reset, eval-mode zoneout) and writes, per sequence, the list of
units with a nonzero new output (``idx`` ``(B, H)``, ``cnt`` ``(B,)``): the active columns of
the next step's recurrent product and of the next layer's input product. They follow
``dualsparse.models`` operation by operation in float32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from dualsparse.engine.kernels import (
    accumulate_dense,
    accumulate_dense_parallel,
    accumulate_tiles,
    accumulate_tiles_parallel,
    add_bias,
)

ONE = np.float32(1.0)
ZERO = np.float32(0.0)
_OPTS = {"cache": True, "fastmath": False, "nogil": True}

#: ``kind`` codes of :func:`recurrent_segment`.
KIND_CODES = {"egru": 0, "gru": 1, "lstm": 2}
#: ``fmt`` codes of :func:`recurrent_segment`: tiles/CSC, dense column-major.
FORMAT_CODES = {"tiles": 0, "dense": 1}


@njit(**_OPTS)
def _sigmoid(v: np.float32) -> np.float32:
    return ONE / (ONE + math.exp(-v))


@njit(**_OPTS)
def egru_gates(gi: np.ndarray, gh: np.ndarray, y: np.ndarray, c: np.ndarray,
               theta: np.ndarray, reset_code: int, events: bool, zone_p: np.float32,
               zone_q: np.float32, ev: np.ndarray, ct: np.ndarray, idx: np.ndarray,
               cnt: np.ndarray) -> int:
    """One EGRU step after the matmuls (``dualsparse.models.egru.egru_step``), in place.

    Args:
        gi, gh: ``(B, >= 3H)`` input and recurrent pre-activations, biases included.
        y, c: ``(B, H)`` previous output and internal state, overwritten with the new ones.
        theta: ``(H,)``; reset_code: 0 subtract_threshold, 1 subtract_output, 2 none.
        events: False = plain GRU (``y = c = c~``).
        zone_p, zone_q: zoneout ``p`` and ``1 - p`` (``p = 0``: no zoneout).
        ev, ct: ``(B, H)`` outputs: events and pre-reset state ``c~``.
        idx, cnt: ``(B, H)``, ``(B,)`` outputs: per sequence, the units with a nonzero new y.

    Returns:
        the number of nonzero outputs over the batch.
    """
    nb, hsz = y.shape
    total = 0
    for b in range(nb):
        n = 0
        for u in range(hsz):
            r = _sigmoid(gi[b, u] + gh[b, u])
            z = _sigmoid(gi[b, hsz + u] + gh[b, hsz + u])
            g = math.tanh(gi[b, 2 * hsz + u] + r * gh[b, 2 * hsz + u])
            c_prev = c[b, u]
            c_t = z * c_prev + (ONE - z) * g
            if not events:
                y_new = c_t
                c_new = c_t
                o = ONE
            else:
                if reset_code == 1:
                    c_t = c_t - y[b, u]
                o = ONE if c_t - theta[u] > ZERO else ZERO
                y_new = o * c_t
                c_new = c_t - o * theta[u] if reset_code == 0 else c_t
            if zone_p != ZERO:
                c_new = zone_p * c_prev + zone_q * c_new
            y[b, u] = y_new
            c[b, u] = c_new
            ev[b, u] = o
            ct[b, u] = c_t
            if y_new != ZERO:
                idx[b, n] = u
                n += 1
        cnt[b] = n
        total += n
    return total


@njit(**_OPTS)
def gru_gates(gi: np.ndarray, gh: np.ndarray, h: np.ndarray, zone_p: np.float32,
              zone_q: np.float32, idx: np.ndarray, cnt: np.ndarray) -> int:
    """One GRU step after the matmuls (``dualsparse.models.rnn.gru_step``), ``h`` ``(B, H)``
    in place; eval-mode zoneout; returns the number of nonzero new ``h``."""
    nb, hsz = h.shape
    total = 0
    for b in range(nb):
        n = 0
        for u in range(hsz):
            r = _sigmoid(gi[b, u] + gh[b, u])
            z = _sigmoid(gi[b, hsz + u] + gh[b, hsz + u])
            g = math.tanh(gi[b, 2 * hsz + u] + r * gh[b, 2 * hsz + u])
            h_prev = h[b, u]
            h_new = g + z * (h_prev - g)
            if zone_p != ZERO:
                h_new = zone_p * h_prev + zone_q * h_new
            h[b, u] = h_new
            if h_new != ZERO:
                idx[b, n] = u
                n += 1
        cnt[b] = n
        total += n
    return total


@njit(**_OPTS)
def lstm_gates(gi: np.ndarray, gh: np.ndarray, h: np.ndarray, c: np.ndarray,
               zone_p: np.float32, zone_q: np.float32, idx: np.ndarray, cnt: np.ndarray) -> int:
    """One LSTM step after the matmuls (``dualsparse.models.rnn.lstm_step``, gates
    ``(i, f, g, o)``), ``h``, ``c`` ``(B, H)`` in place; eval-mode zoneout on both."""
    nb, hsz = h.shape
    total = 0
    for b in range(nb):
        n = 0
        for u in range(hsz):
            gate_i = _sigmoid(gi[b, u] + gh[b, u])
            gate_f = _sigmoid(gi[b, hsz + u] + gh[b, hsz + u])
            gate_g = math.tanh(gi[b, 2 * hsz + u] + gh[b, 2 * hsz + u])
            gate_o = _sigmoid(gi[b, 3 * hsz + u] + gh[b, 3 * hsz + u])
            h_prev = h[b, u]
            c_prev = c[b, u]
            c_new = gate_f * c_prev + gate_i * gate_g
            h_new = gate_o * math.tanh(c_new)
            if zone_p != ZERO:
                h_new = zone_p * h_prev + zone_q * h_new
                c_new = zone_p * c_prev + zone_q * c_new
            h[b, u] = h_new
            c[b, u] = c_new
            if h_new != ZERO:
                idx[b, n] = u
                n += 1
        cnt[b] = n
        total += n
    return total


@njit(**_OPTS)
def recurrent_segment(kind: int, fmt: int, parallel: bool, panel_ptr: np.ndarray,
                      indices: np.ndarray, data: np.ndarray, br: int, bc: int,
                      rows_padded: int, group: int, b_hh: np.ndarray, gi_seq: np.ndarray,
                      gh: np.ndarray, y: np.ndarray, c: np.ndarray, theta: np.ndarray,
                      reset_code: int, events: bool, zone_p: np.float32, zone_q: np.float32,
                      ev: np.ndarray, ct: np.ndarray, idx: np.ndarray, cnt: np.ndarray,
                      y_seq: np.ndarray, idx_seq: np.ndarray, cnt_seq: np.ndarray,
                      record: bool, ev_seq: np.ndarray, ct_seq: np.ndarray) -> tuple:
    """The recurrent loop of one layer over ``T`` steps whose input pre-activations
    ``gi_seq`` ``(T, B, >= G*H)`` (biases included) are already computed.

    Per step: ``gh = b_hh + W_hh[:, active] y`` (event columns of each sequence, ``fmt`` 0:
    tiles with ``panel_ptr``/``indices``/``data``/``(br, bc)``, ``group`` panels per work item;
    1: dense column-major ``data`` with ``rows_padded`` rows; ``parallel``: the ``prange``
    build), then the gates of ``kind`` (0 EGRU, 1 GRU, 2 LSTM; arguments as
    :func:`egru_gates`). ``y``, ``c``, ``idx``, ``cnt`` carry the state in and out.

    Writes ``y_seq`` ``(T, B, H)``, the active lists ``idx_seq`` ``(T, B, H)`` /
    ``cnt_seq`` ``(T, B)`` and, if ``record``, events and ``c~`` into ``ev_seq``/``ct_seq``.

    Returns:
        ``(nonzero outputs, recurrent columns processed)`` summed over steps and sequences.
    """
    steps = gi_seq.shape[0]
    nb = y.shape[0]
    nonzero = 0
    columns = 0
    for t in range(steps):
        add_bias(gh, b_hh)
        for b in range(nb):
            columns += cnt[b]
        if fmt == 0:
            if parallel:
                accumulate_tiles_parallel(panel_ptr, indices, data, br, bc, group, y, idx, cnt,
                                          gh)
            else:
                accumulate_tiles(panel_ptr, indices, data, br, bc, group, y, idx, cnt, gh)
        else:
            if parallel:
                accumulate_dense_parallel(data, rows_padded, y, idx, cnt, gh)
            else:
                accumulate_dense(data, rows_padded, y, idx, cnt, gh)
        gi = gi_seq[t]
        if kind == 0:
            nonzero += egru_gates(gi, gh, y, c, theta, reset_code, events, zone_p, zone_q, ev,
                                  ct, idx, cnt)
        elif kind == 1:
            nonzero += gru_gates(gi, gh, y, zone_p, zone_q, idx, cnt)
        else:
            nonzero += lstm_gates(gi, gh, y, c, zone_p, zone_q, idx, cnt)
        y_seq[t] = y
        cnt_seq[t] = cnt
        for b in range(nb):
            for a in range(cnt[b]):
                idx_seq[t, b, a] = idx[b, a]
        if record:
            ev_seq[t] = ev
            ct_seq[t] = ct
    return nonzero, columns


__all__ = ["FORMAT_CODES", "KIND_CODES", "egru_gates", "gru_gates", "lstm_gates",
           "recurrent_segment"]
