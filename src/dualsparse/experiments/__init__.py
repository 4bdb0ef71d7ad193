"""Sweeps: specs expanded into runs, a SQLite results store, local and Ray runners.

* :mod:`.spec`: YAML/JSON sweep spec -> runs with stable ids.
* :mod:`.store`: the results store (SQLite, WAL, atomic claims, heartbeats).
* :mod:`.runner`: the run-function interface and local worker processes;
  :mod:`.ray_backend`: one Ray task per run.
* :mod:`.lm_run` (language models), :mod:`.toy` (tiny real runs for tests): run functions;
  :mod:`.metrics`: the metrics dict they return.
* :mod:`.cli`: ``sweep run|status`` and ``report``.
"""

from dualsparse.experiments.spec import RunSpec, SweepSpec, load_spec, run_id
from dualsparse.experiments.store import ResultStore, RunRecord, worker_id

__all__ = ["ResultStore", "RunRecord", "RunSpec", "SweepSpec", "load_spec", "run_id",
           "worker_id"]
