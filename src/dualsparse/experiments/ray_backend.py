"""Ray backend: one remote task per run; the driver alone writes the results store.

The driver claims runs (leases held under its own pid and host), submits one Ray task per
run (``num_cpus`` each), refreshes the heartbeats of all runs in flight while it waits, and
stores each result or error as tasks finish. Only the driver touches the SQLite file, so the
store need not be on a filesystem the cluster nodes share; the run folders (``<output>/runs``)
must be, if the run function writes checkpoints there. If the driver dies, its runs become
claimable again (at once on its host, after ``stale_after`` seconds elsewhere); Ctrl-C cancels
the tasks in flight and gives their runs back.

The package must be importable on every node (``pip install -e .`` there, or a Ray
``runtime_env``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dualsparse.experiments.runner import WorkerOptions, execute, format_error, set_threads
from dualsparse.experiments.store import ResultStore, RunRecord, worker_id
from dualsparse.validation import check_int, check_real


def _task(record: RunRecord, output: str, threads: int | None) -> dict[str, Any]:
    if threads is not None:
        set_threads(threads)
    return execute(record, output)


def run_ray(store_path: str | Path, output: str | Path, address: str | None = None,
            options: WorkerOptions | None = None, num_cpus: float = 1.0,
            max_in_flight: int | None = None) -> dict[str, int]:
    """Execute claimable runs as Ray tasks.

    Args:
        address: Ray cluster address (``"auto"``, ``"ray://host:10001"``, ...); None or
            ``"local"`` starts a local Ray instance. If Ray is already initialised in this
            process, that instance is used and left running.
        options: worker settings (``sweep``, ``max_runs``, heartbeat/staleness, retries,
            ``threads`` = torch threads inside each task).
        num_cpus: CPUs Ray reserves per task.
        max_in_flight: tasks submitted at once (default: cluster CPUs // num_cpus).

    Returns:
        ``{"done": n, "failed": m, "lost": k}``.
    """
    import ray  # optional heavy dependency: imported only when a sweep runs on Ray

    opts = options or WorkerOptions()
    check_real("num_cpus", num_cpus, low=0.0, low_open=True)
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False}
        if address not in (None, "local"):
            kwargs["address"] = address
        ray.init(**kwargs)
        started = True
    worker = worker_id("ray-driver")
    counts = {"done": 0, "failed": 0, "lost": 0}
    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_task)
    if max_in_flight is None:
        max_in_flight = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
    max_in_flight = check_int("max_in_flight", max_in_flight, low=1)
    in_flight: dict[Any, RunRecord] = {}
    submitted = 0
    try:
        with ResultStore(store_path) as store:
            while True:
                while len(in_flight) < max_in_flight and (
                        opts.max_runs is None or submitted < opts.max_runs):
                    record = store.claim(worker, opts.sweep, opts.stale_after,
                                         opts.retry_failed, opts.max_attempts, pid=os.getpid())
                    if record is None:
                        break
                    in_flight[remote.remote(record, str(output), opts.threads)] = record
                    submitted += 1
                if not in_flight:
                    break
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=opts.heartbeat_s)
                for ref in ready:
                    record = in_flight.pop(ref)
                    try:
                        metrics = ray.get(ref)
                    except Exception as exc:  # the task raised: record it, go on
                        store.fail(record.lease, format_error(exc))
                        counts["failed"] += 1
                        if opts.verbose:
                            print(f"[{worker}] run {record.run_id} failed: "
                                  f"{type(exc).__name__}", flush=True)
                        continue
                    ckpt = metrics.get("checkpoint")
                    stored = store.finish(record.lease, metrics,
                                          ckpt if isinstance(ckpt, str) else None)
                    counts["done" if stored else "lost"] += 1
                    if opts.verbose:
                        print(f"[{worker}] run {record.run_id} "
                              f"{'done' if stored else 'already done elsewhere'}", flush=True)
                for ref, record in list(in_flight.items()):
                    if not store.heartbeat(record.lease):  # claimed again elsewhere
                        ray.cancel(ref, force=True)
                        del in_flight[ref]
                        counts["lost"] += 1
    except BaseException:
        if in_flight:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            with ResultStore(store_path) as store:
                for record in in_flight.values():
                    store.release(record.lease)
        raise
    finally:
        if started:
            ray.shutdown()
    return counts


__all__ = ["run_ray"]
