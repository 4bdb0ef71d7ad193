"""NeuroBench-compatible metrics from an accounting report (NeuroBench 2.x names).

NeuroBench (``neurobench.metrics``) cannot count multi-layer ``torch.nn.GRU``/``LSTM`` modules
(neurobench issue 147) nor this library's layers; :func:`neurobench_metrics` gives its metric
set from what :class:`~dualsparse.accounting.ActivityMeter` measured, with these conventions:

* ``ActivationSparsity``: zero entries / all entries of every recurrent layer's output over
  all steps and sequences (NeuroBench: over the outputs of activation modules). The decoder's
  output (logits) is not an activation and is not counted.
* ``SynapticOperations`` per **sample** (sequence), as NeuroBench divides by the batch size:

  - ``Dense``: every weight times every input, ``G*H*(I+H)`` per layer and step, plus the
    decoder's ``V*E``, plus the elementwise gate multiplies below; biases are not counted.
  - ``Effective_MACs``: the accounting's effective MACs (a nonzero input ``x_j`` costs the
    nonzero weights of column ``j``; NeuroBench's binary-copy count gives the same number)
    plus the elementwise multiplies; ``Effective_ACs``: the same for the layers named in
    ``ac_layers`` (inputs that are binary spikes; NeuroBench decides this per layer from
    the values), else 0.
  - elementwise gate multiplies (``elementwise=True``): GRU and EGRU 3 per unit and step
    (``r*(W_hn h + b_hn)``, ``(1-z)*n``, ``z*h_{t-1}``; EGRU's state ``c`` is dense),
    LSTM 3 (``f*c_{t-1}``, ``i*g``, ``o*tanh(c)``), RNN 0, counted dense in both figures.
    NeuroBench (``gru_cell_macs``/``lstm_cell_macs``) skips ``z*h_{t-1}`` and ``f*c_{t-1}``
    where the state is 0, so with a zero initial state its effective count is lower by
    ``H`` per layer and sequence (the first step); elsewhere the counts agree.
* ``ConnectionSparsity``: zeros / entries of the weights of ``nn.Linear``/``nn.Conv*`` and
  of the weights and biases of recurrent layers (torch's and this library's), as NeuroBench
  (it rounds to 4 decimals; this does not).
* ``Footprint``: bytes of all parameters and buffers (pruning masks included), as NeuroBench.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from torch import nn

from dualsparse.models.recurrent import RecurrentBase
from dualsparse.validation import check_int

#: elementwise multiplies per unit and step, by number of stacked gates (RNN, GRU/EGRU, LSTM)
ELEMENTWISE_PER_UNIT = {1: 0, 3: 3, 4: 3}

_CONNECTIONS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _recurrent_tensors(module: nn.Module) -> list:
    if isinstance(module, RecurrentBase):
        return [t for k in range(module.num_layers) for t in module.layer_weights(k)
                if t is not None]
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return [p for name, p in module.named_parameters(recurse=False)
                if name.startswith(("weight_", "bias_"))]
    return []


def connection_sparsity(model: nn.Module) -> float:
    """Fraction of zero connections (NeuroBench ``ConnectionSparsity``; see module doc)."""
    zeros = total = 0

    def visit(module: nn.Module) -> None:
        nonlocal zeros, total
        if isinstance(module, _CONNECTIONS):
            tensors = [module.weight]
        else:
            tensors = _recurrent_tensors(module)
            if not tensors:
                for child in module.children():
                    visit(child)
                return
        for t in tensors:
            zeros += int((t == 0).sum())
            total += t.numel()

    visit(model)
    if total == 0:
        raise ValueError("model has no connection layers (Linear, Conv, recurrent)")
    return zeros / total


def footprint(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (NeuroBench ``Footprint``)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def neurobench_metrics(report: Any, samples: int, model: nn.Module | None = None,
                       ac_layers: Collection[int] = (), elementwise: bool = True
                       ) -> dict[str, Any]:
    """NeuroBench's metric set from an :class:`~dualsparse.accounting.AccountingReport`.

    Args:
        report: what ``ActivityMeter.report()`` / ``measure()`` returned.
        samples: sequences measured (NeuroBench's per-sample divisor: the batch sizes summed).
        model: the measured model, for ``ConnectionSparsity`` and ``Footprint`` (omitted
            when None).
        ac_layers: indices of layers whose inputs are binary spikes (their operations are
            ``Effective_ACs``).
        elementwise: count the elementwise gate multiplies (see module doc).

    Returns:
        ``{"ActivationSparsity": float, "SynapticOperations": {"Effective_MACs",
        "Effective_ACs", "Dense"}}`` plus ``"ConnectionSparsity"`` and ``"Footprint"``
        when ``model`` is given.
    """
    samples = check_int("samples", samples, low=1)
    known = {r.layer for r in report.layers}
    unknown = sorted(set(ac_layers) - known)
    if unknown:
        raise ValueError(f"ac_layers {unknown} are not layers of the report ({sorted(known)})")
    macs = acs = dense = 0.0
    zeros = entries = 0.0
    for r in report.layers:
        extra = ELEMENTWISE_PER_UNIT.get(r.num_gates, 0) * r.hidden_size if elementwise else 0
        effective = (r.effective_macs + extra) * r.tokens
        if r.layer in ac_layers:
            acs += effective
        else:
            macs += effective
        dense += (r.dense_macs + extra) * r.tokens
        zeros += r.activity_sparsity * r.tokens * r.hidden_size
        entries += r.tokens * r.hidden_size
    if report.decoder is not None:
        macs += report.decoder.effective_macs * report.decoder.tokens
        dense += report.decoder.dense_macs * report.decoder.tokens
    out: dict[str, Any] = {
        "ActivationSparsity": zeros / entries,
        "SynapticOperations": {"Effective_MACs": macs / samples, "Effective_ACs": acs / samples,
                               "Dense": dense / samples},
    }
    if model is not None:
        out["ConnectionSparsity"] = connection_sparsity(model)
        out["Footprint"] = footprint(model)
    return out
