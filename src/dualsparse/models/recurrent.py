"""Shared machinery of the multi-layer recurrent modules (EGRU, GRU, LSTM).

Layout follows :class:`torch.nn.GRU`: layer ``k`` owns ``weight_ih_l{k}`` ``(G*H_k, I_k)``,
``weight_hh_l{k}`` ``(G*H_k, H_k)``, ``bias_ih_l{k}`` and ``bias_hh_l{k}`` ``(G*H_k,)``, where
``G`` is the number of gates stacked along dim 0 in the order given by ``gate_names``.
Unlike ``nn.GRU``, every layer may have its own hidden size.

The input projections ``x_t W_ih^T + b_ih`` of all time steps are computed in one matmul per
layer; the Python time loop does only the recurrent part.

State convention: the state is a tuple with one entry per layer; each entry is the layer's
NamedTuple state (``EGRUState(y, c)``, ``GRUState(h)``, ``LSTMState(h, c)``) holding
``(B, H_k)`` tensors (``(H_k,)`` for unbatched input). The ``nn.GRU``/``nn.LSTM`` stacked form
``(num_layers, B, H)`` is accepted as input when all layers have the same size, and
:func:`stack_state` converts a returned state into it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from dualsparse.models.packed import forward_packed
from dualsparse.models.regularizers import check_probability, dropconnect, zoneout
from dualsparse.models.states import LayerSequences
from dualsparse.models.tracing import check_finite, check_parameters_finite
from dualsparse.validation import check_choice, check_int


def _as_sizes(hidden_size: int | Sequence[int], num_layers: int | None) -> tuple[int, ...]:
    """Per-layer hidden sizes from one size and ``num_layers`` (default 1), or a sequence."""
    if num_layers is not None:
        num_layers = check_int("num_layers", num_layers, low=1)
    if isinstance(hidden_size, numbers.Integral):
        return (check_int("hidden sizes", hidden_size, low=1),) * (num_layers or 1)
    sizes = tuple(check_int("hidden sizes", h, low=1) for h in hidden_size)
    if not sizes:
        raise ValueError("hidden_size must name at least one layer")
    if num_layers is not None and num_layers != len(sizes):
        raise ValueError(
            f"num_layers={num_layers} does not match {len(sizes)} hidden sizes {sizes}")
    return sizes


class RecurrentBase(nn.Module):
    """Base class: parameters, input/state validation, layer stacking, time loop.

    Subclasses set ``gate_names`` and ``state_type`` and implement :meth:`_zero_layer_state`
    and :meth:`_step`.
    """

    gate_names: tuple[str, ...] = ()
    state_type: type = tuple

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, low=1)
        self.hidden_sizes = _as_sizes(hidden_size, num_layers)
        self.hidden_size = hidden_size if isinstance(hidden_size, int) else self.hidden_sizes
        self.num_layers = len(self.hidden_sizes)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = check_probability("dropout", dropout)
        self.dropconnect = check_probability("dropconnect", dropconnect)
        self.zoneout = check_probability("zoneout", zoneout)
        #: Check inputs, states and weights for NaN/inf on every forward (a few reductions;
        #: a sync on GPU).
        self.check_finite = True
        factory = {"device": device, "dtype": dtype}
        g = len(self.gate_names)
        in_sizes = (input_size,) + self.hidden_sizes[:-1]
        for k, (i_k, h_k) in enumerate(zip(in_sizes, self.hidden_sizes, strict=True)):
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(g * h_k, i_k,
                                                                                **factory)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(g * h_k, h_k,
                                                                                **factory)))
            if self.bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(g * h_k,
                                                                                  **factory)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(g * h_k,
                                                                                  **factory)))
            else:
                self.register_parameter(f"bias_ih_l{k}", None)
                self.register_parameter(f"bias_hh_l{k}", None)
        self.reset_parameters()

    # ----------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """``U(-1/sqrt(H_k), 1/sqrt(H_k))`` for all weights and biases, as ``nn.GRU``."""
        for k, h_k in enumerate(self.hidden_sizes):
            bound = 1.0 / math.sqrt(h_k)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                p = getattr(self, f"{name}_l{k}")
                if p is not None:
                    nn.init.uniform_(p, -bound, bound)

    @property
    def output_size(self) -> int:
        """Feature size of the output (the last layer's hidden size)."""
        return self.hidden_sizes[-1]

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.hidden_sizes[layer - 1]

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor,
                                                 torch.Tensor | None, torch.Tensor | None]:
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of a layer (as the forward sees them,
        i.e. after any parametrisation such as a pruning mask)."""
        return (getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}"),
                getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}"))

    def gate_slice(self, layer: int, gate: str) -> slice:
        """Rows of ``weight_*_l{layer}`` / ``bias_*_l{layer}`` that belong to ``gate``."""
        if gate not in self.gate_names:
            raise ValueError(f"unknown gate {gate!r}; this module has gates {self.gate_names}")
        h = self.hidden_sizes[layer]
        g = self.gate_names.index(gate)
        return slice(g * h, (g + 1) * h)

    def gate_weight(self, layer: int, kind: str, gate: str) -> torch.Tensor:
        """View of one gate's rows of ``weight_{kind}_l{layer}`` (``kind``: ih or hh)."""
        check_choice("kind", kind, ("ih", "hh"))
        return getattr(self, f"weight_{kind}_l{layer}")[self.gate_slice(layer, gate)]

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict."""
        return {
            "input_size": self.input_size,
            "hidden_size": list(self.hidden_sizes),
            "bias": self.bias,
            "batch_first": self.batch_first,
            "dropout": self.dropout,
            "dropconnect": self.dropconnect,
            "zoneout": self.zoneout,
        }

    def extra_repr(self) -> str:
        sizes = self.hidden_size if isinstance(self.hidden_size, int) else list(self.hidden_sizes)
        s = f"{self.input_size}, {sizes}, num_layers={self.num_layers}"
        for name in ("dropout", "dropconnect", "zoneout"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        return s

    # ------------------------------------------------------------------ state
    def _zero_layer_state(self, layer: int, batch: int, like: torch.Tensor) -> tuple:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> tuple:
        """All-zero state for ``batch_size`` sequences."""
        ref = self.weight_ih_l0
        like = torch.empty(0, device=device or ref.device, dtype=dtype or ref.dtype)
        return tuple(self._zero_layer_state(k, batch_size, like) for k in range(self.num_layers))

    def _normalise_state(self, state: Any, batch: int | None, like: torch.Tensor) -> tuple:
        """Validate a user-given state and return the per-layer tuple form."""
        if state is None:
            b = 1 if batch is None else batch
            st = tuple(self._zero_layer_state(k, b, like) for k in range(self.num_layers))
            return st if batch is not None else tuple(self._unbatch(s) for s in st)
        per_layer = self._split_stacked_state(state, batch)
        if per_layer is None:
            if not isinstance(state, (list, tuple)) or len(state) != self.num_layers:
                raise ValueError(
                    f"state must be a sequence of {self.num_layers} per-layer "
                    f"{self.state_type.__name__} entries (or the stacked nn-style form), "
                    f"got {type(state).__name__}"
                    + (f" of length {len(state)}" if isinstance(state, (list, tuple)) else "")
                )
            per_layer = tuple(state)
        out = []
        for k, layer_state in enumerate(per_layer):
            fields = self.state_type._fields
            if not isinstance(layer_state, (list, tuple)) or len(layer_state) != len(fields):
                raise ValueError(
                    f"state of layer {k} must be a {self.state_type.__name__}{fields}, "
                    f"got {type(layer_state).__name__}"
                )
            expected = (batch, self.hidden_sizes[k]) if batch is not None else (
                self.hidden_sizes[k],)
            for name, t in zip(fields, layer_state, strict=True):
                if not isinstance(t, torch.Tensor):
                    raise ValueError(f"state {name} of layer {k} must be a tensor")
                if tuple(t.shape) != expected:
                    raise ValueError(
                        f"state {name} of layer {k} has shape {tuple(t.shape)}, "
                        f"expected {expected}"
                    )
                if t.dtype != like.dtype or t.device != like.device:
                    raise ValueError(
                        f"state {name} of layer {k} is {t.dtype} on {t.device}, but the input "
                        f"is {like.dtype} on {like.device}"
                    )
                if self.check_finite:
                    check_finite(t, f"state {name} of layer {k}")
            out.append(self.state_type(*layer_state))
        return tuple(out)

    def _split_stacked_state(self, state: Any, batch: int | None) -> tuple | None:
        """Per-layer tuple from the nn-style stacked form, or None if ``state`` is per-layer.

        The stacked form is a tensor (one-field states) or a tuple of tensors, each
        ``(num_layers, B, H)`` (``(num_layers, H)`` unbatched); the per-layer form is a
        sequence of per-layer NamedTuples.
        """
        if isinstance(state, torch.Tensor):
            tensors: tuple = (state,)
        elif isinstance(state, (list, tuple)) and state and all(
                isinstance(t, torch.Tensor) for t in state):
            tensors = tuple(state)
        else:
            return None
        fields = self.state_type._fields
        if len(tensors) != len(fields):
            raise ValueError(
                f"a stacked state needs {len(fields)} tensor(s) {fields}, got {len(tensors)}")
        want_dim = 2 if batch is None else 3
        for name, t in zip(fields, tensors, strict=True):
            if t.dim() != want_dim or t.size(0) != self.num_layers:
                layout = "(num_layers, H)" if batch is None else "(num_layers, B, H)"
                raise ValueError(
                    f"stacked state {name} has shape {tuple(t.shape)}, expected {layout} with "
                    f"num_layers={self.num_layers}"
                )
        if len(set(self.hidden_sizes)) != 1:
            raise ValueError("the stacked state form needs equal hidden sizes in all layers; "
                             "pass a tuple of per-layer states instead")
        return tuple(self.state_type(*(t[k] for t in tensors)) for k in range(self.num_layers))

    @staticmethod
    def _unbatch(layer_state: tuple) -> tuple:
        return type(layer_state)(*(t.squeeze(0) for t in layer_state))

    @staticmethod
    def _batch(layer_state: tuple) -> tuple:
        return type(layer_state)(*(t.unsqueeze(0) for t in layer_state))

    # ------------------------------------------------------------------ forward
    def _check_input(self, input: torch.Tensor) -> None:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(
                f"input must be 3-D (T, B, {self.input_size}) "
                f"({'batch_first' if self.batch_first else 'time-first'}) or 2-D unbatched "
                f"(T, {self.input_size}), got shape {tuple(input.shape)}"
            )
        if input.size(-1) != self.input_size:
            raise ValueError(
                f"input has {input.size(-1)} features in its last dimension, expected "
                f"input_size={self.input_size}"
            )
        time_dim = 1 if self.batch_first and input.dim() == 3 else 0
        if input.size(time_dim) == 0:
            raise ValueError(f"input has no time steps (shape {tuple(input.shape)}); "
                             "a sequence needs at least one step")
        w = self.weight_ih_l0
        if input.dtype != w.dtype:
            raise ValueError(f"input dtype {input.dtype} does not match parameter dtype {w.dtype}")
        if input.device != w.device:
            raise ValueError(f"input is on {input.device} but parameters are on {w.device}")
        if self.check_finite:
            check_finite(input, "input")

    def forward(self, input: torch.Tensor, state: Any = None, return_sequences: bool = False):
        """Run the stack over a sequence.

        Args:
            input: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), unbatched ``(T, I)``,
                or a ``PackedSequence`` (then output and sequences are packed, and each
                sequence's state stops at its last step: :mod:`dualsparse.models.packed`).
            state: initial state (see module docstring); zeros if ``None``.
            return_sequences: also return per-layer :class:`LayerSequences`.

        Returns:
            ``(output, state)`` or ``(output, state, sequences)``: ``output`` is the last
            layer's output sequence ``(T, B, H_last)`` (same layout as ``input``); ``state`` is
            the per-layer tuple of final states; ``sequences`` a tuple of
            :class:`LayerSequences`, one per layer, time-first (batch-first with
            ``batch_first``).
        """
        if self.check_finite:  # once per forward, skipped while compiling or tracing
            check_parameters_finite(self, type(self).__name__)
        if isinstance(input, PackedSequence):
            return forward_packed(self, input, state, return_sequences)
        self._check_input(input)
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first
                                                  else input)
        batch = None if unbatched else x.size(1)
        state_in = self._normalise_state(state, batch, x)
        if unbatched:
            state_in = tuple(self._batch(s) for s in state_in)
        new_state = []
        sequences = []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
            w_hh = dropconnect(w_hh, self.dropconnect, self.training)
            fused = self._fused_layer(k, x, (w_ih, w_hh, b_ih, b_hh), state_in[k])
            if fused is None:
                out, st, seq = self._run_layer(k, F.linear(x, w_ih, b_ih), w_hh, b_hh,
                                               state_in[k], return_sequences)
            else:
                out, st = fused
                seq = LayerSequences(out, state_in[k][0]) if return_sequences else None
            new_state.append(st)
            if return_sequences:
                sequences.append(seq)
            x = out
            if self.dropout and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, self.training)
        output = x
        state_out = tuple(new_state)
        if unbatched:
            output = output.squeeze(1)
            state_out = tuple(self._unbatch(s) for s in state_out)
            sequences = [LayerSequences(*(None if t is None else t.squeeze(1) if t.dim() == 3
                                          else t.squeeze(0) for t in s)) for s in sequences]
        elif self.batch_first:
            output = output.transpose(0, 1)
            sequences = [LayerSequences(*(None if t is None else t.transpose(0, 1)
                                          if t.dim() == 3 else t for t in s)) for s in sequences]
        if return_sequences:
            return output, state_out, tuple(sequences)
        return output, state_out

    def _run_layer(self, layer: int, gi: torch.Tensor, w_hh: torch.Tensor,
                   b_hh: torch.Tensor | None, state: tuple, record: bool
                   ) -> tuple[torch.Tensor, tuple, LayerSequences | None]:
        """Time loop of one layer. ``gi``: ``(T, B, G*H)`` input projections."""
        outputs = []
        extras: list[tuple] = []
        initial = state[0]
        for gi_t in gi.unbind(0):  # unbind: backward does not rebuild gi at every step
            out, state, extra = self._step(layer, gi_t, state, w_hh, b_hh)
            outputs.append(out)
            if record and extra is not None:
                extras.append(extra)
        output = torch.stack(outputs)
        if not record:
            return output, state, None
        if extras:
            events, internal = (torch.stack(v) for v in zip(*extras, strict=True))
            return output, state, LayerSequences(output, initial, events, internal)
        return output, state, LayerSequences(output, initial)

    def _fused_layer(self, layer: int, x: torch.Tensor, weights: tuple, state: tuple
                     ) -> tuple[torch.Tensor, tuple] | None:
        """One layer over the whole sequence ``x`` ``(T, B, I_k)`` in one call, or ``None``
        to use the Python time loop (:meth:`_run_layer`). ``weights``: ``(w_ih, w_hh, b_ih,
        b_hh)`` as the forward sees them."""
        return None

    def _step(self, layer: int, gi: torch.Tensor, state: tuple, w_hh: torch.Tensor,
              b_hh: torch.Tensor | None) -> tuple[torch.Tensor, tuple, tuple | None]:
        """One time step of one layer: ``gi`` ``(B, G*H)`` -> ``(output, new_state, extra)``."""
        raise NotImplementedError

    def _zoneout(self, previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return zoneout(previous, new, self.zoneout, self.training)

    def step(self, input: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, tuple]:
        """One time step through all layers (streaming). ``input``: ``(B, I)`` or ``(I,)``."""
        if self.batch_first:
            out, st = self.forward(input.unsqueeze(1) if input.dim() == 2 else input.unsqueeze(0),
                                   state)
            return (out.squeeze(1) if input.dim() == 2 else out.squeeze(0)), st
        out, st = self.forward(input.unsqueeze(0), state)
        return out.squeeze(0), st
