"""Sweep specs: a base config, grids of values, seeds; expanded into runs with stable ids.

A spec is a YAML or JSON mapping::

    name: ptb-small            # sweep name (runs are listed under it in the store)
    run: lm                    # run function: a registered name (lm, toy, echo) or "pkg.mod:fn"
    output: runs/sweeps/ptb    # store (results.sqlite) and run folders (runs/<id>/); a relative
                               # path is taken from the current directory
    base: {data: ptb, emsize: 128, max_steps: 400}      # fixed settings of every run
    grid:                      # a mapping of key -> list of values (their product), or a list
      model: [EGRU, LSTM]      # of such mappings (the union of their products)
      prune_target: [0.0, 0.5, 0.8, 0.9]
    seeds: [1, 2, 3]           # crossed with every grid point, stored under ``seed_key``
    seed_key: seed             # (default "seed")

Every run is the JSON-able dict ``base | grid point | {seed_key: seed}``. Its id is a hash of
the run function's name and the canonical JSON of that dict (keys sorted, integral floats
written as integers), so the same settings always get the same id: resuming a sweep never
repeats a finished run, and editing the spec adds only the new points.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dualsparse.validation import check_int

ID_LENGTH = 16
_SPEC_KEYS = {"name", "run", "output", "base", "grid", "seeds", "seed_key", "description"}


def _canonical(value: Any, where: str) -> Any:
    """JSON-able canonical form; ``ValueError`` for values JSON cannot hold exactly."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite number {value!r} in a run config")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, (list, tuple)):
        return [_canonical(v, where) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: config keys must be strings, got {k!r}")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    raise ValueError(f"{where}: {type(value).__name__} value {value!r} is not JSON-able")


def canonical_json(config: dict[str, Any]) -> str:
    """Canonical JSON text of a config (sorted keys, no spaces, integral floats as ints)."""
    return json.dumps(_canonical(config, "config"), sort_keys=True, separators=(",", ":"))


def run_id(run_fn: str, config: dict[str, Any]) -> str:
    """Stable id of one run: the first 16 hex digits of sha256(run function + config)."""
    text = json.dumps({"run": run_fn, "config": json.loads(canonical_json(config))},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


@dataclass(frozen=True)
class RunSpec:
    """One expanded run: its id, the run function's name and its config."""

    run_id: str
    run_fn: str
    config: dict[str, Any]


@dataclass
class SweepSpec:
    """A parsed sweep spec (see the module docstring for the file format).

    Attributes:
        name: sweep name; run: run function name; output: folder of store and run folders.
        base: settings shared by all runs; grid: list of mappings key -> list of values.
        seeds: seeds crossed with every grid point (empty: no seed key is added).
        seed_key: config key that receives the seed.
    """

    name: str
    run: str
    output: Path
    base: dict[str, Any] = field(default_factory=dict)
    grid: list[dict[str, list[Any]]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    seed_key: str = "seed"
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"sweep 'name' must be a non-empty string, got {self.name!r}")
        if not isinstance(self.run, str) or not self.run:
            raise ValueError(f"sweep 'run' must name a run function, got {self.run!r}")
        if not isinstance(self.base, dict):
            raise ValueError(f"sweep 'base' must be a mapping, got {type(self.base).__name__}")
        _canonical(self.base, "base")
        grids = [self.grid] if isinstance(self.grid, dict) else self.grid
        if not isinstance(grids, list):
            raise ValueError("sweep 'grid' must be a mapping or a list of mappings")
        for i, g in enumerate(grids):
            if not isinstance(g, dict):
                raise ValueError(f"grid entry {i} must be a mapping key -> list of values")
            for key, values in g.items():
                if not isinstance(values, list) or not values:
                    raise ValueError(f"grid key {key!r} must map to a non-empty list, "
                                     f"got {values!r}")
                _canonical(values, f"grid.{key}")
                if key == self.seed_key and self.seeds:
                    raise ValueError(f"{key!r} is both a grid key and the seed key; give "
                                     "seeds in one place")
        self.grid = grids
        if not isinstance(self.seeds, list):
            raise ValueError(f"sweep 'seeds' must be a list of integers, got {self.seeds!r}")
        self.seeds = [check_int("sweep 'seeds' entry", s) for s in self.seeds]
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"sweep 'seeds' has repeated values: {self.seeds}")
        if self.seeds and self.seed_key in self.base:
            raise ValueError(f"{self.seed_key!r} is set in 'base' and in 'seeds'")
        self.output = Path(self.output)

    @property
    def store_path(self) -> Path:
        """The SQLite results store of this sweep: ``<output>/results.sqlite``."""
        return self.output / "results.sqlite"

    def expand(self) -> list[RunSpec]:
        """All runs, in grid order then seed order, duplicates (same id) removed."""
        points: list[dict[str, Any]] = []
        for g in self.grid or [{}]:
            keys = list(g)
            for values in itertools.product(*(g[k] for k in keys)):
                points.append(dict(zip(keys, values, strict=True)))
        runs: dict[str, RunSpec] = {}
        for point in points:
            for seed in self.seeds or [None]:
                config = {**self.base, **point}
                if seed is not None:
                    config[self.seed_key] = seed
                _canonical(config, "config")  # validates; the config keeps its own types
                config = json.loads(json.dumps(config))
                rid = run_id(self.run, config)
                runs.setdefault(rid, RunSpec(rid, self.run, config))
        return list(runs.values())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "run": self.run, "output": str(self.output),
                "base": self.base, "grid": self.grid, "seeds": self.seeds,
                "seed_key": self.seed_key, "description": self.description}

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path | None = None) -> SweepSpec:
        """Build from a mapping; a relative ``output`` is taken relative to ``root``."""
        if not isinstance(d, dict):
            raise ValueError(f"a sweep spec must be a mapping, got {type(d).__name__}")
        unknown = set(d) - _SPEC_KEYS
        if unknown:
            raise ValueError(f"unknown sweep spec keys {sorted(unknown)}; known: "
                             f"{sorted(_SPEC_KEYS)}")
        for key in ("name", "run", "output"):
            if key not in d:
                raise ValueError(f"sweep spec has no {key!r}")
        output = Path(d["output"])
        if root is not None and not output.is_absolute():
            output = root / output
        return cls(name=d["name"], run=d["run"], output=output, base=d.get("base") or {},
                   grid=d.get("grid") or [], seeds=d.get("seeds") or [],
                   seed_key=d.get("seed_key", "seed"), description=d.get("description", ""))


def load_spec(path: str | Path) -> SweepSpec:
    """Read a YAML (``.yaml``/``.yml``) or JSON sweep spec file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep spec {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"sweep spec {str(path)!r} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"sweep spec {str(path)!r} is not valid JSON: {exc}") from None
    return SweepSpec.from_dict(data)


__all__ = ["RunSpec", "SweepSpec", "canonical_json", "load_spec", "run_id"]
