"""The papers' figures from run records (matplotlib, Agg canvas, PNG and PDF written atomically).

Every function takes finished run records (:mod:`dualsparse.analysis.records`), writes
``<path>.png`` / ``.pdf`` and returns the plotted data (seed means and stds), or None, writing
nothing, when the records lack what its figure needs (e.g. no varying weight decay).

* :func:`ppl_vs_reduction`: test perplexity vs effective MAC reduction, one curve per model
  (and per other varying setting), points = weight-sparsity targets (papers' fig. 1A/B, 2).
* :func:`tradeoff_map`: activity sparsity vs weight sparsity; marker area = effective MACs,
  colour = test perplexity; one panel per model (fig. 1C/D).
* :func:`weight_decay_effect`: perplexity and activity sparsity vs weight decay (fig. 2 / 4).
* :func:`activity_histograms` / :func:`distance_histograms`: per-layer histograms of
  per-neuron activity (fig. 4) and of ``c~ - theta`` (fig. 5), seeds pooled.
* :func:`ppl_vs_prune_steps`: test perplexity vs pruning steps per model and target (fig. 3).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dualsparse.analysis.records import (
    Keys,
    Run,
    aggregate,
    as_runs,
    group,
    label,
    sort_key,
    varying_keys,
)
from dualsparse.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "pdf")
DEFAULT_KEYS = Keys()


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A constrained-layout figure of ``figsize`` inches, not tied to any GUI backend."""
    from matplotlib.figure import Figure  # matplotlib is heavy: loaded when a figure is drawn

    return Figure(layout="constrained", figsize=figsize)


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``fig`` to ``path.png`` and ``path.pdf`` atomically; returns the two paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy, see new_figure

    FigureCanvasAgg(fig)
    out = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        meta = {"CreationDate": None} if fmt == "pdf" else {}  # same figure, same bytes
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
        data = buf.getvalue()
        out.append(atomic_write(Path(f"{path}.{fmt}"), lambda f, d=data: f.write(d)))
    return out


def _series_keys(runs: Sequence[Run], keys: Keys, exclude: Sequence[str]) -> list[str]:
    """Model key first, then every other varying key except ``exclude`` and the seed."""
    rest = varying_keys(runs, ignore=[keys.seed, keys.model, *exclude])
    return [keys.model, *rest]


def _relabel(skeys: Sequence[str], series: dict[tuple, Any]) -> dict[str, Any]:
    """Series keyed by label; keys with one value among the series (other than the first,
    the model) are left out of the labels."""
    keep = [i for i in range(len(skeys))
            if i == 0 or len({k[i] for k in series}) > 1]
    return {label([skeys[i] for i in keep], [k[i] for i in keep]): v for k, v in series.items()}


#: x-axis labels of :func:`ppl_vs_reduction` per reduction metric.
REDUCTION_LABELS = {
    "mac_reduction": "measured MAC reduction of the RNN layers (dense / effective MACs per "
                     "token; layer 0's dense input included)",
    "ideal_reduction": "lambda_a x lambda_w = 1 / (activity density x weight density) "
                       "(the papers' axis)",
    "total_reduction": "measured MAC reduction, RNN layers and decoder",
}


