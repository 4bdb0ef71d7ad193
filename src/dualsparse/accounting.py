"""Activity statistics and multiply-accumulate (MAC) counts, measured, per layer.

Every number here is counted from what the network actually did and from the weights'
actual zeros, never assumed:

* **activity** of a layer: fraction of (step, sequence, unit) entries with output ``!= 0``;
  **activity sparsity** = ``1 - activity``; per-neuron activity and its histogram.
* **backward sparsity** (EGRU): fraction of pre-reset distances ``c~ - theta`` outside the
  surrogate's support (where the local gradient of the event function is exactly 0).
* **dense MACs per token** of a layer: ``G * H * (I + H)`` (GRU/EGRU ``G = 3``, LSTM ``G = 4``);
  of a decoder: ``V * E``.
* **effective MACs per token**: for every token, each *nonzero* input feature ``x_j`` costs
  the number of nonzero weights in column ``j`` of ``W_ih`` and each nonzero recurrent input
  ``y_{t-1,j}`` the nonzero weights in column ``j`` of ``W_hh``. This is what an
  event-driven, weight-sparse implementation must do (the :mod:`dualsparse.engine` does it).
  ``reduction = dense / effective``.

Usage::

    meter = ActivityMeter(rnn, decoder=lm.decoder)
    with torch.no_grad():
        out, state, seqs = rnn(x, state, return_sequences=True)
        meter.update(x, seqs)
        meter.update_decoder(out)
    print(meter.report().format_table())
"""

from __future__ import annotations

import torch
from torch import nn

from dualsparse.accounting_report import (
    AccountingReport,
    DecoderReport,
    LayerReport,
    ratio,
)
from dualsparse.models.egru import RESET_MODES
from dualsparse.models.packed import PackedSequence, split_sequences
from dualsparse.models.recurrent import RecurrentBase
from dualsparse.models.states import LayerSequences
from dualsparse.models.surrogate import Surrogate
from dualsparse.models.torch_rnn import as_layers
from dualsparse.validation import check_int, check_real


def column_nnz(weight: torch.Tensor) -> torch.Tensor:
    """Nonzero weights per input column of a ``(out, in)`` matrix, ``(in,)`` float64."""
    return (weight != 0).sum(0).to(torch.float64)


def density(weight: torch.Tensor) -> float:
    """Fraction of nonzero entries of a tensor."""
    return int((weight != 0).sum()) / weight.numel()


def count_macs(weight: torch.Tensor, inputs: torch.Tensor) -> tuple[int, int]:
    """Dense and effective MACs of ``inputs @ weight.T`` summed over all input vectors.

    Args:
        weight: ``(out, in)``.
        inputs: ``(..., in)``; every leading index is one input vector.

    Returns:
        ``(dense, effective)``: ``n * out * in`` and ``sum_n sum_{j: x_nj != 0} nnz(W[:, j])``.
    """
    if inputs.size(-1) != weight.size(1):
        raise ValueError(f"inputs have {inputs.size(-1)} features, weight has {weight.size(1)} "
                         "columns")
    flat = inputs.reshape(-1, inputs.size(-1))
    active = (flat != 0).sum(0).to(torch.float64)
    effective = int(round(float(active @ column_nnz(weight))))
    return flat.size(0) * weight.numel(), effective


class _LayerAccumulator:
    def __init__(self, input_size: int, hidden_size: int, num_gates: int, bins: int,
                 distance_range: tuple[float, float]) -> None:
        self.input_size, self.hidden_size, self.num_gates = input_size, hidden_size, num_gates
        self.bins, self.distance_range = bins, distance_range
        self.tokens = 0
        self.active_per_neuron = torch.zeros(hidden_size, dtype=torch.float64)
        self.nonzero_inputs = 0.0
        self.effective = 0.0
        self.dense = 0.0
        self.density_ih = self.density_hh = 1.0
        self.outside_support = 0.0
        self.distance_counts: torch.Tensor | None = None
        self.carried_counts: torch.Tensor | None = None
        self.distance_entries = 0


