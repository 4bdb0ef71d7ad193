"""Tables from run records: the best setting per sparsity level, and all settings.

Numbers are means +- sample standard deviations over the seeds of one setting (a setting is
one combination of the config values that vary in the sweep, seeds excluded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dualsparse.analysis.records import Keys, aggregate, as_runs, sort_key, varying_keys

DEFAULT_KEYS = Keys()
COLUMNS = ("test_ppl", "val_ppl", "activity_sparsity", "weight_sparsity", "mac_reduction")
_HEADERS = {"test_ppl": "test ppl", "val_ppl": "val ppl", "activity_sparsity": "act. sparsity",
            "weight_sparsity": "weight sparsity", "mac_reduction": "MAC reduction"}


def settings_table(records: Sequence[Any], keys: Keys = DEFAULT_KEYS,
                   metrics: Sequence[str] = COLUMNS) -> list[dict[str, Any]]:
    """One row per setting: its varying config values, ``n`` seeds, ``{metric: (mean, std)}``.

    Rows are sorted by the varying keys (model first).
    """
    runs = as_runs(records)
    if not runs:
        return []
    by = [keys.model, *varying_keys(runs, ignore=[keys.seed, keys.model])]
    return [{"setting": dict(zip(by, p.key, strict=True)), "n": p.n, **p.values}
            for p in aggregate(runs, by, metrics)]


def best_per_sparsity(records: Sequence[Any], keys: Keys = DEFAULT_KEYS,
                      metric: str = "test_ppl") -> list[dict[str, Any]]:
    """For each (weight-sparsity target, model): the setting with the lowest mean ``metric``.

    Each row: ``sparsity``, ``model``, ``setting`` (its other varying config values), ``n``,
    ``{metric: (mean, std)}`` for :data:`COLUMNS`, and ``best``: True for the lowest mean
    ``metric`` among the models at that sparsity.
    """
    rows = settings_table(records, keys)
    by_level: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        s = row["setting"]
        by_level.setdefault((s.get(keys.sparsity), s.get(keys.model)), []).append(row)
    best_rows = []
    for (sparsity, model), cands in sorted(by_level.items(), key=lambda kv: (
            sort_key(kv[0][0]), sort_key(kv[0][1]))):
        ok = [c for c in cands if math.isfinite(c[metric][0])]
        if not ok:
            continue
        row = min(ok, key=lambda c: c[metric][0])
        other = {k: v for k, v in row["setting"].items() if k not in (keys.sparsity, keys.model)}
        best_rows.append({"sparsity": sparsity, "model": model, "setting": other, "n": row["n"],
                          **{m: row[m] for m in COLUMNS}, "best": False})
    for (_sparsity,), level in _group_rows(best_rows).items():
        winner = min(level, key=lambda r: r[metric][0])
        winner["best"] = True
    return best_rows


def _group_rows(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["sparsity"],), []).append(r)
    return out


def _fmt(value: tuple[float, float], digits: int) -> str:
    mean, sd = value
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _digits(metric: str) -> int:
    return 2 if metric.endswith("ppl") or metric == "mac_reduction" else 3


def best_table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`best_per_sparsity` rows (best model per level in bold)."""
    head = ["target sparsity", "model", "n", *(_HEADERS[m] for m in COLUMNS), "setting"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        model = f"**{r['model']}**" if r["best"] else str(r["model"])
        setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "-"
        cells = [str(r["sparsity"]), model, str(r["n"]),
                 *(_fmt(r[m], _digits(m)) for m in COLUMNS), setting]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_markdown(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = COLUMNS) -> str:
    """Markdown of :func:`settings_table` rows."""
    if not rows:
        return "(no finished runs)"
    keys = list(rows[0]["setting"])
    head = [*keys, "n", *(_HEADERS.get(m, m) for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["setting"][k]) for k in keys] + [str(r["n"])]
        cells += [_fmt(r[m], _digits(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["COLUMNS", "best_per_sparsity", "best_table_markdown", "settings_markdown",
           "settings_table"]
