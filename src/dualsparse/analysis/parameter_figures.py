"""Weight and bias distributions per layer from run records (the papers' 000 Fig. 2C/D and
001 Fig. 5: how weight decay on weights and on biases shapes them).

Reads the ``parameter_histograms`` metric of ``lm_prune`` runs
(:mod:`dualsparse.experiments.parameter_histograms`), pools the counts over the seeds of
each setting and draws one row per layer, weights left and biases right, as fractions of
the nonzero weights and of the biases.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualsparse.analysis.figures import new_figure, pool_histograms, save_figure
from dualsparse.analysis.records import Keys, Run, as_runs, group, label, sort_key, varying_keys

DEFAULT_KEYS = Keys()
PARTS = ("weights", "biases")


def _pool(members: Sequence[Run]) -> list[dict[str, Any]]:
    """Counts summed over ``members``, per layer and part (None for a part a run lacks)."""
    parts = {part: pool_histograms(
        members, lambda r, part=part: [h[part] for h in r.metrics["parameter_histograms"]], part)
        for part in PARTS}
    n_layers = len(members[0].metrics["parameter_histograms"])
    return [{part: None if parts[part] is None else parts[part][k] for part in PARTS}
            for k in range(n_layers)]


def parameter_distributions(records: Sequence[Any], path: str | Path,
                            keys: Keys = DEFAULT_KEYS, by: Sequence[str] | None = None
                            ) -> dict[str, list[dict[str, Any]]] | None:
    """Weight and bias histograms per layer, one curve per setting (seeds pooled).

    Args:
        by: config keys that make a setting (default: the keys that vary, seed excluded).

    Returns:
        ``{setting label: [{"weights": {"fraction", "edges"}, "biases": ... or None} per
        layer]}``, or None (nothing written) if no run has ``parameter_histograms``.

    Raises:
        ValueError: if runs of one setting have different layer counts or bins.
    """
    runs = [r for r in as_runs(records) if r.metrics.get("parameter_histograms")]
    if not runs:
        return None
    by = list(by) if by is not None else varying_keys(runs, ignore=[keys.seed])
    series: dict[str, list[dict[str, Any]]] = {}
    for key, members in sorted(group(runs, by).items(),
                               key=lambda kv: tuple(sort_key(v) for v in kv[0])):
        series[label(by, key)] = [
            {part: None if layer[part] is None else
             {"fraction": (layer[part][0] / max(layer[part][0].sum(), 1.0)).tolist(),
              "edges": layer[part][1].tolist()} for part in PARTS}
            for layer in _pool(members)]
    n_layers = max(len(v) for v in series.values())
    fig = new_figure((9.0, 3.0 * n_layers + 0.6))
    axes = fig.subplots(n_layers, 2, squeeze=False)
    for k in range(n_layers):
        for col, part in enumerate(PARTS):
            ax = axes[k][col]
            for name, layers in series.items():
                if k < len(layers) and layers[k][part] is not None:
                    ax.stairs(layers[k][part]["fraction"], layers[k][part]["edges"], label=name)
            ax.set_yscale("log")
            ax.set_title(f"layer {k}: {part}" + (" (nonzero)" if part == "weights" else ""))
            ax.set_xlabel("value")
            ax.set_ylabel("fraction")
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("Recurrent weight and bias distributions (seeds pooled; values outside the "
                 "range in the outer bins)", fontsize=9)
    save_figure(fig, path)
    return series


__all__ = ["parameter_distributions"]
