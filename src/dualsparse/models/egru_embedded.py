"""The embedded eGRU of Amoh & Odame (2019), optionally quantisation-aware.

Cell (no reset gate; softsign ``s(x) = x / (1 + |x|)`` in place of sigmoid and tanh)::

    z  = (s(W_iz x + b_iz + W_hz h + b_hz) + 1) / 2
    n  = s(W_in x + b_in + W_hn h + b_hn)
    h' = (1 - z) * h + z * n

Weights follow ``nn.GRU`` names and layout: ``weight_ih`` ``(G*H, I)``, ``weight_hh`` ``(G*H, H)``,
``bias_ih``/``bias_hh`` ``(G*H,)`` with the gates stacked in the order ``(z, n)`` (G = 2), or
``(r, z, n)`` (G = 3) when ``reset_gate=True`` (ablation only; not deployable).  With the reset
gate: ``r = (s(.) + 1) / 2`` and ``n = s(W_in x + b_in + r * (W_hn h + b_hn))`` (reset after the
matmul, as in ``nn.GRU``).

With ``quant_bits`` set, the forward pass mirrors the deployed integer model
(:mod:`dualsparse.embedded.reference`): weights are power-of-two quantised with a straight-through
estimator, the bias ``b_ih + b_hh`` is rounded to Q15, pre-activations are saturated to +-64,
and gate outputs and states are rounded to Q15.  Gradients reach the full-precision weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dualsparse.models.pow2_quant import (
    INT16_MAX,
    Q15_ONE,
    SOFTSIGN_LIMIT,
    ZERO_RULES,
    check_bits,
    fake_q15,
    quantize_pow2_ste,
    softsign_float,
)
from dualsparse.validation import check_choice, check_int, check_real

_PRE_LIMIT = SOFTSIGN_LIMIT / Q15_ONE  # 64.0
#: largest right shift of a dense layer's accumulator
MAX_DENSE_SHIFT = 30


def default_dense_shift(fan_in: int) -> int:
    """``ceil(log2(fan_in))``: the default right shift of a quantisation-aware dense layer's
    accumulator, the smallest with ``fan_in * max|w| * max|v| <= 2**s`` (weights and inputs
    at most 1), so that the weighted sum alone cannot saturate the Q15 output."""
    return (check_int("fan_in", fan_in, low=1) - 1).bit_length()


def default_dense_shifts(last_hidden: int, dense_sizes: Sequence[int],
                         quantised: bool) -> list[int]:
    """The default shift of each dense layer after a last recurrent layer of ``last_hidden``
    units: :func:`default_dense_shift` of its fan-in if ``quantised`` (``egru-q``), else 0."""
    fan_ins = [last_hidden, *dense_sizes][:len(dense_sizes)]
    return [default_dense_shift(n) if quantised else 0 for n in fan_ins]


def q15_bias(b: torch.Tensor, saturate: bool = True) -> torch.Tensor:
    """A bias as deployed: rounded to the Q15 grid (straight-through gradient) after saturating
    it to +-64.0, or without saturating (``saturate=False``: the readout's bias, which training
    has never clamped)."""
    if saturate:
        b = torch.clamp(b, -_PRE_LIMIT, _PRE_LIMIT)
    return b + (torch.round(b * Q15_ONE) / Q15_ONE - b).detach()


def dense_q15(pre: torch.Tensor, shift: int) -> torch.Tensor:
    """Output of a quantisation-aware dense layer from its pre-activation ``W v + b``: the
    integer model's ``min(max(acc >> shift, 0), 32767)``.  With ``shift > 0`` the float graph
    multiplies by ``2**-shift`` and floors to Q15 like the shift (straight-through gradient,
    zero beyond the limits); ``shift = 0`` is the layer of runs saved before the shift
    existed, rounded to Q15 as then."""
    y = torch.relu(pre)
    if shift == 0:
        return fake_q15(y)
    y = torch.clamp(y * 2.0**-shift, 0.0, INT16_MAX / Q15_ONE)
    return y + (torch.floor(y * Q15_ONE) / Q15_ONE - y).detach()


class EGRUEmbeddedCell(nn.Module):
    """One eGRU step. ``forward(x (B, I), h (B, H)) -> h' (B, H)``.

    Args:
        input_size: I. hidden_size: H.
        bias: learn biases (both ``bias_ih`` and ``bias_hh``, summed when deployed).
        reset_gate: keep the GRU reset gate (ablation; float only).
        quant_bits: weight bit width for quantisation-aware training (None = float).
        zero_rule: power-of-two zero rule, ``"paper"`` or ``"code"`` (see ``models.pow2_quant``).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        reset_gate: bool = False,
        quant_bits: int | None = None,
        zero_rule: str = "paper",
    ) -> None:
        super().__init__()
        input_size = check_int("input_size", input_size, low=1)
        hidden_size = check_int("hidden_size", hidden_size, low=1)
        check_choice("zero_rule", zero_rule, ZERO_RULES)
        if quant_bits is not None:
            check_bits(quant_bits)
            if reset_gate:
                raise ValueError("quantisation-aware mode is only defined without the reset gate")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.reset_gate, self.quant_bits, self.zero_rule = reset_gate, quant_bits, zero_rule
        g = 3 if reset_gate else 2
        self.weight_ih = nn.Parameter(torch.empty(g * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g * hidden_size, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(g * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(g * hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) like ``nn.GRU``; quantised cells use a wider U(-1, 1)."""
        bound = 1.0 if self.quant_bits is not None else 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        if self.bias_ih is not None and self.quant_bits is not None:
            nn.init.uniform_(self.bias_ih, -0.1, 0.1)
            nn.init.zeros_(self.bias_hh)

    # -- effective (possibly quantised) parameters --------------------------------------------
    def effective_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_ih, W_hh)`` as used in the forward pass (quantised in QAT mode)."""
        if self.quant_bits is None:
            return self.weight_ih, self.weight_hh
        q = self.quant_bits
        return (
            quantize_pow2_ste(self.weight_ih, q, self.zero_rule),
            quantize_pow2_ste(self.weight_hh, q, self.zero_rule),
        )

    def effective_bias(self) -> torch.Tensor | None:
        """Summed bias ``b_ih + b_hh`` (rounded to Q15 and saturated to +-64 in QAT mode)."""
        if self.bias_ih is None:
            return None
        b = self.bias_ih + self.bias_hh
        return b if self.quant_bits is None else q15_bias(b)

    def _act(self, pre: torch.Tensor) -> torch.Tensor:
        if self.quant_bits is not None:
            pre = torch.clamp(pre, -_PRE_LIMIT, _PRE_LIMIT)
        return softsign_float(pre)

    def step(self, gi: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
        """One step given the input projection ``gi = W_ih x + b`` ``(B, G*H)``."""
        H = self.hidden_size
        gh = h @ w_hh.t()
        q = self.quant_bits is not None
        if self.reset_gate:
            r = (self._act(gi[:, :H] + gh[:, :H]) + 1) / 2
            z = (self._act(gi[:, H : 2 * H] + gh[:, H : 2 * H]) + 1) / 2
            bhn = self.bias_hh[2 * H :] if self.bias_hh is not None else 0.0
            n = self._act(gi[:, 2 * H :] + r * (gh[:, 2 * H :] + bhn))
        else:
            s = self._act(gi + gh)
            if q:
                s = fake_q15(s)
                # z = (s + 1) / 2 rounded down to Q15, like (s_q + 32768) >> 1
                zf = (s[:, :H] + 1) / 2
                z = zf + (torch.floor(zf * Q15_ONE) / Q15_ONE - zf).detach()
            else:
                z = (s[:, :H] + 1) / 2
            n = s[:, H:]
        h_new = h + z * (n - h)
        return fake_q15(h_new) if q else h_new

    def input_projection(self, x: torch.Tensor, w_ih: torch.Tensor) -> torch.Tensor:
        """``W_ih x + b`` for any leading shape ``(..., I) -> (..., G*H)``; with the reset gate
        ``b_hn`` is left out (it is applied inside the reset product in :meth:`step`)."""
        gi = x @ w_ih.t()
        if self.bias_ih is None:
            return gi
        if self.reset_gate:
            H = self.hidden_size
            bhh_rz = torch.cat([self.bias_hh[: 2 * H], torch.zeros_like(self.bias_hh[2 * H :])])
            return gi + self.bias_ih + bhh_rz
        return gi + self.effective_bias()

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected x of shape (B, {self.input_size}), got {tuple(x.shape)}")
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        w_ih, w_hh = self.effective_weights()
        return self.step(self.input_projection(x, w_ih), h, w_hh)


class EGRUEmbedded(nn.Module):
    """Multi-layer eGRU with the ``nn.GRU`` interface (unidirectional).

    ``forward(input (T, B, I) or (B, T, I) if batch_first, h_0 (L, B, H) | None)
    -> (output (T, B, H), h_n (L, B, H))``.  Parameters per layer ``k`` are named
    ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (gate order
    ``(z, n)``, or ``(r, z, n)`` with ``reset_gate=True``).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        reset_gate: bool = False,
        quant_bits: int | None = None,
        zero_rule: str = "paper",
    ) -> None:
        super().__init__()
        num_layers = check_int("num_layers", num_layers, low=1)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = batch_first
        self.cells = nn.ModuleList(
            EGRUEmbeddedCell(input_size if k == 0 else hidden_size, hidden_size, bias, reset_gate,
                             quant_bits, zero_rule)
            for k in range(num_layers)
        )

    def named_parameters_gru(self) -> dict[str, torch.Tensor]:
        """Parameters under ``nn.GRU`` names (``weight_ih_l0``, ...)."""
        out = {}
        for k, c in enumerate(self.cells):
            for n, p in c.named_parameters():
                out[f"{n}_l{k}"] = p
        return out

    def forward(
        self, input: torch.Tensor, h_0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = input.transpose(0, 1) if self.batch_first else input
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"expected input (T, B, {self.input_size}), got {tuple(input.shape)}")
        T, B, _ = x.shape
        if h_0 is not None and h_0.shape != (self.num_layers, B, self.hidden_size):
            raise ValueError(
                f"h_0 must be ({self.num_layers}, {B}, {self.hidden_size}), got {tuple(h_0.shape)}"
            )
        finals = []
        for k, cell in enumerate(self.cells):
            w_ih, w_hh = cell.effective_weights()
            gi = cell.input_projection(x, w_ih)  # (T, B, G*H), all steps at once
            h = h_0[k] if h_0 is not None else x.new_zeros(B, self.hidden_size)
            outs = []
            for t in range(T):
                h = cell.step(gi[t], h, w_hh)
                outs.append(h)
            x = torch.stack(outs)
            finals.append(h)
        out = x.transpose(0, 1) if self.batch_first else x
        return out, torch.stack(finals)


class KWSNet(nn.Module):
    """Keyword-spotting classifier: stacked recurrent layers, optional dense ReLU layers on the
    last layer's final state, and a linear readout.

    ``forward(x (T, B, F)) -> logits (B, C)``; with ``dense_sizes = (D1, ...)`` the final state
    ``(B, H_last)`` passes ``relu(W_k v + b_k)`` ``(B, D_k)`` layer by layer before the readout
    ``(B, C)`` (Amoh & Odame: ``dense_sizes=(16,)``).  In ``egru-q`` a dense layer's weights and
    bias are quantised like the readout's (power-of-two codes with the straight-through
    estimator; bias rounded to Q15, saturated to +-64.0) and its output is rounded to Q15 and
    saturated to ``[0, 32767/32768]``, as the integer model computes it
    (:mod:`dualsparse.embedded.reference`).

    Args:
        kind: ``"gru"`` (``torch.nn.GRU`` layers), ``"egru"`` (float eGRU) or ``"egru-q"``
            (quantisation-aware eGRU and readout).
        input_size: F. hidden_sizes: one entry per layer, e.g. ``(32, 20)``.
        num_classes: C. quant_bits: weight bits for ``egru-q``.
        logit_gain: fixed positive factor applied to the logits in training only of ``egru-q``
            (power-of-two weights keep logits small; a gain does not change the argmax, so the
            deployed model omits it).
        reset_gate: keep the reset gate in ``egru`` (ablation).
        dense_sizes: widths of the dense ReLU layers between the recurrent layers and the
            readout (default none).
        dense_shifts: ``egru-q`` only: right shift of each dense layer's accumulator (default
            :func:`default_dense_shift` of the layer's fan-in; ``0`` for every layer is the
            unshifted layer of runs saved before the shift existed).  The other kinds have
            no shift (zeros).
    """

    def __init__(
        self,
        kind: str,
        input_size: int = 64,
        hidden_sizes: Sequence[int] = (32, 20),
        num_classes: int = 10,
        quant_bits: int = 3,
        zero_rule: str = "paper",
        logit_gain: float = 4.0,
        reset_gate: bool = False,
        dense_sizes: Sequence[int] = (),
        dense_shifts: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_choice("kind", kind, ("gru", "egru", "egru-q"))
        if not hidden_sizes:
            raise ValueError("hidden_sizes must name at least one layer")
        hidden_sizes = [check_int("hidden_sizes", h, low=1) for h in hidden_sizes]
        self.dense_sizes = [check_int("dense_sizes", d, low=1) for d in dense_sizes]
        logit_gain = check_real("logit_gain", logit_gain, low=0.0, low_open=True)
        check_choice("zero_rule", zero_rule, ZERO_RULES)
        self.kind, self.input_size = kind, input_size
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.num_classes, self.logit_gain = num_classes, float(logit_gain)
        qb = quant_bits if kind == "egru-q" else None
        self.quant_bits, self.zero_rule = qb, zero_rule
        layers: list[nn.Module] = []
        prev = input_size
        for h in self.hidden_sizes:
            if kind == "gru":
                layers.append(nn.GRU(prev, h))
            else:
                layers.append(EGRUEmbedded(prev, h, reset_gate=reset_gate, quant_bits=qb,
                                           zero_rule=zero_rule))
            prev = h
        self.rnns = nn.ModuleList(layers)
        self.dense = nn.ModuleList()
        for d in self.dense_sizes:
            self.dense.append(nn.Linear(prev, d))
            prev = d
        self.readout = nn.Linear(prev, num_classes)
        self.dense_shifts = self._shifts(dense_shifts)
        if qb is not None:  # wide enough that the power-of-two zero rule keeps weights alive
            for lin in (*self.dense, self.readout):
                nn.init.uniform_(lin.weight, -1.0, 1.0)
                nn.init.zeros_(lin.bias)

    def _shifts(self, shifts: Sequence[int] | None) -> list[int]:
        if shifts is None:
            return default_dense_shifts(self.hidden_sizes[-1], self.dense_sizes,
                                        self.quant_bits is not None)
        out = [check_int("dense_shifts", s, low=0, high=MAX_DENSE_SHIFT) for s in shifts]
        if len(out) != len(self.dense):
            raise ValueError(f"dense_shifts needs one shift per dense layer ({len(self.dense)}), "
                             f"got {len(out)}")
        if self.quant_bits is None and any(out):
            raise ValueError("dense_shifts apply to egru-q only (the float layers have none)")
        return out

    def readout_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective readout ``(W (C, H), b (C,))`` (quantised in ``egru-q``)."""
        w, b = self.readout.weight, self.readout.bias
        if self.quant_bits is None:
            return w, b
        return quantize_pow2_ste(w, self.quant_bits, self.zero_rule), q15_bias(b, saturate=False)

    def dense_params(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective dense layer ``k``: ``(W (D_k, N), b (D_k,))``; in ``egru-q`` quantised like
        the readout, the bias also saturated to +-64.0 like every deployed bias."""
        lin = self.dense[k]
        w, b = lin.weight, lin.bias
        if self.quant_bits is None:
            return w, b
        return quantize_pow2_ste(w, self.quant_bits, self.zero_rule), q15_bias(b)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Readout input ``(B, N)``: the last recurrent layer's final state after the dense
        ReLU layers (shifted, on the Q15 grid and saturated to ``[0, 1)`` in ``egru-q``)."""
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"expected x (T, B, {self.input_size}), got {tuple(x.shape)}")
        if self.quant_bits is not None:
            x = fake_q15(x)
        for rnn in self.rnns:
            x, _ = rnn(x)
        v = x[-1]
        for k in range(len(self.dense)):
            w, b = self.dense_params(k)
            pre = v @ w.t() + b
            v = torch.relu(pre) if self.quant_bits is None else dense_q15(pre, self.dense_shifts[k])
        return v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.features(x)
        w, b = self.readout_params()
        logits = v @ w.t() + b
        return logits * self.logit_gain if self.quant_bits is not None else logits

    def num_weights(self) -> int:
        """Number of parameters (weights and biases)."""
        return sum(p.numel() for p in self.parameters())