class ActivityMeter:
    """Accumulates activity statistics and MAC counts over many batches.

    Args:
        rnn: the multi-layer recurrent module measured (EGRU/GRU/LSTM or ``torch.nn``'s: see
            :mod:`~dualsparse.models.torch_rnn`), or None (layers given to :meth:`update_layer`).
        decoder: optional output projection (``nn.Linear``) whose MACs are counted separately.
        bins: histogram bins (per-neuron activity over ``[0, 1]``; ``c~ - theta`` over
            ``distance_range``, entries outside it fall into the edge bins).
        distance_range: ``(low, high)`` range of the ``c~ - theta`` histogram.
    """

    def __init__(self, rnn: nn.Module | None = None, decoder: nn.Linear | None = None,
                 bins: int = 50, distance_range: tuple[float, float] = (-2.0, 2.0)) -> None:
        bins = check_int("bins", bins, low=1)
        if not distance_range[0] < distance_range[1]:
            raise ValueError(f"distance_range must be (low, high) with low < high, "
                             f"got {distance_range}")
        self.rnn, self.decoder = as_layers(rnn), decoder
        self.bins, self.distance_range = bins, (float(distance_range[0]),
                                                float(distance_range[1]))
        self._layers: dict[int, _LayerAccumulator] = {}
        self._decoder_stats = {"tokens": 0, "dense": 0.0, "effective": 0.0, "nonzero": 0.0}

    # --------------------------------------------------------------- updates
    def update(self, inputs: torch.Tensor, sequences: tuple[LayerSequences, ...]) -> None:
        """Add one forward pass of ``self.rnn``.

        Args:
            inputs: the input given to the rnn, ``(T, B, I)`` (``(B, T, I)`` if batch_first),
                unbatched ``(T, I)`` or a ``PackedSequence`` (padding is not counted).
            sequences: what ``rnn(inputs, state, return_sequences=True)`` returned third.
        """
        rnn = self.rnn
        if isinstance(inputs, PackedSequence):  # one sequence at a time: padding is no token
            for x, seqs in split_sequences(inputs, sequences, rnn.batch_first):
                self.update(x, seqs)
            return
        if rnn is None:
            raise ValueError("update() needs the meter to be built with an rnn; use "
                             "update_layer() for layers described by hand")
        if len(sequences) != rnn.num_layers:
            raise ValueError(f"got sequences for {len(sequences)} layers, the rnn has "
                             f"{rnn.num_layers}")
        surrogate = getattr(rnn, "surrogate", None)
        # unbatched input (T, I) is time-first whatever batch_first says (as in nn.GRU)
        time_dim = 1 if rnn.batch_first and inputs.dim() == 3 else 0
        with torch.no_grad():
            layer_in = inputs
            for k, seq in enumerate(sequences):
                w_ih, w_hh, _, _ = rnn.layer_weights(k)
                theta = rnn.threshold(k) if seq.events is not None else None
                self.update_layer(k, w_ih, w_hh, layer_in, seq, theta, surrogate,
                                  time_dim=time_dim,
                                  reset_mode=getattr(rnn, "reset_mode", None))
                layer_in = seq.output

    def update_layer(self, layer: int, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
                     inputs: torch.Tensor, seq: LayerSequences,
                     threshold: torch.Tensor | None = None, surrogate: Surrogate | None = None,
                     time_dim: int = 0, reset_mode: str | None = None) -> None:
        """Add one sequence batch of one layer.

        Args:
            weight_ih: ``(G*H, I)``; weight_hh: ``(G*H, H)`` as used in the forward pass.
            inputs: the layer's input ``(T, B, I)``; ``seq`` its :class:`LayerSequences`.
            threshold, surrogate: for backward sparsity and the ``c~ - theta`` histogram
                (EGRU layers; ignored when ``seq.internal`` is None).
            time_dim: 0 for time-first tensors, 1 for batch-first.
            reset_mode: the EGRU's ``reset_mode``; given, the carried (post-reset) state
                ``c_t - theta`` is histogrammed too: ``c_t = c~_t - o_t * theta`` for
                ``"subtract_threshold"``, ``c~_t`` otherwise (``"subtract_output"`` has
                already subtracted ``y_{t-1}`` inside ``c~_t``; ``"none"`` does not reset).
        """
        if reset_mode is not None and reset_mode not in RESET_MODES:
            raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")
        hidden = weight_hh.size(1)
        if weight_ih.size(0) != weight_hh.size(0) or weight_hh.size(0) % hidden:
            raise ValueError(f"inconsistent weights: weight_ih {tuple(weight_ih.shape)}, "
                             f"weight_hh {tuple(weight_hh.shape)}")
        if seq.output.size(-1) != hidden:
            raise ValueError(f"layer {layer} output has {seq.output.size(-1)} units, "
                             f"weight_hh expects {hidden}")
        if inputs.shape[:-1] != seq.output.shape[:-1]:
            raise ValueError(f"layer {layer}: inputs {tuple(inputs.shape)} and outputs "
                             f"{tuple(seq.output.shape)} differ in time/batch dimensions")
        if seq.output.numel() == 0:  # an empty batch or sequence: nothing to count
            return
        acc = self._layers.get(layer)
        if acc is None:
            acc = self._layers[layer] = _LayerAccumulator(
                weight_ih.size(1), hidden, weight_hh.size(0) // hidden, self.bins,
                self.distance_range)
        elif (acc.input_size, acc.hidden_size) != (weight_ih.size(1), hidden):
            raise ValueError(f"layer {layer} changed shape between updates")
        with torch.no_grad():
            out = seq.output.movedim(time_dim, 0)
            prev = torch.cat([seq.initial_output.unsqueeze(0), out[:-1]], 0)
            d_in, e_in = count_macs(weight_ih, inputs)
            d_rec, e_rec = count_macs(weight_hh, prev)
            tokens = out.numel() // hidden
            acc.tokens += tokens
            acc.dense += d_in + d_rec
            acc.effective += e_in + e_rec
            acc.nonzero_inputs += float((inputs != 0).sum())
            # the accumulators stay on the CPU whatever device the model runs on
            acc.active_per_neuron += (out != 0).reshape(-1, hidden).sum(0).to("cpu",
                                                                             torch.float64)
            acc.density_ih = density(weight_ih)
            acc.density_hh = density(weight_hh)
            if seq.internal is not None and threshold is not None:
                # histograms on the CPU: CUDA's histc has no deterministic implementation
                dist = (seq.internal - threshold).reshape(-1).to("cpu", torch.float64)
                if surrogate is not None:
                    acc.outside_support += float((~surrogate.in_support(dist)).sum())
                lo, hi = self.distance_range
                counts = torch.histc(dist.clamp(lo, hi), bins=self.bins, min=lo, max=hi)
                acc.distance_counts = counts if acc.distance_counts is None else (
                    acc.distance_counts + counts)
                acc.distance_entries += dist.numel()
                if reset_mode is not None and seq.events is not None:
                    carried = dist
                    if reset_mode == "subtract_threshold":
                        carried = (seq.internal - seq.events * threshold - threshold
                                   ).reshape(-1).to("cpu", torch.float64)
                    counts = torch.histc(carried.clamp(lo, hi), bins=self.bins, min=lo, max=hi)
                    acc.carried_counts = counts if acc.carried_counts is None else (
                        acc.carried_counts + counts)

    def update_decoder(self, inputs: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add the decoder's MACs for ``inputs`` ``(..., E)`` (weight: ``(V, E)``)."""
        if weight is None:
            if self.decoder is None:
                raise ValueError("no decoder given to the meter and no weight passed")
            weight = self.decoder.weight
        if inputs.numel() == 0:
            return
        with torch.no_grad():
            dense, effective = count_macs(weight, inputs)
        st = self._decoder_stats
        st["tokens"] += inputs.numel() // inputs.size(-1)
        st["dense"] += dense
        st["effective"] += effective
        st["nonzero"] += float((inputs != 0).sum())
        st["shape"] = tuple(weight.shape)
        st["density"] = density(weight)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._layers.clear()
        self._decoder_stats = {"tokens": 0, "dense": 0.0, "effective": 0.0, "nonzero": 0.0}

    # --------------------------------------------------------------- report
    def report(self) -> AccountingReport:
        """Statistics of everything seen since construction or :meth:`reset`."""
        if not self._layers:
            raise ValueError("nothing measured yet: call update() first")
        layers = []
        edges = torch.linspace(0.0, 1.0, self.bins + 1)
        lo, hi = self.distance_range
        dist_edges = torch.linspace(lo, hi, self.bins + 1)
        for k in sorted(self._layers):
            a = self._layers[k]
            per_neuron = a.active_per_neuron / a.tokens
            activity = float(per_neuron.mean())
            hist = torch.histc(per_neuron, bins=self.bins, min=0.0, max=1.0)
            dist_hist = None
            if a.distance_counts is not None:
                dist_hist = {"counts": a.distance_counts.tolist(), "edges": dist_edges.tolist()}
            carried_hist = None
            if a.carried_counts is not None:
                carried_hist = {"counts": a.carried_counts.tolist(),
                                "edges": dist_edges.tolist()}
            dense, effective = a.dense / a.tokens, a.effective / a.tokens
            layers.append(LayerReport(
                layer=k, input_size=a.input_size, hidden_size=a.hidden_size,
                num_gates=a.num_gates, tokens=a.tokens, activity=activity,
                activity_sparsity=1.0 - activity,
                input_density=a.nonzero_inputs / (a.tokens * a.input_size),
                weight_density_ih=a.density_ih, weight_density_hh=a.density_hh,
                dense_macs=dense, effective_macs=effective, reduction=ratio(dense, effective),
                backward_sparsity=(a.outside_support / a.distance_entries
                                   if a.distance_entries else None),
                per_neuron_activity=per_neuron.tolist(),
                activity_histogram={"counts": hist.tolist(), "edges": edges.tolist()},
                distance_histogram=dist_hist,
                carried_distance_histogram=carried_hist,
            ))
        decoder = None
        st = self._decoder_stats
        if st["tokens"]:
            v, e = st["shape"]
            dense, effective = st["dense"] / st["tokens"], st["effective"] / st["tokens"]
            decoder = DecoderReport(input_size=e, output_size=v, tokens=st["tokens"],
                                    input_density=st["nonzero"] / (st["tokens"] * e),
                                    weight_density=st["density"], dense_macs=dense,
                                    effective_macs=effective, reduction=ratio(dense, effective))
        return AccountingReport(layers, decoder)


def measure(rnn: RecurrentBase | nn.RNNBase, inputs: torch.Tensor, state=None,
            decoder: nn.Linear | None = None, **meter_kwargs) -> AccountingReport:
    """One-shot measurement: run ``rnn`` on ``inputs`` (no grad) and return the report.

    The module's train/eval mode is left as it is (measure in eval mode for test figures).
    """
    rnn = as_layers(rnn)
    meter = ActivityMeter(rnn, decoder, **meter_kwargs)
    with torch.no_grad():
        out, _, seqs = rnn(inputs, state, return_sequences=True)
        meter.update(inputs, seqs)
        if decoder is not None:
            meter.update_decoder(out.data if isinstance(out, PackedSequence) else out)
    return meter.report()


def ideal_reduction(activity_density: float, weight_density: float) -> float:
    """The papers' ideal MAC reduction ``1 / (d_a * d_w)`` (densities in ``(0, 1]``)."""
    for name, d in (("activity_density", activity_density), ("weight_density", weight_density)):
        check_real(name, d, low=0.0, high=1.0, low_open=True)
    return 1.0 / (activity_density * weight_density)


__all__ = ["AccountingReport", "ActivityMeter", "DecoderReport", "LayerReport", "column_nnz",
           "count_macs", "density", "ideal_reduction", "measure"]
