"""The metrics dict every run function returns, built from an accounting report.

Keys (MACs are per token and count the recurrent layers only unless named ``total_*``):

* ``test_ppl``, ``val_ppl`` (None if not measured);
* ``activity_sparsity`` (all units of all layers), ``activity_sparsity_layers``,
  ``backward_sparsity_layers`` (EGRU; None for other cells);
* ``weight_sparsity`` (fraction of zero weights in all ``W_ih``/``W_hh``),
  ``weight_sparsity_layers``;
* ``dense_macs``, ``effective_macs``, ``mac_reduction`` (= dense / effective),
  ``ideal_reduction`` (= 1 / (activity density x weight density)), and ``total_dense_macs``,
  ``total_effective_macs``, ``total_reduction`` including the decoder when it was measured;
* ``layers``: per layer ``hidden_size``, ``activity_histogram`` and ``distance_histogram``
  (``{"counts", "edges"}``, the latter for ``c~ - theta``; None for non-event cells) and
  ``per_neuron_activity``;
* ``checkpoint``: path of the saved model (or None), plus any extra keys the run adds.
"""

from __future__ import annotations

from typing import Any

from dualsparse.serialisation import jsonable
from dualsparse.validation import check_real


def _layer_weight_counts(layer: dict[str, Any]) -> tuple[float, float]:
    rows = layer["num_gates"] * layer["hidden_size"]
    n_ih, n_hh = rows * layer["input_size"], rows * layer["hidden_size"]
    nonzero = layer["weight_density_ih"] * n_ih + layer["weight_density_hh"] * n_hh
    return nonzero, float(n_ih + n_hh)


def summarize(accounting: dict[str, Any], test_ppl: float, val_ppl: float | None = None,
              checkpoint: str | None = None, **extra: Any) -> dict[str, Any]:
    """The standard metrics dict (see module docstring) from ``AccountingReport.to_dict()``.

    Raises:
        ValueError: if the test perplexity is not a finite positive number (a diverged run
            is a failed run) or the accounting dict has no layers.
    """
    test_ppl = check_real("test_ppl (test perplexity)", test_ppl, low=0.0, low_open=True)
    layers = accounting.get("layers") or []
    if not layers:
        raise ValueError("the accounting report has no layers")
    counts = [_layer_weight_counts(layer) for layer in layers]
    nonzero, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    weight_sparsity = 1.0 - nonzero / total
    activity_sparsity = float(accounting["mean_activity_sparsity"])
    act_density, w_density = 1.0 - activity_sparsity, 1.0 - weight_sparsity
    dense, effective = float(accounting["rnn_dense_macs"]), float(accounting["rnn_effective_macs"])
    decoder = accounting.get("decoder")
    total_dense = dense + (decoder["dense_macs"] if decoder else 0.0)
    total_effective = effective + (decoder["effective_macs"] if decoder else 0.0)
    out = {
        "test_ppl": float(test_ppl),
        "val_ppl": None if val_ppl is None else float(val_ppl),
        "activity_sparsity": activity_sparsity,
        "activity_sparsity_layers": [float(layer["activity_sparsity"]) for layer in layers],
        "backward_sparsity_layers": [layer.get("backward_sparsity") for layer in layers],
        "weight_sparsity": weight_sparsity,
        "weight_sparsity_layers": [1.0 - n / t for n, t in counts],
        "dense_macs": dense,
        "effective_macs": effective,
        "mac_reduction": dense / effective if effective > 0 else None,
        "ideal_reduction": (1.0 / (act_density * w_density)
                            if act_density > 0 and w_density > 0 else None),
        "total_dense_macs": total_dense,
        "total_effective_macs": total_effective,
        "total_reduction": total_dense / total_effective if total_effective > 0 else None,
        "layers": [{"layer": layer["layer"], "hidden_size": layer["hidden_size"],
                    "activity_histogram": layer.get("activity_histogram"),
                    "distance_histogram": layer.get("distance_histogram"),
                    "carried_distance_histogram": layer.get("carried_distance_histogram"),
                    "per_neuron_activity": layer.get("per_neuron_activity")}
                   for layer in layers],
        "checkpoint": checkpoint,
    }
    clash = set(extra) & set(out)
    if clash:
        raise ValueError(f"extra metrics {sorted(clash)} would overwrite standard keys")
    out.update(extra)
    return jsonable(out)


__all__ = ["summarize"]
