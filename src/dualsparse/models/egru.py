"""Event-based GRU (EGRU, Subramoney et al., ICLR 2023) with the ``torch.nn.GRU`` interface.

Gates are stacked in ``nn.GRU`` order ``(r, z, g)`` = (reset, update, candidate) along dim 0
of ``weight_ih_l{k}`` ``(3H, I)`` and ``weight_hh_l{k}`` ``(3H, H)``. One step, with
``y_{t-1}`` the previous *output* (sparse) and ``c_{t-1}`` the internal state::

    r  = sigmoid(W_ir x + b_ir + W_hr y_{t-1} + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz y_{t-1} + b_hz)
    g  = tanh(W_ig x + b_ig + r * (W_hg y_{t-1} + b_hg))      # reset after the matmul
    c~ = z * c_{t-1} + (1 - z) * g          (- y_{t-1} with reset_mode="subtract_output")
    o  = H(c~ - theta)                       # event; surrogate gradient in backward
    y  = o * c~
    c  = c~ - o * theta   ("subtract_threshold", EvNN code)   or   c~   (other modes)

Reset modes: ``"subtract_threshold"`` (EvNN code: subtract theta where an event fired),
``"subtract_output"`` (paper form: ``y_{t-1}`` is subtracted inside the next step's update),
``"none"``. With ``events=False`` the unit is a plain GRU: ``o = 1``, ``y = c = c~``.

Thresholds ``theta`` (one per unit and layer) live in ``(low, high)`` (default ``(0, 1)``),
stored in ``threshold_raw_l{k}`` either as a logit (``threshold_parameterisation="sigmoid"``,
the default: no in-place clamp, exact gradients) or as ``theta`` itself, clamped in the
forward pass (``"clamp"``, EvNN v0.2's form). Initialisation: ``Beta(alpha, 3)`` with mean
``threshold_mean`` (EvNN) or a constant. See :mod:`dualsparse.models.thresholds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dualsparse.models.cell_base import CellBase
from dualsparse.models.egru_fused import check_backend, egru_sequence
from dualsparse.models.recurrent import RecurrentBase
from dualsparse.models.regularizers import zoneout
from dualsparse.models.states import LayerSequences
from dualsparse.models.surrogate import EventFunction, Surrogate, heaviside, make_surrogate
from dualsparse.models.thresholds import Thresholds
from dualsparse.validation import check_choice, check_int

RESET_MODES = ("subtract_threshold", "subtract_output", "none")


class EGRUState(NamedTuple):
    """State of one EGRU layer: sparse output ``y`` and internal state ``c``, ``(B, H)``."""

    y: torch.Tensor
    c: torch.Tensor


class EGRUStepResult(NamedTuple):
    """Everything one EGRU step computes (for analysis, RTRL and tests), each ``(B, H)``."""

    y: torch.Tensor
    c: torch.Tensor
    events: torch.Tensor
    c_tilde: torch.Tensor


def egru_step(
    gi: torch.Tensor,
    y: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_hh: torch.Tensor | None,
    threshold: torch.Tensor,
    surrogate: Surrogate,
    reset_mode: str = "subtract_threshold",
    events: bool = True,
    event_fn: EventFunction = heaviside,
) -> EGRUStepResult:
    """One EGRU step given the input projection ``gi = W_ih x + b_ih`` ``(B, 3H)``.

    Args:
        y, c: previous output and internal state ``(B, H)``.
        weight_hh: ``(3H, H)``; bias_hh: ``(3H,)`` or None; threshold: ``(H,)``.
        event_fn: the event function (default :func:`heaviside`); tests pass a smooth one.
    """
    gh = F.linear(y, weight_hh, bias_hh)
    i_r, i_z, i_g = gi.chunk(3, -1)
    h_r, h_z, h_g = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    g = torch.tanh(i_g + r * h_g)
    c_tilde = z * c + (1.0 - z) * g
    if not events:
        return EGRUStepResult(c_tilde, c_tilde, torch.ones_like(c_tilde), c_tilde)
    if reset_mode == "subtract_output":
        c_tilde = c_tilde - y
    o = event_fn(c_tilde - threshold, surrogate)
    y_new = o * c_tilde
    c_new = c_tilde - o * threshold if reset_mode == "subtract_threshold" else c_tilde
    return EGRUStepResult(y_new, c_new, o, c_tilde)


class _EGRUOptions:
    """Validated EGRU options shared by :class:`EGRUCell` and :class:`EGRU`."""

    def __init__(self, surrogate: str | Surrogate | dict, surrogate_gamma: float | None,
                 surrogate_width: float | None, reset_mode: str, threshold_init: str,
                 threshold_mean: float, threshold_range: Sequence[float],
                 threshold_learnable: bool, events: bool,
                 threshold_parameterisation: str = "sigmoid") -> None:
        self.surrogate = make_surrogate(surrogate, surrogate_gamma, surrogate_width)
        self.reset_mode = check_choice("reset_mode", reset_mode, RESET_MODES)
        self.thresholds = Thresholds(threshold_init, threshold_mean, threshold_range,
                                     threshold_parameterisation)
        self.threshold_range = self.thresholds.range
        self.threshold_learnable = bool(threshold_learnable)
        self.events = bool(events)

    def init_raw_threshold(self, raw: torch.Tensor) -> None:
        """Fill the stored threshold tensor in place (no grad)."""
        self.thresholds.init_raw(raw)

    def threshold(self, raw: torch.Tensor) -> torch.Tensor:
        return self.thresholds.value(raw)

    def config(self) -> dict[str, Any]:
        return {
            "surrogate": self.surrogate.to_dict(),
            "reset_mode": self.reset_mode,
            **self.thresholds.config(),
            "threshold_learnable": self.threshold_learnable,
            "events": self.events,
        }


def _register_threshold(module: nn.Module, name: str, size: int, opts: _EGRUOptions,
                        factory: dict) -> None:
    raw = torch.empty(size, **factory)
    opts.init_raw_threshold(raw)
    if opts.threshold_learnable:
        module.register_parameter(name, nn.Parameter(raw))
    else:
        module.register_buffer(name, raw)


class EGRU(RecurrentBase):
    """Multi-layer event-based GRU with the ``torch.nn.GRU`` interface.

    Args:
        input_size: features of the input ``I``.
        hidden_size: units per layer, an int (all layers) or one int per layer.
        num_layers: number of layers (inferred from a per-layer ``hidden_size``).
        bias: use ``b_ih`` and ``b_hh``.
        batch_first: input/output ``(B, T, F)`` instead of ``(T, B, F)``.
        dropout: dropout on each layer's output except the last (as ``nn.GRU``).
        dropconnect: DropConnect probability on ``weight_hh`` (one mask per forward call).
        zoneout: zoneout probability on the internal state ``c`` (expectation in eval mode).
        surrogate: surrogate shape name, a :class:`Surrogate`, or its dict form.
        surrogate_gamma: peak of the pseudo-derivative (default 0.7, EvNN's).
        surrogate_width: half-width of its support in units of ``c - theta`` (default 1.0).
        reset_mode: ``"subtract_threshold"`` (default), ``"subtract_output"`` or ``"none"``.
        threshold_init: ``"beta"`` (Beta with mean ``threshold_mean``) or ``"constant"``.
        threshold_mean: mean (or value) of the initial thresholds (default 0.3).
        threshold_range: ``(low, high)`` open interval of the thresholds (default ``(0, 1)``).
        threshold_learnable: thresholds are parameters (True) or fixed buffers.
        threshold_parameterisation: ``"sigmoid"`` (a logit is learned, default) or
            ``"clamp"`` (``theta`` itself, clamped in the forward pass, as EvNN v0.2).
        events: False turns events off (a plain GRU with the same parameters).
        fused: run each layer's time loop as one autograd Function with a hand-written
            backward (:mod:`dualsparse.models.egru_fused`, faster); False steps
            :func:`egru_step` under autograd (the reference). Both compute the same values
            and gradients.
        backend: the fused layer's implementation: ``"auto"`` (default: the Triton kernels
            for CUDA tensors when triton is installed, else PyTorch), ``"torch"`` or
            ``"triton"`` (Triton kernels, CUDA; ``pip install dualsparse[gpu]``). An
            attribute that may be changed; not part of the config.

    Inputs/outputs: see :meth:`RecurrentBase.forward`. The state is one :class:`EGRUState`
    per layer; with ``return_sequences=True`` the events ``o_t`` and pre-reset ``c~_t`` of
    every layer come back too.
    """

    gate_names = ("r", "z", "g")
    state_type = EGRUState
    _egru_step = staticmethod(egru_step)  # the unfused loop's step; compile_steps swaps it

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int | None = None,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        dropconnect: float = 0.0,
        zoneout: float = 0.0,
        surrogate: str | Surrogate | dict = "triangle",
        surrogate_gamma: float | None = None,
        surrogate_width: float | None = None,
        reset_mode: str = "subtract_threshold",
        threshold_init: str = "beta",
        threshold_mean: float = 0.3,
        threshold_range: Sequence[float] = (0.0, 1.0),
        threshold_learnable: bool = True,
        threshold_parameterisation: str = "sigmoid",
        events: bool = True,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        self.fused = bool(fused)
        self.backend = check_backend(backend)
        self._opts = _EGRUOptions(surrogate, surrogate_gamma, surrogate_width, reset_mode,
                                  threshold_init, threshold_mean, threshold_range,
                                  threshold_learnable, events, threshold_parameterisation)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         dropconnect, zoneout, device, dtype)
        factory = {"device": device, "dtype": dtype}
        for k, h_k in enumerate(self.hidden_sizes):
            _register_threshold(self, f"threshold_raw_l{k}", h_k, self._opts, factory)

    surrogate = property(lambda self: self._opts.surrogate)
    reset_mode = property(lambda self: self._opts.reset_mode)
    events = property(lambda self: self._opts.events)

    def threshold(self, layer: int) -> torch.Tensor:
        """Thresholds ``theta`` of one layer, ``(H_k,)``, inside ``threshold_range``."""
        return self._opts.threshold(getattr(self, f"threshold_raw_l{layer}"))

    def reset_thresholds(self) -> None:
        """Draw the thresholds again from their initial distribution."""
        for k in range(self.num_layers):
            self._opts.init_raw_threshold(getattr(self, f"threshold_raw_l{k}"))

    def set_threshold(self, layer: int, value: torch.Tensor | float) -> None:
        """Set the thresholds of a layer to given values (inside ``threshold_range``)."""
        layer = check_int("layer", layer, low=0, high=self.num_layers - 1)
        low, high = self._opts.threshold_range
        h = self.hidden_sizes[layer]
        value = torch.as_tensor(value, dtype=torch.float64)
        if value.dim() > 1 or value.numel() not in (1, h):
            raise ValueError(f"thresholds of layer {layer} must be a number or a ({h},) tensor, "
                             f"got shape {tuple(value.shape)}")
        value = value.reshape(-1).expand(h)
        if not bool(((value > low) & (value < high)).all()):
            raise ValueError(f"thresholds must lie strictly inside ({low}, {high})")
        raw = getattr(self, f"threshold_raw_l{layer}")
        with torch.no_grad():
            raw.copy_(self._opts.thresholds.raw_from_value(value).to(raw))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._opts.config(), "fused": self.fused}

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", reset_mode={self.reset_mode!r}, surrogate={self.surrogate}"
        return s if self.events else s + ", events=False"

    def _zero_layer_state(self, layer: int, batch: int, like: torch.Tensor) -> EGRUState:
        z = like.new_zeros(batch, self.hidden_sizes[layer])
        return EGRUState(z, z.clone())

    def _run_layer(self, layer: int, gi: torch.Tensor, w_hh: torch.Tensor,
                   b_hh: torch.Tensor | None, state: tuple, record: bool):
        theta = self.threshold(layer)
        keep: torch.Tensor | float | None = None
        if self.zoneout:
            keep = (gi.new_empty(gi.shape[:-1] + (self.hidden_sizes[layer],))
                    .bernoulli_(self.zoneout) if self.training else self.zoneout)
        if self.fused and self.events and not torch.jit.is_tracing():  # legacy ONNX export
            ys, events, c_tildes, c_last = egru_sequence(
                gi, state.y, state.c, w_hh, b_hh, theta, keep, self.surrogate, self.reset_mode,
                backend=self.backend)
            seq = LayerSequences(ys, state.y, events, c_tildes) if record else None
            return ys, EGRUState(ys[-1], c_last), seq
        y, c = state
        outputs, events, c_tildes = [], [], []
        keeps = keep.unbind(0) if isinstance(keep, torch.Tensor) else None
        for t, gi_t in enumerate(gi.unbind(0)):
            res = self._egru_step(gi_t, y, c, w_hh, b_hh, theta, self.surrogate,
                                  self.reset_mode, self.events)
            c_new = res.c
            if isinstance(keep, float):
                c_new = keep * c + (1.0 - keep) * c_new
            elif keeps is not None:
                c_new = c_new + keeps[t] * (c - c_new)
            y, c = res.y, c_new
            outputs.append(y)
            if record:
                events.append(res.events)
                c_tildes.append(res.c_tilde)
        ys = torch.stack(outputs)
        seq = LayerSequences(ys, state.y, torch.stack(events), torch.stack(c_tildes)) if record \
            else None
        return ys, EGRUState(y, c), seq


class EGRUCell(CellBase):
    """One EGRU layer, one time step (the ``nn.GRUCell`` counterpart of :class:`EGRU`).

    Args: as :class:`EGRU` (single layer, no ``dropout``/``batch_first``).

    ``forward(input (B, I) or (I,), state=None) -> (y, EGRUState(y, c))``.
    """

    gate_names = ("r", "z", "g")
    num_gates = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        dropconnect: float = 0.0,
        zoneout: float = 0.0,
        surrogate: str | Surrogate | dict = "triangle",
        surrogate_gamma: float | None = None,
        surrogate_width: float | None = None,
        reset_mode: str = "subtract_threshold",
        threshold_init: str = "beta",
        threshold_mean: float = 0.3,
        threshold_range: Sequence[float] = (0.0, 1.0),
        threshold_learnable: bool = True,
        threshold_parameterisation: str = "sigmoid",
        events: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._opts = _EGRUOptions(surrogate, surrogate_gamma, surrogate_width, reset_mode,
                                  threshold_init, threshold_mean, threshold_range,
                                  threshold_learnable, events, threshold_parameterisation)
        super().__init__(input_size, hidden_size, bias, dropconnect, zoneout, device, dtype)
        _register_threshold(self, "threshold_raw", hidden_size, self._opts,
                            {"device": device, "dtype": dtype})

    surrogate = property(lambda self: self._opts.surrogate)
    reset_mode = property(lambda self: self._opts.reset_mode)
    events = property(lambda self: self._opts.events)

    @property
    def threshold(self) -> torch.Tensor:
        """Thresholds ``theta`` ``(H,)``."""
        return self._opts.threshold(self.threshold_raw)

    @classmethod
    def from_layer(cls, egru: EGRU, layer: int = 0) -> EGRUCell:
        """A cell that *shares* the parameters of one layer of an :class:`EGRU`."""
        cfg = egru.get_config()
        h = egru.hidden_sizes[layer]
        w = egru.weight_ih_l0
        cell = cls(egru.layer_input_size(layer), h, bias=egru.bias, dropconnect=egru.dropconnect,
                   zoneout=egru.zoneout, surrogate=cfg["surrogate"], reset_mode=cfg["reset_mode"],
                   threshold_init=cfg["threshold_init"], threshold_mean=cfg["threshold_mean"],
                   threshold_range=cfg["threshold_range"],
                   threshold_learnable=cfg["threshold_learnable"],
                   threshold_parameterisation=cfg["threshold_parameterisation"],
                   events=cfg["events"],
                   device=w.device, dtype=w.dtype)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "threshold_raw"):
            shared = getattr(egru, f"{name}_l{layer}")
            if shared is not None:
                setattr(cell, name, shared)
        return cell

    def get_config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "bias": self.bias, "dropconnect": self.dropconnect, "zoneout": self.zoneout,
                **self._opts.config()}

    def forward(self, input: torch.Tensor, state: EGRUState | None = None,
                event_fn: EventFunction = heaviside) -> tuple[torch.Tensor, EGRUState]:
        """One step. ``input``: ``(B, I)`` or ``(I,)``; ``state``: ``EGRUState`` of
        ``(B, H)`` (or ``(H,)``) tensors, zeros if None. Returns ``(y, new_state)``."""
        res = self.step(input, state, event_fn)
        return res.y, EGRUState(res.y, res.c)

    def step(self, input: torch.Tensor, state: EGRUState | None = None,
             event_fn: EventFunction = heaviside) -> EGRUStepResult:
        """Like :meth:`forward` but returns the events and pre-reset state as well."""
        unbatched, gi, (y, c), w_hh = self._prepare(input, state, EGRUState._fields)
        res = egru_step(gi, y, c, w_hh, self.bias_hh, self.threshold, self.surrogate,
                        self.reset_mode, self.events, event_fn)
        res = res._replace(c=zoneout(c, res.c, self.zoneout, self.training))
        if unbatched:
            res = EGRUStepResult(*(t.squeeze(0) for t in res))
        return res


__all__ = ["EGRU", "EGRUCell", "EGRUState", "EGRUStepResult", "LayerSequences", "egru_step",
           "RESET_MODES"]
