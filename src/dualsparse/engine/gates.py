"""Numba gate kernels and the recurrent loop of one layer over a segment.

Layout: sequence-major, ``(B, rows)`` (one row per sequence of the batch): pre-activations
``gi``, ``gh`` ``(B, >= G*H)``, states ``y``, ``c`` ``(B, H)``. Each gate kernel fuses one step
(gates, state update, event, reset, eval-mode zoneout) and writes, per sequence, the list of
units with a nonzero new output (``idx`` ``(B, H)``, ``cnt`` ``(B,)``): the active columns of
the next step's recurrent product and of the next layer's input product. They follow
``dualsparse.models`` operation by operation in float32, except that tanh and the sigmoid
use a vectorisable rational approximation (:func:`tanh`, max abs error 3.4e-7).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dualsparse.engine.kernels import accumulate_event, active_lists, add_bias

ONE = np.float32(1.0)
ZERO = np.float32(0.0)
HALF = np.float32(0.5)
_OPTS = {"cache": True, "fastmath": False, "nogil": True}
#: The gate loops divide (in :func:`tanh`): numba's default Python error model checks every
#: division for zero, which blocks SIMD vectorisation; the divisor here is always >= 4.9e-3.
_GATE_OPTS = {**_OPTS, "error_model": "numpy"}

#: ``kind`` codes of :func:`recurrent_segment`.
KIND_CODES = {"egru": 0, "gru": 1, "lstm": 2}

# Rational approximation of tanh on [-7.905, 7.905] (Eigen's ``ptanh_float``; beyond that
# float32 tanh is +-1): max abs error 3.4e-7 against float64 tanh (PyTorch's: 3e-8), and
# branch-free, so the gate loops run in SIMD (libm's scalar tanhf/expf took 12 ns each).
_A1, _A3, _A5, _A7 = (np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04),
                      np.float32(1.48572235717979e-05), np.float32(5.12229709037114e-08))
_A9, _A11, _A13 = (np.float32(-8.60467152213735e-11), np.float32(2.00018790482477e-13),
                   np.float32(-2.76076847742355e-16))
_B0, _B2, _B4, _B6 = (np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03),
                      np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06))
_CLAMP = np.float32(7.90531110763549805)


@njit(inline="always", **_GATE_OPTS)
def tanh(x: np.float32) -> np.float32:
    """float32 tanh by a rational approximation (see above), vectorisable."""
    x = x if x < _CLAMP else _CLAMP
    x = x if x > -_CLAMP else -_CLAMP
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return (x * p) / q


@njit(inline="always", **_GATE_OPTS)
def sigmoid(v: np.float32) -> np.float32:
    """``1 / (1 + exp(-v)) = (1 + tanh(v / 2)) / 2`` (max abs error 1.9e-7)."""
    return HALF + HALF * tanh(HALF * v)


@njit(**_GATE_OPTS)
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

    The loop over units is branch-free (the mode flags become 0/1 factors that leave the
    other modes' results unchanged), so it runs in SIMD.

    Returns:
        the number of nonzero outputs over the batch.
    """
    nb, hsz = y.shape
    sub_out = ONE if events and reset_code == 1 else ZERO
    sub_th = ONE if events and reset_code == 0 else ZERO
    always = not events
    for b in range(nb):
        gib, ghb, yb, cb, evb, ctb = gi[b], gh[b], y[b], c[b], ev[b], ct[b]
        for u in range(hsz):
            r = sigmoid(gib[u] + ghb[u])
            z = sigmoid(gib[hsz + u] + ghb[hsz + u])
            g = tanh(gib[2 * hsz + u] + r * ghb[2 * hsz + u])
            c_prev = cb[u]
            c_t = z * c_prev + (ONE - z) * g
            c_t = c_t - sub_out * yb[u]
            o = ONE if (c_t - theta[u] > ZERO) or always else ZERO
            c_new = c_t - o * theta[u] * sub_th
            yb[u] = o * c_t
            cb[u] = zone_p * c_prev + zone_q * c_new
            evb[u] = o
            ctb[u] = c_t
    return active_lists(y, idx, cnt)


@njit(**_GATE_OPTS)
def gru_gates(gi: np.ndarray, gh: np.ndarray, h: np.ndarray, zone_p: np.float32,
              zone_q: np.float32, idx: np.ndarray, cnt: np.ndarray) -> int:
    """One GRU step after the matmuls (``dualsparse.models.rnn.gru_step``), ``h`` ``(B, H)``
    in place; eval-mode zoneout; returns the number of nonzero new ``h``."""
    nb, hsz = h.shape
    for b in range(nb):
        gib, ghb, hb = gi[b], gh[b], h[b]
        for u in range(hsz):
            r = sigmoid(gib[u] + ghb[u])
            z = sigmoid(gib[hsz + u] + ghb[hsz + u])
            g = tanh(gib[2 * hsz + u] + r * ghb[2 * hsz + u])
            h_prev = hb[u]
            hb[u] = zone_p * h_prev + zone_q * (g + z * (h_prev - g))
    return active_lists(h, idx, cnt)


@njit(**_GATE_OPTS)
def lstm_gates(gi: np.ndarray, gh: np.ndarray, h: np.ndarray, c: np.ndarray,
               zone_p: np.float32, zone_q: np.float32, idx: np.ndarray, cnt: np.ndarray) -> int:
    """One LSTM step after the matmuls (``dualsparse.models.rnn.lstm_step``, gates
    ``(i, f, g, o)``), ``h``, ``c`` ``(B, H)`` in place; eval-mode zoneout on both."""
    nb, hsz = h.shape
    for b in range(nb):
        gib, ghb, hb, cb = gi[b], gh[b], h[b], c[b]
        for u in range(hsz):
            gate_i = sigmoid(gib[u] + ghb[u])
            gate_f = sigmoid(gib[hsz + u] + ghb[hsz + u])
            gate_g = tanh(gib[2 * hsz + u] + ghb[2 * hsz + u])
            gate_o = sigmoid(gib[3 * hsz + u] + ghb[3 * hsz + u])
            h_prev = hb[u]
            c_prev = cb[u]
            c_new = gate_f * c_prev + gate_i * gate_g
            h_new = gate_o * tanh(c_new)
            hb[u] = zone_p * h_prev + zone_q * h_new
            cb[u] = zone_p * c_prev + zone_q * c_new
    return active_lists(h, idx, cnt)


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

    Per step: ``gh = b_hh + W_hh[:, active] y`` (event columns of each sequence;
    ``fmt ... group`` are the matrix's ``kernel_args``, see
    :func:`dualsparse.engine.kernels.accumulate_event`), then the gates of ``kind`` (0 EGRU,
    1 GRU, 2 LSTM; arguments as :func:`egru_gates`). ``y``, ``c``,
    ``idx``, ``cnt`` carry the state in and out.

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
        accumulate_event(fmt, parallel, panel_ptr, indices, data, br, bc, rows_padded, group,
                         y, idx, cnt, gh)
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


__all__ = ["KIND_CODES", "egru_gates", "gru_gates", "lstm_gates",
           "recurrent_segment"]
