"""GRU baselines for the microcontroller comparison: the float GRU and an int8/Q15 GRU.

Both are built from a trained ``KWSNet(kind="gru")`` (``nn.GRU`` layers, gate order ``(r, z, n)``,
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``, then optional
dense ReLU layers ``v' = relu(W v + b)`` and a linear readout of the last layer's final state or
of the last dense layer's output).

* :class:`FloatGRU`: the float32 weights as they are (the C uses ``float``, ``expf``, ``tanhf``).
* :class:`IntGRU`: int8 weights with one power-of-two scale per matrix and Q15 int16 inputs and
  states.  Its integer rules (this module is their specification; the emitted C follows them
  exactly):

  - weights ``q = clip(round(W * 2^s), -127, 127)`` with ``s`` the largest integer for which
    ``max|W| * 2^s <= 127`` (per matrix: ``W_ih``, ``W_hh`` of each layer and the readout);
    biases ``round(b * 2^15)`` saturated to ``+-PRE_LIMIT`` (``+-8.0``);
  - ``gi = sat(asr(sum_j q_ih[r, j] x_j, s_ih) + b_ih[r], +-PRE_LIMIT)`` and ``gh`` likewise
    (int32; ``|q x| < 2^22``, so fan-in ``<= MAX_FAN_IN`` cannot overflow);
  - ``r = sigm(gi_r + gh_r)``, ``z = sigm(gi_z + gh_z)``,
    ``n = tanh(gi_n + asr(r * sat16(asr(gh_n, 3)), 12))`` (``gh_n`` as Q12 so the product
    fits int32);
  - ``sigm(p)``: ``p`` saturated to ``[-2^18, 2^18 - 1]`` (+-8.0), ``u = p + 2^18``,
    ``i = u >> 11``, ``f = u & 2047``, ``y = T[i] + asr((T[i+1] - T[i]) f, 11)`` with the
    257-entry table ``T[k] = round(2^15 sigmoid(k / 16 - 8))`` (capped at 32767);
    ``tanh(p)`` the same on ``[-2^17, 2^17 - 1]`` (+-4.0) with ``u >> 10``, ``f & 1023`` and
    ``T[k] = round(2^15 tanh(k / 32 - 4))`` (capped at +-32767);
  - ``h' = sat16(n + asr(z (h - n) + 2^14, 15))``;
  - dense ReLU layers (int8 ``q_d`` with shift ``s_d``, Q15 bias ``b_d``) on ``v = h_T``:
    ``v'_r = min(max(asr(sum_j q_d[r, j] v_j, s_d) + b_d[r], 0), 32767)`` (Q15);
  - logits ``asr(sum_j q_o[c, j] v_j, s_o) + b_o[c]`` (int32, Q15), class = first maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from dualsparse.embedded.quant import asr, sat, sat16
from dualsparse.models.pow2_quant import INT16_MAX, INT16_MIN, Q15_ONE

PRE_LIMIT = 8 << 15  #: gate pre-activations and biases saturate to +-8.0 (Q15)
TANH_LIMIT = 4 << 15
MAX_FAN_IN = 511  #: 511 * 127 * 2^15 < 2^31
SIGMOID_TABLE = np.minimum(
    np.rint(Q15_ONE / (1.0 + np.exp(-(np.arange(257) / 16.0 - 8.0)))), INT16_MAX
).astype(np.int64)
TANH_TABLE = np.clip(np.rint(Q15_ONE * np.tanh(np.arange(257) / 32.0 - 4.0)), -INT16_MAX,
                     INT16_MAX).astype(np.int64)


def sigmoid_q15(p: np.ndarray) -> np.ndarray:
    """Table sigmoid: Q15 pre-activation (int) -> Q15 in ``[0, 32767]``."""
    u = sat(np.asarray(p, np.int64), -PRE_LIMIT, PRE_LIMIT - 1) + PRE_LIMIT
    i, f = u >> 11, u & 2047
    t0 = SIGMOID_TABLE[i]
    return t0 + asr((SIGMOID_TABLE[i + 1] - t0) * f, 11)


def tanh_q15(p: np.ndarray) -> np.ndarray:
    """Table tanh: Q15 pre-activation (int) -> Q15 in ``[-32767, 32767]``."""
    u = sat(np.asarray(p, np.int64), -TANH_LIMIT, TANH_LIMIT - 1) + TANH_LIMIT
    i, f = u >> 10, u & 1023
    t0 = TANH_TABLE[i]
    return t0 + asr((TANH_TABLE[i + 1] - t0) * f, 10)


@dataclass
class GRULayer:
    """One GRU layer: ``w_ih (3H, I)``, ``w_hh (3H, H)``, biases ``(3H,)``, gates ``(r, z, n)``.
    Float arrays for :class:`FloatGRU`; int8 values with shifts ``s_ih``/``s_hh`` and Q15 int
    biases for :class:`IntGRU`."""

    input_size: int
    hidden_size: int
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    s_ih: int = 0
    s_hh: int = 0


@dataclass
class DenseLayer:
    """One dense ReLU layer ``w (D, N)``, ``b (D,)``: float arrays for :class:`FloatGRU`; int8
    values with shift ``s`` and a Q15 int bias for :class:`IntGRU`."""

    w: np.ndarray
    b: np.ndarray
    s: int = 0


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _layers_from_net(net: torch.nn.Module
                     ) -> tuple[list[GRULayer], list[DenseLayer], np.ndarray, np.ndarray]:
    if getattr(net, "kind", None) != "gru":
        raise ValueError("expected a KWSNet of kind 'gru'")
    layers = []
    for rnn in net.rnns:
        g = {n: _np(p) for n, p in rnn.named_parameters()}
        layers.append(GRULayer(rnn.input_size, rnn.hidden_size, g["weight_ih_l0"],
                               g["weight_hh_l0"], g["bias_ih_l0"], g["bias_hh_l0"]))
    dense = [DenseLayer(_np(lin.weight), _np(lin.bias)) for lin in getattr(net, "dense", ())]
    return layers, dense, _np(net.readout.weight), _np(net.readout.bias)


@dataclass
class FloatGRU:
    """Float GRU classifier (float32 arithmetic); ``run`` takes Q15 inputs like the C code."""

    layers: list[GRULayer]
    readout_w: np.ndarray
    readout_b: np.ndarray
    is_float: bool = True
    dense: list[DenseLayer] = field(default_factory=list)

    @classmethod
    def from_net(cls, net: torch.nn.Module) -> FloatGRU:
        layers, dense, w, b = _layers_from_net(net)
        return cls(layers, w, b, dense=dense)

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def num_classes(self) -> int:
        return self.readout_w.shape[0]

    def model_bytes(self) -> int:
        """float32 bytes of all weights and biases (dense layers included)."""
        n = sum(L.w_ih.size + L.w_hh.size + L.b_ih.size + L.b_hh.size for L in self.layers)
        n += sum(D.w.size + D.b.size for D in self.dense)
        return 4 * (n + self.readout_w.size + self.readout_b.size)

    def run(self, x_q: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Q15 ``(B, T, I)`` -> ``(logits (B, C) float32, [h_n (B, H) float32 per layer])``."""
        x = torch.from_numpy(np.asarray(x_q, np.float32) / Q15_ONE)
        hs = []
        with torch.no_grad():
            inp = x.transpose(0, 1)
            for L in self.layers:
                g = torch.nn.GRU(L.input_size, L.hidden_size)
                for n, a in (("weight_ih_l0", L.w_ih), ("weight_hh_l0", L.w_hh),
                             ("bias_ih_l0", L.b_ih), ("bias_hh_l0", L.b_hh)):
                    getattr(g, n).copy_(torch.from_numpy(a))
                inp, h = g(inp)
                hs.append(h[0].numpy())
            v = hs[-1]
            for D in self.dense:
                v = np.maximum(v @ D.w.T.astype(np.float32) + D.b.astype(np.float32), 0.0)
            logits = v @ self.readout_w.T.astype(np.float32) + self.readout_b.astype(
                np.float32)
        return logits.astype(np.float32), hs


