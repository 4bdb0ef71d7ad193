"""One time step as a module with flat tensor inputs and outputs, for export.

An exported sequence model has a fixed ``T`` (the time loop is unrolled into the graph).
:class:`StepModule` exports one step instead: ``forward(x_t, *state) -> (y_t, *state)`` with
every state tensor (layer by layer, field by field: ``y_l0, c_l0, y_l1, ...`` for an EGRU) as
a separate input and output, so the caller runs the loop for any ``T`` and carries the state::

    step = StepModule(rnn.eval())
    torch.onnx.export(step, step.example_inputs(batch=1), dynamo=True,
                      input_names=step.input_names(), output_names=step.output_names())
"""

from __future__ import annotations

import torch
from torch import nn

from dualsparse.models.recurrent import RecurrentBase


class StepModule(nn.Module):
    """``forward(x_t (B, I), *state (B, H_k) each) -> (y_t (B, H_last), *new_state)``."""

    def __init__(self, rnn: RecurrentBase) -> None:
        super().__init__()
        if not isinstance(rnn, RecurrentBase):
            raise ValueError(f"rnn must be an EGRU, GRU or LSTM, got {type(rnn).__name__}")
        self.rnn = rnn
        self.fields = rnn.state_type._fields
        self.train(rnn.training)

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.fields)
        if len(state) != n * self.rnn.num_layers:
            raise ValueError(f"state: expected {n * self.rnn.num_layers} tensors "
                             f"({self.state_names()}), got {len(state)}")
        per_layer = tuple(self.rnn.state_type(*state[k * n:(k + 1) * n])
                          for k in range(self.rnn.num_layers))
        y, new_state = self.rnn.step(x, per_layer)
        return (y, *(t for s in new_state for t in s))

    def state_names(self) -> list[str]:
        return [f"{f}_l{k}" for k in range(self.rnn.num_layers) for f in self.fields]

    def input_names(self) -> list[str]:
        return ["input", *self.state_names()]

    def output_names(self) -> list[str]:
        return ["output", *(f"new_{n}" for n in self.state_names())]

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """A zero input and zero state for ``batch`` sequences."""
        w = self.rnn.weight_ih_l0
        x = w.new_zeros(batch, self.rnn.input_size)
        return (x, *(t for s in self.rnn.init_state(batch) for t in s))


__all__ = ["StepModule"]
