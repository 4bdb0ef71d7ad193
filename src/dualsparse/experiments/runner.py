"""Execute the runs of a results store: the run-function interface and the local backend.

A **run function** takes a JSON-able config dict and a run folder (for checkpoints; it exists
and survives interruptions, so a run function may resume from what it left there) and returns
a JSON-able metrics dict (see :mod:`dualsparse.experiments.metrics`; ``metrics["checkpoint"]``,
if present, is stored as the run's checkpoint path)::

    def run(config: dict, run_dir: pathlib.Path) -> dict

Registered names: ``lm`` (:func:`dualsparse.experiments.lm_run.run_lm`), ``lm_prune``
(:func:`dualsparse.experiments.lm_prune_run.run_lm_prune`), ``toy``
(:mod:`dualsparse.experiments.toy`) and ``echo`` (:mod:`dualsparse.experiments.echo`). Any
other ``"package.module:function"`` is imported and called only with ``allow_import=True``
(``sweep run --allow-import``): a spec naming one executes arbitrary code. The configs of
registered run functions are checked when the spec is loaded (:func:`check_run_configs`), so a
misspelled key or a negative step count fails before any run starts.

**Local backend** (the default): :func:`work` is one worker, a loop claim -> run -> finish/fail
with a heartbeat thread; :func:`run_local` starts ``workers`` such processes (``spawn``) on
one store, or runs in this process for ``workers=1``. Ctrl-C gives the current run back to
the store (``pending``); a killed worker's run is claimable again at once on the same host
(its pid is gone) or after ``stale_after`` seconds without heartbeat elsewhere.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dualsparse.atomic import atomic_write_json
from dualsparse.experiments.progress import SweepBar
from dualsparse.experiments.store import ResultStore, RunRecord, worker_id
from dualsparse.malloc import keep_freed_memory
from dualsparse.validation import check_int, check_real

RunFunction = Callable[[dict[str, Any], Path], dict[str, Any]]

RUN_FUNCTIONS: dict[str, str] = {
    "lm": "dualsparse.experiments.lm_run:run_lm",
    "lm_prune": "dualsparse.experiments.lm_prune_run:run_lm_prune",
    "toy": "dualsparse.experiments.toy:run_toy",
    "echo": "dualsparse.experiments.echo:run_echo",
}
#: config checks of the registered run functions (no work, no files): ``check(config)``
CONFIG_CHECKS: dict[str, str] = {
    "lm": "dualsparse.experiments.lm_run:check_config",
    "lm_prune": "dualsparse.experiments.lm_prune_run:check_config",
    "toy": "dualsparse.experiments.toy:check_config",
}
ERROR_CHARS = 8000
#: seconds between progress-bar updates while worker processes run
PROGRESS_POLL_S = 1.0


def _import(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def resolve_run_function(name: str, allow_import: bool = False) -> RunFunction:
    """The run function registered as ``name`` (or its ``module:function`` target); any other
    ``"package.module:function"`` only with ``allow_import`` (it executes that code)."""
    target = RUN_FUNCTIONS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"unknown run function {name!r}: use one of {sorted(RUN_FUNCTIONS)} "
                         "or 'package.module:function' with --allow-import")
    if target not in RUN_FUNCTIONS.values() and not allow_import:
        raise ValueError(f"run function {name!r} is not registered ({sorted(RUN_FUNCTIONS)}); "
                         "importing and calling other code needs --allow-import")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"run function {name!r}: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"run function {name!r}: {module_name!r} has no callable {attr!r}")
    return fn


def check_run_configs(run_fn: str, configs: list[dict[str, Any]],
                      allow_import: bool = False) -> None:
    """Before any run: the run function must resolve (see :func:`resolve_run_function`) and,
    for a registered one, every config must pass its check; ``ValueError`` naming the first
    bad config otherwise."""
    resolve_run_function(run_fn, allow_import)
    if run_fn not in CONFIG_CHECKS:
        return
    check = _import(CONFIG_CHECKS[run_fn])
    for i, config in enumerate(configs):
        try:
            check(dict(config))
        except ValueError as exc:
            raise ValueError(f"run {i} of the sweep ({config}): {exc}") from None


def run_dir_for(output: str | Path, run_id: str) -> Path:
    """Folder of one run: ``<output>/runs/<run_id>``."""
    return Path(output) / "runs" / run_id


def execute(record: RunRecord, output: str | Path, allow_import: bool = False
            ) -> dict[str, Any]:
    """Run one claimed record's function in this process; returns its metrics.

    Writes ``config.json`` before and ``metrics.json`` after the run into its folder; an
    unregistered run function is refused unless ``allow_import``.
    """
    fn = resolve_run_function(record.run_fn, allow_import)
    run_dir = run_dir_for(output, record.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {"run_id": record.run_id, "run": record.run_fn,
                                                "config": record.config},
                      sort_keys=False, allow_nan=False)
    metrics = fn(dict(record.config), run_dir)
    if not isinstance(metrics, dict):
        raise ValueError(f"run function {record.run_fn!r} returned {type(metrics).__name__}, "
                         "expected a metrics dict")
    atomic_write_json(run_dir / "metrics.json", metrics, sort_keys=False, allow_nan=False)
    return metrics


def format_error(exc: BaseException) -> str:
    """Traceback text of ``exc``, keeping its last :data:`ERROR_CHARS` characters."""
    text = "".join(traceback.format_exception(exc))
    return text[-ERROR_CHARS:]


class _Heartbeat(threading.Thread):
    """Refreshes a lease every ``interval`` seconds from its own store connection."""

    def __init__(self, store_path: Path, lease: tuple[str, str, int], interval: float) -> None:
        super().__init__(daemon=True)
        self.store_path, self.lease, self.interval = store_path, lease, interval
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        with ResultStore(self.store_path) as store:
            while not self.stopped.wait(self.interval):
                if not store.heartbeat(self.lease):
                    self.lost = True
                    return


@dataclass
class WorkerOptions:
    """Settings of one worker.

    Attributes:
        sweep: claim only runs of this sweep (None: any run in the store).
        max_runs: stop after this many runs (None: until nothing is claimable).
        stale_after: seconds without heartbeat after which another worker may take a run.
        heartbeat_s: seconds between heartbeats (must be well below ``stale_after``).
        retry_failed, max_attempts: also take failed runs with fewer attempts.
        threads: ``torch.set_num_threads`` in the worker (None: leave as is).
        verbose: print one line per run.
        allow_import: run functions that are not registered may be imported and called.
        progress: a progress bar of the sweep's runs on stderr when it is a terminal
            (:class:`~dualsparse.experiments.progress.SweepBar`).
    """

    sweep: str | None = None
    max_runs: int | None = None
    stale_after: float = 600.0
    heartbeat_s: float = 30.0
    retry_failed: bool = False
    max_attempts: int = 3
    threads: int | None = 1
    verbose: bool = True
    allow_import: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_real("heartbeat_s", self.heartbeat_s, low=0.0, low_open=True)
        check_real("stale_after", self.stale_after, low=0.0, low_open=True)
        if not self.heartbeat_s < self.stale_after:
            raise ValueError(f"need 0 < heartbeat_s < stale_after, got heartbeat_s="
                             f"{self.heartbeat_s}, stale_after={self.stale_after}")
        if self.max_runs is not None:
            check_int("max_runs", self.max_runs, low=1)
        check_int("max_attempts", self.max_attempts, low=1)
        if self.threads is not None:
            check_int("threads", self.threads, low=1)


def set_threads(threads: int) -> None:
    """``torch.set_num_threads`` if torch is loaded, else ``OMP_NUM_THREADS`` for its import."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _summary(metrics: dict[str, Any]) -> str:
    keys = ("test_ppl", "activity_sparsity", "weight_sparsity", "mac_reduction")
    parts = [f"{k}={metrics[k]:.4g}" for k in keys
             if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics[k], bool)]
    return " ".join(parts)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit`` in the main thread, so that a worker
    stopped with ``kill`` gives its run back as on Ctrl-C (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (main thread; elsewhere no change): a signal
    that arrives while a run is being claimed is handled once the claim has returned, so the
    worker knows which run to give back. Python-level (a recording handler, then the signal
    raised again under the block's handlers), so it holds whichever OS thread receives it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)

    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, hold) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in caught:
            signal.raise_signal(s)  # now handled by the handler the block had replaced


def work(store_path: str | Path, output: str | Path, options: WorkerOptions | None = None,
         worker: str | None = None) -> dict[str, int]:
    """One worker: claim and execute runs until none is claimable (or ``max_runs``).

    Returns ``{"done": n, "failed": m, "lost": k}`` for this worker (``lost``: results that
    were not stored because the run was already done by another worker).
    """
    opts = options or WorkerOptions()
    if opts.threads is not None:
        set_threads(opts.threads)
    worker = worker or worker_id("local")
    store_path = Path(store_path)
    counts = {"done": 0, "failed": 0, "lost": 0}
    with sigterm_as_exit(), ResultStore(store_path) as store, \
            SweepBar(store, opts.sweep, opts.progress) as bar:
        while opts.max_runs is None or counts["done"] + counts["failed"] < opts.max_runs:
            record, beat = None, None
            try:
                with signals_deferred():
                    record = store.claim(worker, opts.sweep, opts.stale_after,
                                         opts.retry_failed, opts.max_attempts)
                if record is None:
                    break
                beat = _Heartbeat(store_path, record.lease, opts.heartbeat_s)
                beat.start()
                t0 = time.perf_counter()
                metrics = execute(record, output, opts.allow_import)
            except (KeyboardInterrupt, SystemExit):
                # give the run back (signals wait until claim() has returned)
                if beat is not None:
                    beat.stopped.set()
                if record is not None:
                    store.release(record.lease)
                raise
            except Exception as exc:  # a failed run is recorded, the sweep goes on
                if record is None or beat is None:
                    raise  # the store itself failed: nothing to record it in
                beat.stopped.set()
                store.fail(record.lease, format_error(exc))
                counts["failed"] += 1
                bar.refresh()
                if opts.verbose:
                    bar.write(f"[{worker}] run {record.run_id} failed (attempt "
                              f"{record.attempts}): {type(exc).__name__}: {exc}")
                continue
            beat.stopped.set()
            ckpt = metrics.get("checkpoint")
            stored = store.finish(record.lease, metrics, ckpt if isinstance(ckpt, str) else None)
            counts["done" if stored else "lost"] += 1
            bar.refresh()
            if opts.verbose:
                state = "done" if stored else "already done elsewhere; result not stored"
                bar.write(f"[{worker}] run {record.run_id} {state} in "
                          f"{time.perf_counter() - t0:.1f} s {_summary(metrics)}")
    return counts


def _worker_main(store_path: str, output: str, options: WorkerOptions,
                 results: Any) -> None:
    keep_freed_memory()  # a fresh (spawned) process: set as the command line does
    try:
        results.put(work(store_path, output, options))
    except KeyboardInterrupt:
        results.put({"done": 0, "failed": 0, "lost": 0, "interrupted": 1})


def run_local(store_path: str | Path, output: str | Path, workers: int = 1,
              options: WorkerOptions | None = None) -> dict[str, int]:
    """Execute claimable runs with ``workers`` local processes (1: in this process).

    Returns the summed per-worker counts (``done``, ``failed``, ``lost``; ``crashed``: worker
    processes that exited abnormally, whose runs stay claimable).
    """
    workers = check_int("workers", workers, low=1)
    opts = options or WorkerOptions()
    if workers == 1:
        return work(store_path, output, opts)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    quiet = replace(opts, progress=False)  # one bar, drawn by this process
    procs = [ctx.Process(target=_worker_main, args=(str(store_path), str(output), quiet, results),
                         name=f"dualsparse-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    total = {"done": 0, "failed": 0, "lost": 0, "crashed": 0}
    try:
        with sigterm_as_exit(), ResultStore(store_path) as store, \
                SweepBar(store, opts.sweep, opts.progress) as bar:
            for p in procs:
                while p.is_alive():
                    p.join(timeout=PROGRESS_POLL_S)
                    bar.refresh()
    except (KeyboardInterrupt, SystemExit) as exc:
        for p in procs:  # a Ctrl-C reached the children too; a SIGTERM is passed on
            if isinstance(exc, SystemExit) and p.is_alive():
                p.terminate()
            p.join(timeout=30)
        raise
    for p in procs:
        if p.exitcode != 0:
            total["crashed"] += 1
            continue
        try:
            for k, v in results.get(timeout=10).items():
                total[k] = total.get(k, 0) + v
        except queue.Empty:
            total["crashed"] += 1
    return total


__all__ = ["CONFIG_CHECKS", "RUN_FUNCTIONS", "RunFunction", "WorkerOptions",
           "check_run_configs", "execute", "format_error",
           "resolve_run_function", "run_dir_for", "run_local", "set_threads", "work"]