def _scale_shift(w: np.ndarray) -> int:
    m = float(np.abs(w).max())
    return 0 if m == 0 else math.floor(math.log2(127.0 / m))


def _q8(w: np.ndarray) -> tuple[np.ndarray, int]:
    s = _scale_shift(w)
    return np.clip(np.rint(w * 2.0**s), -127, 127).astype(np.int64), s


def _qbias(b: np.ndarray) -> np.ndarray:
    return sat(np.rint(b * Q15_ONE).astype(np.int64), -PRE_LIMIT, PRE_LIMIT)


@dataclass
class IntGRU:
    """int8-weight, Q15-state GRU classifier (rules in the module docstring)."""

    layers: list[GRULayer]
    readout_w: np.ndarray
    readout_b: np.ndarray
    readout_s: int
    is_float: bool = False
    meta: dict = field(default_factory=dict)
    dense: list[DenseLayer] = field(default_factory=list)

    def __post_init__(self) -> None:
        prev = self.layers[-1].hidden_size if self.layers else 0
        for i, D in enumerate(self.dense):
            if np.abs(D.w).max(initial=0) > 127 or not np.issubdtype(D.w.dtype, np.integer):
                raise ValueError(f"dense {i}: w must be int8 values")
            if D.w.ndim != 2 or D.w.shape[1] != prev or D.b.shape != (D.w.shape[0],):
                raise ValueError(f"dense {i}: w {D.w.shape} / b {D.b.shape} do not follow "
                                 f"width {prev}")
            if prev > MAX_FAN_IN or not 0 <= D.s < 31:
                raise ValueError(f"dense {i}: fan-in must be <= {MAX_FAN_IN}, s in [0, 31)")
            prev = D.w.shape[0]
        for i, L in enumerate(self.layers):
            for name in ("w_ih", "w_hh"):
                w = getattr(L, name)
                if np.abs(w).max(initial=0) > 127 or not np.issubdtype(w.dtype, np.integer):
                    raise ValueError(f"layer {i}: {name} must be int8 values")
            if L.input_size + L.hidden_size > MAX_FAN_IN:
                raise ValueError(f"layer {i}: fan-in > {MAX_FAN_IN} could overflow int32")
            for name in ("s_ih", "s_hh"):
                if not 0 <= getattr(L, name) < 31:
                    raise ValueError(f"layer {i}: {name} must be in [0, 31)")

    @classmethod
    def from_net(cls, net: torch.nn.Module) -> IntGRU:
        """Quantise a trained float GRU ``KWSNet`` (weights with negative shifts are refused)."""
        layers, dense, w, b = _layers_from_net(net)
        out = []
        for L in layers:
            qi, si = _q8(L.w_ih)
            qh, sh = _q8(L.w_hh)
            out.append(GRULayer(L.input_size, L.hidden_size, qi, qh, _qbias(L.b_ih),
                                _qbias(L.b_hh), max(si, 0), max(sh, 0)))
            if si < 0 or sh < 0:
                raise ValueError("IntGRU: a weight matrix has max|W| > 127")
        qdense = []
        for D in dense:
            qd, sd = _q8(D.w)
            if sd < 0:
                raise ValueError("IntGRU: a dense weight matrix has max|W| > 127")
            qdense.append(DenseLayer(qd, _qbias(D.b), sd))
        qo, so = _q8(w)
        return cls(out, qo, _qbias(b), max(so, 0), dense=qdense)

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def num_classes(self) -> int:
        return self.readout_w.shape[0]

    def model_bytes(self) -> int:
        """int8 weights + int32 biases (dense layers included)."""
        n8 = sum(L.w_ih.size + L.w_hh.size for L in self.layers) + self.readout_w.size
        n32 = sum(L.b_ih.size + L.b_hh.size for L in self.layers) + self.readout_b.size
        n8 += sum(D.w.size for D in self.dense)
        n32 += sum(D.b.size for D in self.dense)
        return n8 + 4 * n32

    def layer_step(self, i: int, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        """One step of layer ``i``: x ``(B, I)``, h ``(B, H)`` -> new h ``(B, H)`` (int64)."""
        L = self.layers[i]
        H = L.hidden_size
        gi = sat(asr(x @ L.w_ih.T, L.s_ih) + L.b_ih, -PRE_LIMIT, PRE_LIMIT)
        gh = sat(asr(h @ L.w_hh.T, L.s_hh) + L.b_hh, -PRE_LIMIT, PRE_LIMIT)
        r = sigmoid_q15(gi[:, :H] + gh[:, :H])
        z = sigmoid_q15(gi[:, H:2 * H] + gh[:, H:2 * H])
        ghn = sat16(asr(gh[:, 2 * H:], 3))
        n = tanh_q15(gi[:, 2 * H:] + asr(r * ghn, 12))
        return sat16(n + asr(z * (h - n) + (1 << 14), 15))

    def run(self, x_q: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Q15 ``(B, T, I)`` -> ``(logits (B, C) int64, [h_n (B, H) per layer])``."""
        x = np.asarray(x_q)
        if x.ndim != 3 or x.shape[2] != self.input_size or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"x_q must be integer (B, T, {self.input_size}), got {x.shape}")
        if (x < INT16_MIN).any() or (x > INT16_MAX).any():
            raise ValueError("x_q values must fit int16")
        x = x.astype(np.int64)
        hs = [np.zeros((x.shape[0], L.hidden_size), np.int64) for L in self.layers]
        for t in range(x.shape[1]):
            inp = x[:, t]
            for i in range(len(self.layers)):
                hs[i] = self.layer_step(i, inp, hs[i])
                inp = hs[i]
        v = hs[-1]
        for D in self.dense:
            v = np.clip(asr(v @ D.w.T, D.s) + D.b, 0, INT16_MAX)
        logits = asr(v @ self.readout_w.T, self.readout_s) + self.readout_b
        return sat(logits, -(1 << 31), (1 << 31) - 1), hs


def random_int_gru(sizes: tuple[int, ...], num_classes: int, seed: int = 0,
                   extreme: bool = False, dense: tuple[int, ...] = ()) -> IntGRU:
    """A random valid :class:`IntGRU` (tests); ``dense``: widths of dense ReLU layers.
    ``extreme``: +-127 weights, shift 0 and +-8.0 biases, which saturates every
    pre-activation."""
    rng = np.random.default_rng(seed)

    def w(r: int, c: int) -> np.ndarray:
        if extreme:
            return rng.choice([-127, 127], size=(r, c)).astype(np.int64)
        return rng.integers(-127, 128, (r, c))

    def b(r: int) -> np.ndarray:
        if extreme:
            return rng.choice([-PRE_LIMIT, PRE_LIMIT], size=r).astype(np.int64)
        return rng.integers(-PRE_LIMIT, PRE_LIMIT + 1, r)

    def s() -> int:
        return 0 if extreme else int(rng.integers(4, 10))

    layers = [GRULayer(sizes[i], sizes[i + 1], w(3 * sizes[i + 1], sizes[i]),
                       w(3 * sizes[i + 1], sizes[i + 1]), b(3 * sizes[i + 1]),
                       b(3 * sizes[i + 1]), s(), s())
              for i in range(len(sizes) - 1)]
    widths = (sizes[-1], *dense)
    dl = [DenseLayer(w(widths[i + 1], widths[i]), b(widths[i + 1]), s())
          for i in range(len(dense))]
    return IntGRU(layers, w(num_classes, widths[-1]), b(num_classes), s(), dense=dl)


__all__ = ["MAX_FAN_IN", "PRE_LIMIT", "DenseLayer", "FloatGRU", "GRULayer", "IntGRU",
           "random_int_gru", "sigmoid_q15", "tanh_q15"]