def ppl_vs_reduction(records: Sequence[Any], path: str | Path, keys: Keys = DEFAULT_KEYS,
                     metric: str = "test_ppl", reduction: str = "mac_reduction",
                     title: str | None = None, min_points: int = 2
                     ) -> dict[str, dict[str, list]] | None:
    """Test perplexity vs MAC reduction, mean +- std over seeds; returns the curves.

    ``reduction`` picks the x-axis (:data:`REDUCTION_LABELS`): the measured effective-MAC
    reduction (default) or the papers' ``lambda_a * lambda_w`` (``"ideal_reduction"``).

    Series with fewer than ``min_points`` sparsity levels (settings from other parts of a
    sweep) are left out.

    Returns:
        ``{series label: {"sparsity", "x", "xerr", "y", "yerr", "n"}}`` (lists in target
        sparsity order), or None if no series is left.
    """
    runs = [r for r in as_runs(records) if r.get(metric) is not None
            and r.get(reduction) is not None]
    if not runs:
        return None
    skeys = _series_keys(runs, keys, [keys.sparsity])
    curves: dict[str, dict[str, list]] = {}
    for skey, members in sorted(group(runs, skeys).items(),
                                key=lambda kv: tuple(sort_key(v) for v in kv[0])):
        pts = aggregate(members, [keys.sparsity], [metric, reduction])
        if len(pts) < min_points:
            continue
        curves[skey] = {
            "sparsity": [p.key[0] for p in pts],
            "x": [p.values[reduction][0] for p in pts],
            "xerr": [p.values[reduction][1] for p in pts],
            "y": [p.values[metric][0] for p in pts],
            "yerr": [p.values[metric][1] for p in pts],
            "n": [p.n for p in pts],
        }
    if not curves:
        return None
    curves = _relabel(skeys, curves)
    fig = new_figure((6.0, 4.2))
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.errorbar(c["x"], c["y"], xerr=c["xerr"], yerr=c["yerr"], marker="o", capsize=3,
                    label=name)
        for x, y, s in zip(c["x"], c["y"], c["sparsity"], strict=True):
            if s is not None:
                ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(REDUCTION_LABELS.get(reduction, reduction))
    ax.set_ylabel("test perplexity")
    ax.set_title(title or "Perplexity vs MAC reduction (labels: weight-sparsity target)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return curves


def tradeoff_map(records: Sequence[Any], path: str | Path, keys: Keys = DEFAULT_KEYS,
                 metric: str = "test_ppl") -> dict[str, dict[str, list]] | None:
    """Activity sparsity vs weight sparsity; area ~ effective MACs, colour = perplexity.

    Returns:
        ``{model: {"weight_sparsity", "activity_sparsity", "effective_macs", "ppl"}}``
        (means over seeds, one entry per setting), or None without runs.
    """
    names = ["weight_sparsity", "activity_sparsity", "effective_macs", metric]
    runs = [r for r in as_runs(records) if all(r.get(m) is not None for m in names)]
    if not runs:
        return None
    by = varying_keys(runs, ignore=[keys.seed, keys.model])
    panels: dict[str, dict[str, list]] = {}
    for (model,), members in sorted(group(runs, [keys.model]).items(),
                                    key=lambda kv: sort_key(kv[0][0])):
        pts = aggregate(members, by, names)
        panels[str(model)] = {
            "weight_sparsity": [p.values["weight_sparsity"][0] for p in pts],
            "activity_sparsity": [p.values["activity_sparsity"][0] for p in pts],
            "effective_macs": [p.values["effective_macs"][0] for p in pts],
            "ppl": [p.values[metric][0] for p in pts],
        }
    all_ppl = [v for p in panels.values() for v in p["ppl"]]
    all_macs = [v for p in panels.values() for v in p["effective_macs"]]
    from matplotlib.colors import Normalize  # heavy, see new_figure

    norm = Normalize(vmin=min(all_ppl), vmax=max(all_ppl) if max(all_ppl) > min(all_ppl)
                     else min(all_ppl) + 1)
    max_macs = max(all_macs) or 1.0
    fig = new_figure((4.2 * len(panels) + 1.0, 4.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    sc = None
    for ax, (model, p) in zip(axes, panels.items(), strict=True):
        sizes = [20 + 400 * m / max_macs for m in p["effective_macs"]]
        sc = ax.scatter(p["weight_sparsity"], p["activity_sparsity"], s=sizes, c=p["ppl"],
                        cmap="viridis", norm=norm, edgecolors="black", linewidths=0.5)
        ax.set_title(f"{model}")
        ax.set_xlabel("weight sparsity (measured)")
        ax.set_ylabel("activity sparsity (measured)")
        ax.set_xlim(-0.05, 1.0)
        ax.set_ylim(-0.05, 1.0)
        ax.grid(True, alpha=0.3)
    fig.colorbar(sc, ax=list(axes), label=f"{metric.replace('_', ' ')}")
    fig.suptitle("Activity vs weight sparsity (marker area ~ effective MACs per token)",
                 fontsize=10)
    save_figure(fig, path)
    return panels


_PPL_LABELS = {"test_ppl": "test perplexity", "val_ppl": "validation perplexity"}
def _xscale(ax: Any, xs: Sequence[float]) -> None:
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) >= 100:
        ax.set_xscale("symlog", linthresh=min(positive)) if min(xs) <= 0 else ax.set_xscale("log")


def weight_decay_effect(records: Sequence[Any], path: str | Path, keys: Keys = DEFAULT_KEYS,
                        metric: str = "test_ppl", min_points: int = 2
                        ) -> dict[str, dict[str, dict]] | None:
    """Perplexity and activity sparsity vs weight decay on weights and on biases.

    Series with fewer than ``min_points`` weight-decay values are left out.

    Returns:
        ``{x key: {series label: {"x", metric, metric_std, "activity_sparsity",
        "activity_sparsity_std"}}}`` for each of the two weight-decay keys that varies, or
        None if neither varies.
    """
    runs = [r for r in as_runs(records) if r.get(metric) is not None]
    xkeys = [k for k in (keys.wdecay, keys.wdecay_bias) if k in varying_keys(runs)]
    if not xkeys:
        return None
    out: dict[str, dict[str, dict]] = {}
    for xk in xkeys:
        skeys = _series_keys(runs, keys, [xk])
        out[xk] = {}
        for skey, members in sorted(group(runs, skeys).items(),
                                    key=lambda kv: tuple(sort_key(v) for v in kv[0])):
            pts = aggregate(members, [xk], [metric, "activity_sparsity"])
            if len(pts) < min_points:
                continue
            out[xk][skey] = {
                "x": [0.0 if p.key[0] is None else float(p.key[0]) for p in pts],
                metric: [p.values[metric][0] for p in pts],
                f"{metric}_std": [p.values[metric][1] for p in pts],
                "activity_sparsity": [p.values["activity_sparsity"][0] for p in pts],
                "activity_sparsity_std": [p.values["activity_sparsity"][1] for p in pts],
            }
    xkeys = [xk for xk in xkeys if out[xk]]
    out = {xk: _relabel(_series_keys(runs, keys, [xk]), out[xk]) for xk in xkeys}
    if not xkeys:
        return None
    fig = new_figure((5.0 * len(xkeys), 7.0))
    axes = fig.subplots(2, len(xkeys), squeeze=False)
    for col, xk in enumerate(xkeys):
        for row, (m, ylabel) in enumerate(((metric, _PPL_LABELS.get(metric, metric)),
                                           ("activity_sparsity", "activity sparsity"))):
            ax = axes[row][col]
            xs_all = []
            for name, s in out[xk].items():
                ax.errorbar(s["x"], s[m], yerr=s[f"{m}_std"], marker="o", capsize=3,
                            label=name)
                xs_all += s["x"]
            _xscale(ax, xs_all)
            ax.set_xlabel(f"{xk} ({'weights' if xk == keys.wdecay else 'biases'})")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if row == 0:
                ax.legend(fontsize=7)
    fig.suptitle("Effect of weight decay on weights and on biases", fontsize=10)
    save_figure(fig, path)
    return out


def pool_histograms(members: Sequence[Run], hists_of: Callable[[Run], list],
                    what: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per layer ``(summed counts, edges)`` of ``hists_of(run)`` (``{"counts", "edges"}`` per
    layer) over ``members``; None if a run lacks one. ``ValueError`` if the runs differ."""
    per_layer: list[tuple[np.ndarray, np.ndarray]] | None = None
    for r in members:
        if not (hists := hists_of(r)) or any(h is None for h in hists):
            return None
        arrs = [(np.asarray(h["counts"], dtype=float), np.asarray(h["edges"], dtype=float))
                for h in hists]
        if per_layer is not None:
            if len(arrs) != len(per_layer):
                raise ValueError(f"runs {members[0].run_id} and {r.run_id} have different layer "
                                 f"counts; their {what} histograms cannot be pooled")
            if any(not np.array_equal(a[1], b[1]) for a, b in zip(arrs, per_layer, strict=True)):
                raise ValueError(f"runs {members[0].run_id} and {r.run_id} have different "
                                 f"{what} bins; they cannot be pooled")
            arrs = [(a[0] + b[0], a[1]) for a, b in zip(per_layer, arrs, strict=True)]
        per_layer = arrs
    return per_layer


def _histograms(records: Sequence[Any], path: str | Path, field: str, by: Sequence[str],
                xlabel: str, title: str) -> dict[str, list[dict[str, list]]] | None:
    runs = as_runs(records)
    series: dict[str, list[dict[str, list]]] = {}
    for key, members in sorted(group(runs, by).items(),
                               key=lambda kv: tuple(sort_key(v) for v in kv[0])):
        pooled = pool_histograms(
            members, lambda r: [h.get(field) for h in r.metrics.get("layers") or []], field)
        if pooled is None:
            continue
        series[label(by, key)] = [
            {"fraction": (c / c.sum() if c.sum() else c).tolist(), "edges": e.tolist()}
            for c, e in pooled]
    if not series:
        return None
    n_layers = max(len(v) for v in series.values())
    fig = new_figure((4.0 * n_layers, 3.4))
    axes = fig.subplots(1, n_layers, squeeze=False)[0]
    for k, ax in enumerate(axes):
        for name, layers in series.items():
            if k < len(layers):
                h = layers[k]
                ax.stairs(h["fraction"], h["edges"], label=name)
        ax.set_title(f"layer {k}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return series


def activity_histograms(records: Sequence[Any], path: str | Path, keys: Keys = DEFAULT_KEYS,
                        by: Sequence[str] | None = None
                        ) -> dict[str, list[dict[str, list]]] | None:
    """Per-layer histograms of per-neuron activity (fraction of steps with an event),
    counts pooled over the runs of each group (default groups: model x sparsity target).

    Returns ``{group label: [{"fraction", "edges"} per layer]}`` (fractions of neurons).
    """
    return _histograms(records, path, "activity_histogram",
                       list(by) if by is not None else [keys.model, keys.sparsity],
                       "per-neuron activity (fraction of steps nonzero)",
                       "Per-neuron activity per layer (test set, seeds pooled)")


def distance_histograms(records: Sequence[Any], path: str | Path, keys: Keys = DEFAULT_KEYS,
                        by: Sequence[str] | None = None, state: str = "pre_reset"
                        ) -> dict[str, list[dict[str, list]]] | None:
    """Per-layer histograms of the internal state minus the threshold (EGRU; runs without
    it are skipped): ``state="pre_reset"`` the ``c~_t - theta`` the event is decided on,
    ``"carried"`` the post-reset ``c_t - theta`` carried to the next step (after
    ``subtract_threshold``'s ``- o_t * theta``).

    Returns ``{group label: [{"fraction", "edges"} per layer]}`` (fractions of entries;
    values beyond the histogram range are in the edge bins).
    """
    fields = {"pre_reset": ("distance_histogram",
                            "c~ - theta (pre-reset state)",
                            "Pre-reset distance to threshold per layer"),
              "carried": ("carried_distance_histogram",
                          "c - theta (carried, post-reset state)",
                          "Carried (post-reset) distance to threshold per layer")}
    if state not in fields:
        raise ValueError(f"state must be one of {sorted(fields)}, got {state!r}")
    field, xlabel, title = fields[state]
    return _histograms(records, path, field,
                       list(by) if by is not None else [keys.model, keys.sparsity],
                       xlabel, f"{title} (test set, seeds pooled)")


def ppl_vs_prune_steps(records: Sequence[Any], path: str | Path, keys: Keys = DEFAULT_KEYS,
                       metric: str = "test_ppl", min_points: int = 2
                       ) -> dict[str, dict[str, list]] | None:
    """Test perplexity vs number of pruning steps at fixed targets (None if steps are fixed).

    Dense runs (target 0 or no method) and series with fewer than ``min_points`` step counts
    are left out. Returns
    ``{series label: {"steps", "y", "yerr", "n"}}``.
    """
    runs = [r for r in as_runs(records) if r.get(metric) is not None
            and r.config.get(keys.sparsity) and r.config.get(keys.method) not in ("none",)]
    if keys.steps not in varying_keys(runs):
        return None
    skeys = [keys.model, keys.sparsity, *varying_keys(
        runs, ignore=[keys.seed, keys.model, keys.sparsity, keys.steps])]
    curves: dict[str, dict[str, list]] = {}
    for skey, members in sorted(group(runs, skeys).items(),
                                key=lambda kv: tuple(sort_key(v) for v in kv[0])):
        pts = aggregate(members, [keys.steps], [metric])
        if len(pts) < min_points:
            continue
        curves[skey] = {"steps": [p.key[0] for p in pts],
                                      "y": [p.values[metric][0] for p in pts],
                                      "yerr": [p.values[metric][1] for p in pts],
                                      "n": [p.n for p in pts]}
    if not curves:
        return None
    curves = _relabel(skeys, curves)
    fig = new_figure((6.0, 4.2))
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.errorbar(c["steps"], c["y"], yerr=c["yerr"], marker="o", capsize=3, label=name)
    ax.set_xlabel("number of pruning steps")
    ax.set_ylabel("test perplexity")
    ax.set_title("Perplexity vs pruning steps at fixed target sparsity")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return curves


__all__ = ["FORMATS", "activity_histograms", "distance_histograms", "new_figure", "pool_histograms",
           "ppl_vs_prune_steps", "ppl_vs_reduction", "save_figure", "tradeoff_map",
           "weight_decay_effect"]
