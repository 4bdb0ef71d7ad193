"""Run records from the results store, grouped over seeds into means and standard deviations.

A *record* is anything with ``config`` and ``metrics`` dicts (a
:class:`~dualsparse.experiments.store.RunRecord`, or a plain ``{"config", "metrics"}`` dict).
Which config keys mean what is given by a :class:`Keys` object (defaults: the names of
``dualsparse train``: ``model``, ``prune_target``, ``prune_method``, ``prune_rounds``,
``wdecay``, ``wdecay_bias``, ``seed``). A key missing from a config reads as None; the older
name ``prune_steps`` of stored configs reads as ``prune_rounds`` (:data:`OLD_NAMES`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Config keys of older stores -> their current names (the sweep specs' ``prune_steps``).
OLD_NAMES = {"prune_steps": "prune_rounds"}


@dataclass(frozen=True)
class Keys:
    """Config keys the figures and tables look at."""

    model: str = "model"
    sparsity: str = "prune_target"
    method: str = "prune_method"
    steps: str = "prune_rounds"
    wdecay: str = "wdecay"
    wdecay_bias: str = "wdecay_bias"
    seed: str = "seed"


@dataclass(frozen=True)
class Run:
    """A finished run: its id, config and metrics."""

    run_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]

    def get(self, key: str) -> Any:
        """A metric if there is one of that name, else the config value (None if absent)."""
        if key in self.metrics:
            return self.metrics[key]
        return self.config.get(key)


def as_runs(records: Iterable[Any]) -> list[Run]:
    """Normalise records (store records or dicts) to :class:`Run`; records without metrics
    (not finished) are left out."""
    out = []
    for i, r in enumerate(records):
        if isinstance(r, Run):
            out.append(r)
            continue
        if isinstance(r, dict):
            config, metrics, rid = r.get("config"), r.get("metrics"), r.get("run_id", str(i))
        else:
            config, metrics, rid = r.config, r.metrics, r.run_id
        if metrics is None:
            continue
        if not isinstance(config, dict) or not isinstance(metrics, dict):
            raise ValueError(f"record {rid}: config and metrics must be dicts")
        for old, new in OLD_NAMES.items():
            if old in config and new not in config:
                config = {new if k == old else k: v for k, v in config.items()}
        out.append(Run(rid, config, metrics))
    return out


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return v


def varying_keys(runs: Sequence[Run], ignore: Iterable[str] = ()) -> list[str]:
    """Config keys whose value differs between runs (sorted), minus ``ignore``."""
    skip = set(ignore)
    keys = sorted({k for r in runs for k in r.config} - skip)
    return [k for k in keys if len({_hashable(r.config.get(k)) for r in runs}) > 1]


def group(runs: Sequence[Run], keys: Sequence[str]) -> dict[tuple, list[Run]]:
    """Runs grouped by their values of ``keys`` (insertion order of first appearance)."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault(tuple(_hashable(r.config.get(k)) for k in keys), []).append(r)
    return out


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite numbers."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v)]
    if not xs:
        return math.nan, math.nan, 0
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd, len(xs)


def sort_key(value: Any) -> tuple:
    """Orders None first, then numbers, then strings."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0, str(value))


def label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``"key=value, ..."`` (the model key's value alone when it is named ``model``)."""
    parts = []
    for k, v in zip(keys, values, strict=True):
        parts.append(str(v) if k == "model" else f"{k}={v}")
    return ", ".join(parts) if parts else "all runs"


@dataclass
class Point:
    """Mean and standard deviation over the seeds of one group of runs."""

    key: tuple
    n: int
    values: dict[str, tuple[float, float]]
    runs: list[Run]


def aggregate(runs: Sequence[Run], by: Sequence[str], metrics: Sequence[str]) -> list[Point]:
    """One :class:`Point` per group of ``by`` values (sorted), with ``metrics``' mean/std."""
    points = []
    for key, members in group(runs, by).items():
        vals = {}
        for m in metrics:
            mean, sd, _ = mean_std(r.get(m) for r in members)
            vals[m] = (mean, sd)
        points.append(Point(key, len(members), vals, members))
    points.sort(key=lambda p: tuple(sort_key(v) for v in p.key))
    return points


__all__ = ["Keys", "Point", "Run", "aggregate", "as_runs", "group", "label", "mean_std",
           "sort_key", "varying_keys"]
