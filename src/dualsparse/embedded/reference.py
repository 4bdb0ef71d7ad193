"""Bit-exact integer reference of the deployed eGRU classifier (numpy int64, explicit saturation).

Integer semantics (every value is an integer; Q15 means ``real = q / 32768``):

* inputs ``x_t``: Q15 int16 (features rounded with :func:`~dualsparse.embedded.quant.to_q15`);
* weights: power-of-two codes (see :mod:`dualsparse.embedded.quant`); ``w * v`` is
  ``asr(v, k)`` (arithmetic shift = floor), negated when the sign bit is set, 0 for the zero code;
* biases: Q15 int32 (``b_ih + b_hh`` rounded half-even, saturated to +-64.0 = +-2**21);
* per gate row: ``acc = bias + sum_j w_j * v_j`` over ``v = [x_t, h_{t-1}]`` in a 32-bit
  accumulator.  No saturation is needed inside the sum: ``|acc| <= 2**21 + N * 2**15 < 2**31``
  for fan-in ``N <= MAX_FAN_IN`` (checked; the bound leaves room for the C's offset sums);
* ``s = softsign_q15(acc)``: ``a = min(|acc|, 2**21)``, ``s = sign * floor(a 2**15 / (2**15 + a))``;
* ``z = (s_z + 32768) >> 1`` (Q15 in [0, 32767]); ``n = s_n``;
* ``h_t = sat16(h + ((z * (n - h) + 2**14) >> 15))`` (round half up; ``z * (n - h)`` fits int32);
* optional dense ReLU layers on the last layer's final state ``v = h_T``: per row
  ``acc = bias + sum_j w_j * v_j`` exactly like a gate row (Q15 bias saturated to +-64.0, 32-bit
  sum of shifts), then ``v' = min(max(asr(acc, s), 0), 32767)`` with the layer's right shift
  ``s`` (ReLU, saturated to Q15; ``s = 0`` is the unshifted layer of models deployed before the
  shift existed);
* readout of ``v`` (the final state, or the last dense layer's output):
  ``logit_c = bias_c + sum_j w_cj * v_j`` (int32, Q15), class = first index of the maximum.

The emitted C (:mod:`dualsparse.embedded.codegen`) implements exactly these rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dualsparse.embedded.quant import (
    asr,
    codes_per_word,
    encode_pow2,
    sat,
    sat16,
    softsign_q15,
    to_q15,
    zero_code,
)
from dualsparse.models.egru_embedded import MAX_DENSE_SHIFT, KWSNet
from dualsparse.models.pow2_quant import (
    INT16_MAX,
    INT16_MIN,
    Q15_ONE,
    SOFTSIGN_LIMIT,
    check_bits,
    max_shift,
    quantize_pow2,
)
from dualsparse.validation import check_int

#: Largest fan-in (inputs + hidden, or readout inputs) for which no int32 sum can overflow: the
#: reference's sums stay within 2^21 + N 2^15, the C's partial sums (inputs offset by 2^15, see
#: ``codegen``) within 2^21 + N 2^16.
MAX_FAN_IN = 16384


def _check_codes(codes: np.ndarray, bits: int, name: str) -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim != 2:
        raise ValueError(f"{name}: codes must be 2-D, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"{name}: codes must be integers, got {c.dtype}")
    km, zc = max_shift(bits), zero_code(bits)
    k = c & ((1 << (bits - 1)) - 1)
    if (c < 0).any() or (c > zc).any() or ((k > km) & (c != zc)).any():
        raise ValueError(f"{name}: invalid {bits}-bit code word(s)")
    if c.shape[1] > MAX_FAN_IN:
        raise ValueError(f"{name}: fan-in {c.shape[1]} > {MAX_FAN_IN} could overflow int32")
    return c.astype(np.int64)


def _check_bias(bias: np.ndarray, rows: int, name: str) -> np.ndarray:
    b = np.asarray(bias)
    if b.shape != (rows,) or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"{name}: bias must be integer ({rows},), got {b.dtype} {b.shape}")
    if (np.abs(b.astype(np.int64)) > SOFTSIGN_LIMIT).any():
        raise ValueError(f"{name}: |bias| must be <= {SOFTSIGN_LIMIT} (64.0 in Q15)")
    return b.astype(np.int64)


def shift_matvec(codes: np.ndarray, v: np.ndarray, bits: int) -> np.ndarray:
    """``sum_j w_rj * v_bj`` by shifts only: codes ``(R, N)``, v ``(B, N)`` -> ``(B, R)`` int64."""
    c = np.asarray(codes, dtype=np.int64)
    k = c & ((1 << (bits - 1)) - 1)
    neg = ((c >> (bits - 1)) & 1).astype(bool)
    zero = c == zero_code(bits)
    k = np.where(zero, 0, k)
    t = asr(np.asarray(v, dtype=np.int64)[:, None, :], k[None, :, :])
    t = np.where(neg[None], -t, t)
    t = np.where(zero[None], 0, t)
    return t.sum(axis=2)


@dataclass
class QLayer:
    """One deployed eGRU layer: ``codes (2H, I + H)`` (rows z then n; columns x then h) and
    ``bias (2H,)`` Q15."""

    input_size: int
    hidden_size: int
    codes: np.ndarray
    bias: np.ndarray


@dataclass
class QDense:
    """One deployed dense ReLU layer: ``codes (D, N)``, ``bias (D,)`` Q15 and the right shift
    ``shift`` of the accumulator."""

    codes: np.ndarray
    bias: np.ndarray
    shift: int = 0

    @property
    def size(self) -> int:
        return self.codes.shape[0]


@dataclass
class DeployedEGRU:
    """Integer eGRU classifier. ``layers``, then the dense ReLU layers ``dense`` (possibly
    none), then a readout ``codes (C, N)``, ``bias (C,)`` (N = last dense or recurrent width)."""

    bits: int
    layers: list[QLayer]
    readout_codes: np.ndarray
    readout_bias: np.ndarray
    meta: dict = field(default_factory=dict)
    dense: list[QDense] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if not self.layers:
            raise ValueError("DeployedEGRU needs at least one layer")
        prev = self.layers[0].input_size
        for i, L in enumerate(self.layers):
            if L.input_size != prev:
                raise ValueError(f"layer {i}: input_size {L.input_size} != previous width {prev}")
            check_int(f"layer {i}: input_size", L.input_size, low=1)
            check_int(f"layer {i}: hidden_size", L.hidden_size, low=1)
            L.codes = _check_codes(L.codes, self.bits, f"layer {i}")
            if L.codes.shape != (2 * L.hidden_size, L.input_size + L.hidden_size):
                raise ValueError(
                    f"layer {i}: codes shape {L.codes.shape} != "
                    f"({2 * L.hidden_size}, {L.input_size + L.hidden_size})"
                )
            L.bias = _check_bias(L.bias, 2 * L.hidden_size, f"layer {i}")
            prev = L.hidden_size
        for i, D in enumerate(self.dense):
            D.codes = _check_codes(D.codes, self.bits, f"dense {i}")
            if D.codes.shape[1] != prev:
                raise ValueError(f"dense {i}: fan-in {D.codes.shape[1]} != previous width {prev}")
            D.bias = _check_bias(D.bias, D.codes.shape[0], f"dense {i}")
            D.shift = check_int(f"dense {i}: shift", D.shift, low=0, high=MAX_DENSE_SHIFT)
            prev = D.size
        self.readout_codes = _check_codes(self.readout_codes, self.bits, "readout")
        if self.readout_codes.shape[1] != prev:
            raise ValueError(f"readout fan-in {self.readout_codes.shape[1]} != last width {prev}")
        self.readout_bias = _check_bias(self.readout_bias, self.readout_codes.shape[0], "readout")

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def num_classes(self) -> int:
        return self.readout_codes.shape[0]

    def layer_step(self, i: int, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        """One step of layer ``i``: x ``(B, I)``, h ``(B, H)`` int -> new h ``(B, H)`` int64."""
        L = self.layers[i]
        v = np.concatenate([x, h], axis=1)
        acc = L.bias[None, :] + shift_matvec(L.codes, v, self.bits)
        s = softsign_q15(acc)
        H = L.hidden_size
        z = (s[:, :H] + Q15_ONE) >> 1
        n = s[:, H:]
        return sat16(h + ((z * (n - h) + (1 << 14)) >> 15))

    def dense_forward(self, h: np.ndarray) -> np.ndarray:
        """The dense ReLU layers on the final state ``h (B, H_last)`` -> ``(B, N)`` int64 in
        ``[0, 32767]`` (``h`` itself without dense layers)."""
        v = np.asarray(h, dtype=np.int64)
        for D in self.dense:
            acc = D.bias[None, :] + shift_matvec(D.codes, v, self.bits)
            v = np.clip(asr(acc, D.shift), 0, INT16_MAX)
        return v

    def run(self, x_q: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Q15 inputs ``(B, T, I)`` or ``(T, I)`` -> ``(logits (B, C) int64, [h_n per layer])``."""
        single = np.ndim(x_q) == 2
        x = check_q15_input(np.asarray(x_q)[None] if single else x_q, self.input_size)
        B, T, _ = x.shape
        hs = [np.zeros((B, L.hidden_size), np.int64) for L in self.layers]
        for t in range(T):
            inp = x[:, t]
            for i in range(len(self.layers)):
                hs[i] = self.layer_step(i, inp, hs[i])
                inp = hs[i]
        v = self.dense_forward(hs[-1])
        logits = self.readout_bias[None] + shift_matvec(self.readout_codes, v, self.bits)
        logits = sat(logits, -(1 << 31), (1 << 31) - 1)
        if single:
            return logits[0], [h[0] for h in hs]
        return logits, hs

    def predict(self, x_q: np.ndarray) -> np.ndarray:
        """Class indices ``(B,)`` (first maximum, like the C code)."""
        return np.argmax(self.run(x_q)[0], axis=-1)

    # -- sizes -----------------------------------------------------------------------------
    def code_matrices(self) -> list[np.ndarray]:
        """Code matrices in order: recurrent layers, dense layers, readout."""
        return [L.codes for L in self.layers] + [D.codes for D in self.dense] + [
            self.readout_codes]

    def num_weights(self) -> int:
        return sum(c.size for c in self.code_matrices())

    def num_biases(self) -> int:
        return (sum(L.bias.size for L in self.layers) + sum(D.bias.size for D in self.dense)
                + self.readout_bias.size)

    def model_bytes(self) -> int:
        """Bytes of the packed model as emitted: uint32 words of codes per row + int32 biases
        (recurrent layers, dense layers and readout)."""
        cpw = codes_per_word(self.bits)
        mats = self.code_matrices()
        words = sum(m.shape[0] * -(-m.shape[1] // cpw) for m in mats)
        return 4 * words + 4 * self.num_biases()


def check_q15_input(x_q: np.ndarray, input_size: int, name: str = "x_q") -> np.ndarray:
    """The one entry check of every path into a deployed model (reference, host C, M0):
    ``x_q`` must be an integer array ``(B, T, input_size)`` whose values fit int16 (floats
    such as 0.9 and values such as 40000 are refused, not truncated or wrapped). Returns it
    as int64."""
    x = np.asarray(x_q)
    if x.ndim != 3 or x.shape[2] != input_size:
        raise ValueError(f"{name} must be (B, T, {input_size}), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must be integer Q15 (use to_q15 on float features), got "
                         f"{x.dtype}")
    if x.size and (int(x.min()) < INT16_MIN or int(x.max()) > INT16_MAX):
        raise ValueError(f"{name} values must fit int16 [{INT16_MIN}, {INT16_MAX}], got "
                         f"[{int(x.min())}, {int(x.max())}]")
    return x.astype(np.int64)


def random_deployed(
    sizes: tuple[int, ...], num_classes: int, bits: int = 3, seed: int = 0, extreme: bool = False,
    dense: tuple[int, ...] = (), dense_shifts: tuple[int, ...] | None = None,
) -> DeployedEGRU:
    """A random valid integer model (for tests). ``sizes = (I, H1, H2, ...)``, ``dense`` the
    widths of the dense ReLU layers (drawn after the recurrent layers and before the readout),
    ``dense_shifts`` their accumulator shifts (default zeros).

    ``extreme=True`` uses only +-1 weights and +-64.0 biases, which drives every accumulator into
    saturation.
    """
    rng = np.random.default_rng(seed)
    km, zc = max_shift(bits), zero_code(bits)

    def codes(r: int, n: int) -> np.ndarray:
        if extreme:
            return rng.choice([0, 1 << (bits - 1)], size=(r, n)).astype(np.int64)
        sign = rng.integers(0, 2, (r, n))
        k = rng.integers(0, km + 1, (r, n))
        c = (sign << (bits - 1)) | k
        return np.where(rng.random((r, n)) < 0.2, zc, c)

    def bias(r: int) -> np.ndarray:
        if extreme:
            return rng.choice([-SOFTSIGN_LIMIT, SOFTSIGN_LIMIT], size=r).astype(np.int64)
        return rng.integers(-SOFTSIGN_LIMIT, SOFTSIGN_LIMIT + 1, r)

    layers = [
        QLayer(sizes[i], sizes[i + 1], codes(2 * sizes[i + 1], sizes[i] + sizes[i + 1]),
               bias(2 * sizes[i + 1]))
        for i in range(len(sizes) - 1)
    ]
    widths = (sizes[-1], *dense)
    shifts = dense_shifts if dense_shifts is not None else (0,) * len(dense)
    dl = [QDense(codes(widths[i + 1], widths[i]), bias(widths[i + 1]), shifts[i])
          for i in range(len(dense))]
    return DeployedEGRU(bits, layers, codes(num_classes, widths[-1]), bias(num_classes),
                        dense=dl)


def _bias_q15(b: torch.Tensor) -> np.ndarray:
    q = np.rint(b.detach().double().cpu().numpy() * Q15_ONE)
    return np.clip(q, -SOFTSIGN_LIMIT, SOFTSIGN_LIMIT).astype(np.int64)


def deploy(model: torch.nn.Module, bits: int | None = None, zero_rule: str | None = None
           ) -> DeployedEGRU:
    """Convert a trained :class:`~dualsparse.models.egru_embedded.KWSNet` (``egru`` or ``egru-q``)
    into the integer model.  Weights are power-of-two quantised (a float ``egru`` is thereby
    post-training quantised); biases become Q15.  The reset-gate variant cannot be deployed."""
    if not isinstance(model, KWSNet) or model.kind == "gru":
        raise ValueError("deploy expects a KWSNet of kind 'egru' or 'egru-q'")
    bits = bits or model.quant_bits or 3
    zero_rule = zero_rule or model.zero_rule
    layers = []
    for rnn in model.rnns:
        for cell in rnn.cells:
            if cell.reset_gate:
                raise ValueError("the reset-gate ablation cannot be deployed")
            w = torch.cat([cell.weight_ih, cell.weight_hh], dim=1).detach().double()
            codes = encode_pow2(quantize_pow2(w, bits, zero_rule), bits)
            b = cell.bias_ih + cell.bias_hh if cell.bias_ih is not None else torch.zeros(w.shape[0])
            layers.append(QLayer(cell.input_size, cell.hidden_size, codes, _bias_q15(b)))
    def codes(lin: torch.nn.Linear) -> np.ndarray:
        return encode_pow2(quantize_pow2(lin.weight.detach().double(), bits, zero_rule), bits)

    dense = [QDense(codes(lin), _bias_q15(lin.bias), s)
             for lin, s in zip(model.dense, model.dense_shifts, strict=True)]
    rc, rb = codes(model.readout), _bias_q15(model.readout.bias)
    return DeployedEGRU(bits, layers, rc, rb, meta={"zero_rule": zero_rule}, dense=dense)


def features_to_q15(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float features ``(..., F)`` in [-1, 1) -> Q15 int64 (same shape)."""
    return to_q15(x)
