"""Per-layer sequences of ``torch.nn.RNN`` / ``GRU`` / ``LSTM``.

The torch modules return only the last layer's output; the accounting needs every layer's
input and output. :class:`TorchRNNLayers` runs the module one layer at a time with the
module's own parameters (``torch.func.functional_call`` on a one-layer twin, so the same
kernels run) and returns what this library's layers return with ``return_sequences=True``.

:func:`attach` measures a torch RNN wherever it sits in a model: a forward hook recomputes
the layers of every call and hands them to a meter (``meter.update(inputs, sequences)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence

from dualsparse.models.states import LayerSequences

TORCH_RNNS = (nn.RNN, nn.GRU, nn.LSTM)


def as_layers(rnn: Any) -> Any:
    """A :class:`TorchRNNLayers` view of a torch RNN; any other module unchanged."""
    return TorchRNNLayers(rnn) if isinstance(rnn, TORCH_RNNS) else rnn


class TorchRNNLayers:
    """A ``torch.nn.RNN``/``GRU``/``LSTM`` seen layer by layer (unidirectional, no proj_size).

    Attributes mirror :class:`~dualsparse.models.recurrent.RecurrentBase` where the
    accounting reads them: ``num_layers``, ``batch_first``, ``hidden_sizes``,
    ``layer_weights(k)``; calling it returns ``(output, h_n, sequences)``.
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, TORCH_RNNS):
            raise ValueError(f"module must be a torch.nn.RNN, GRU or LSTM, got "
                             f"{type(module).__name__}")
        if module.bidirectional:
            raise ValueError("module: bidirectional torch RNNs are not supported (the "
                             "accounting counts one direction per layer)")
        if getattr(module, "proj_size", 0):
            raise ValueError("module: LSTMs with proj_size > 0 are not supported")
        self.module = module
        self.num_layers = module.num_layers
        self.batch_first = module.batch_first
        self.hidden_sizes = (module.hidden_size,) * module.num_layers
        self.is_lstm = isinstance(module, nn.LSTM)
        kwargs: dict[str, Any] = {"bias": module.bias}
        if isinstance(module, nn.RNN):
            kwargs["nonlinearity"] = module.nonlinearity
        self._twins = [type(module)(module.input_size if k == 0 else module.hidden_size,
                                    module.hidden_size, num_layers=1, **kwargs)
                       .to(device="meta") for k in range(module.num_layers)]

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor,
                                                 torch.Tensor | None, torch.Tensor | None]:
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of a layer (``nn.GRU`` layout)."""
        m = self.module
        bias = (getattr(m, f"bias_ih_l{layer}"), getattr(m, f"bias_hh_l{layer}")) if m.bias \
            else (None, None)
        return getattr(m, f"weight_ih_l{layer}"), getattr(m, f"weight_hh_l{layer}"), *bias

    def __call__(self, input: torch.Tensor, hx: Any = None, return_sequences: bool = True
                 ) -> tuple[torch.Tensor, Any, tuple[LayerSequences, ...]]:
        """Run the layers on ``input`` (the module's layout, or unbatched ``(T, I)``).

        Returns ``(output, h_n, sequences)`` like the module's ``(output, h_n)`` plus one
        :class:`LayerSequences` per layer in the input's layout. Refused in training mode
        with inter-layer dropout (the recomputed layers would not see the same dropout).
        """
        m = self.module
        if isinstance(input, PackedSequence):
            raise ValueError("input: PackedSequence is not supported by the torch RNN "
                             "accounting; pad it (the padding would be counted) or use "
                             "dualsparse.models.GRU/LSTM")
        if m.training and m.dropout > 0 and m.num_layers > 1:
            raise ValueError("module is in training mode with dropout between layers; "
                             "measure it in eval mode (module.eval())")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first
                                                  else input)
        batch, hidden = x.size(1), m.hidden_size
        h0, c0 = _initial(hx, self.is_lstm, m.num_layers, batch, hidden, x, unbatched)
        seqs, finals = [], []
        for k, twin in enumerate(self._twins):
            names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"]
                                                        if m.bias else [])
            params = {n: getattr(m, n.replace("_l0", f"_l{k}")) for n in names}
            state = (h0[k:k + 1], c0[k:k + 1]) if self.is_lstm else h0[k:k + 1]
            x_next, final = functional_call(twin, params, (x, state))
            seqs.append((x, x_next, h0[k]))
            finals.append(final)
            x = x_next
        if self.is_lstm:
            h_n = (torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals]))
        else:
            h_n = torch.cat(finals)
        out = _layout(x, unbatched, self.batch_first)
        if unbatched:
            h_n = tuple(t.squeeze(1) for t in h_n) if self.is_lstm else h_n.squeeze(1)
        sequences = tuple(LayerSequences(_layout(o, unbatched, self.batch_first),
                                         s0.squeeze(0) if unbatched else s0)
                          for _, o, s0 in seqs)
        return out, h_n, sequences


def _initial(hx: Any, is_lstm: bool, layers: int, batch: int, hidden: int, x: torch.Tensor,
             unbatched: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    zeros = x.new_zeros(layers, batch, hidden)
    if hx is None:
        return zeros, (zeros if is_lstm else None)
    h, c = hx if is_lstm else (hx, None)
    if unbatched:
        h = h.unsqueeze(1)
        c = None if c is None else c.unsqueeze(1)
    return h, c


def _layout(t: torch.Tensor, unbatched: bool, batch_first: bool) -> torch.Tensor:
    if unbatched:
        return t.squeeze(1)
    return t.transpose(0, 1) if batch_first else t


def attach(meter: Any, model: nn.Module) -> Callable[[], None]:
    """Measure every torch RNN inside ``model`` on each forward call.

    ``meter`` is an :class:`~dualsparse.accounting.ActivityMeter` built for one torch RNN
    of ``model`` (``ActivityMeter(model.rnn)``); its layers are recomputed from the call's
    input and initial state (no grad) and passed to ``meter.update``. Returns a function
    that removes the hook.
    """
    target = getattr(meter, "rnn", None)
    module = getattr(target, "module", None)
    if module is None or not any(m is module for m in model.modules()):
        raise ValueError("meter must be an ActivityMeter of a torch RNN that is part of model")

    def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        inputs = args[0] if args else kwargs["input"]
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        with torch.no_grad():
            _, _, seqs = target(inputs, hx)
            meter.update(inputs, seqs)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    return handle.remove
