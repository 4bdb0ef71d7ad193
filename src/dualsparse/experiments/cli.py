"""Command line of sweeps and reports: ``sweep run``, ``sweep status``, ``report``.

Used by ``dualsparse sweep ...`` / ``dualsparse report ...`` (through :func:`cmd_sweep` and
:func:`cmd_report`, each taking the arguments after the command name) and by
``python -m dualsparse.experiments {sweep,report} ...``::

    sweep run SPEC [--workers N] [--backend local|ray] [--address ADDR] [--max-runs N]
                   [--retry-failed] [--dry-run] [--allow-import] [--max-grid N]
    sweep status (SPEC | --store FILE) [--sweep NAME] [--runs]
    report (SPEC | --store FILE) [--sweep NAME] [--out DIR] [--title T] [--hardware TEXT]

``sweep run`` checks every run config before it starts (and in ``--dry-run``) and exits
with status 1, listing the failures, when a run of this invocation failed. A spec whose
``run`` is not a registered name (``lm``, ``toy``, ``echo``) is refused unless
``--allow-import``: that imports and calls the named function, i.e. executes arbitrary code.

Interrupt ``sweep run`` at any time and run it again: finished runs are kept and never
repeated; runs that were in flight start again (the LM run function resumes from its
``latest`` checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dualsparse.analysis.report import write_report
from dualsparse.experiments.ray_backend import run_ray
from dualsparse.experiments.runner import WorkerOptions, check_run_configs, run_local
from dualsparse.experiments.spec import MAX_GRID_RUNS, SweepSpec, load_spec
from dualsparse.experiments.store import ResultStore, RunRecord, status_counts
from dualsparse.train.run_dir import check_writable
from dualsparse.validation import check_int


def _add_worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes (default 1: run in this process)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local processes (default) or Ray tasks")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="Ray: CPUs reserved per run")
    p.add_argument("--max-runs", type=int, default=None,
                   help="stop after this many runs per worker (default: all)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also run failed runs again (up to --max-attempts attempts)")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--stale-after", type=float, default=600.0,
                   help="seconds without heartbeat after which a running run is taken over")
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--output", default=None, help="override the spec's output folder")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs and what the store knows of them; run nothing")
    p.add_argument("--quiet", action="store_true", help="no line per finished run")
    p.add_argument("--allow-import", action="store_true",
                   help="let the spec's 'run' name any 'package.module:function' (this "
                        "imports and EXECUTES that code; default: registered names only)")
    p.add_argument("--max-grid", type=int, default=MAX_GRID_RUNS,
                   help="refuse a spec of more runs than this (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is drawn only when stderr is a terminal)")


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", default=None, help="sweep spec (YAML or JSON)")
    p.add_argument("--store", default=None, help="results store file (instead of a spec)")
    p.add_argument("--sweep", default=None,
                   help="sweep name in the store (default: the spec's, or every run)")


def sweep_parser() -> argparse.ArgumentParser:
    """Parser of ``dualsparse sweep {run,status}``."""
    parser = argparse.ArgumentParser(prog="dualsparse sweep",
                                     description="run a grid of experiments into a results store")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="add the spec's runs to its store and execute them")
    run.add_argument("spec", help="sweep spec (YAML or JSON)")
    _add_worker_flags(run)
    status = sub.add_parser("status", help="runs per status, failed runs and their errors")
    _add_source_flags(status)
    status.add_argument("--runs", action="store_true", help="one line per run")
    return parser


def report_parser() -> argparse.ArgumentParser:
    """Parser of ``dualsparse report``."""
    parser = argparse.ArgumentParser(prog="dualsparse report",
                                     description="figures and tables of a sweep, as markdown")
    _add_source_flags(parser)
    parser.add_argument("--out", default=None,
                        help="report folder (default <output>/report)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--hardware", default=None,
                        help="where the runs were measured (default: this machine)")
    parser.add_argument("--notes", default=None, help="markdown file to include after the header")
    return parser


def _spec_with_output(path: str, output: str | None) -> SweepSpec:
    spec = load_spec(path)
    if output is not None:
        spec.output = Path(output)
    return spec


def _source(args: argparse.Namespace) -> tuple[Path, str | None, SweepSpec | None]:
    if (args.spec is None) == (args.store is None):
        raise ValueError("give either a sweep spec or --store FILE")
    if args.spec is not None:
        spec = load_spec(args.spec)
        return spec.store_path, args.sweep or spec.name, spec
    path = Path(args.store)
    if not path.is_file():
        raise ValueError(f"results store {args.store!r} does not exist")
    return path, args.sweep, None


def _runs_of(path: Path, sweep: str | None, spec: SweepSpec | None
             ) -> tuple[list[RunRecord], dict[str, int]]:
    """The runs to show and their count per status. For a spec (and its own sweep name):
    exactly the spec's runs, found by id in the store whatever sweep registered them, plus
    ``"not started"`` for those the store has not seen; else the store's listing."""
    if spec is None or sweep != spec.name:
        with ResultStore(path) as store:
            return store.records(sweep), store.counts(sweep)
    ids = [run.run_id for run in spec.expand()]
    known: dict[str, RunRecord] = {}
    if path.is_file():
        with ResultStore(path) as store:
            known = {r.run_id: r for r in store.records()}
    records = [known[i] for i in ids if i in known]
    counts = status_counts(records)
    if len(records) < len(ids):
        counts["not started"] = len(ids) - len(records)
    return records, counts


def sweep_run(args: argparse.Namespace) -> dict[str, Any]:
    """Register the spec's runs in its store and execute the claimable ones."""
    spec = _spec_with_output(args.spec, args.output)
    runs = spec.expand(limit=check_int("--max-grid", args.max_grid, low=1))
    check_run_configs(spec.run, [r.config for r in runs], args.allow_import)
    if args.dry_run:
        known = {}
        if spec.store_path.is_file():
            with ResultStore(spec.store_path) as store:
                known = {r.run_id: r.status for r in store.records()}
        for r in runs:
            print(f"{r.run_id}  {known.get(r.run_id, 'new'):8s} {r.config}")
        print(f"{len(runs)} runs, {sum(r.run_id not in known for r in runs)} new")
        return {"runs": len(runs)}
    with ResultStore(spec.store_path) as store:
        new = store.add_sweep(spec.name, spec.to_dict(), runs)
        before = store.counts(spec.name)
    print(f"sweep {spec.name!r}: {len(runs)} runs ({new} new); "
          + ", ".join(f"{k} {v}" for k, v in before.items()) + f"; store {spec.store_path}",
          flush=True)
    opts = WorkerOptions(sweep=spec.name, max_runs=args.max_runs, stale_after=args.stale_after,
                         heartbeat_s=args.heartbeat, retry_failed=args.retry_failed,
                         max_attempts=args.max_attempts, threads=args.threads,
                         verbose=not args.quiet, allow_import=args.allow_import,
                         progress=args.progress)
    if args.backend == "ray":
        result = run_ray(spec.store_path, spec.output, args.address, opts, args.num_cpus)
    else:
        if args.address is not None:
            raise ValueError("--address is for --backend ray")
        result = run_local(spec.store_path, spec.output, args.workers, opts)
    with ResultStore(spec.store_path) as store:
        after = store.counts(spec.name)
        failed = store.records(spec.name, "failed")
    print("this invocation: " + ", ".join(f"{k} {v}" for k, v in result.items())
          + "\nsweep now: " + ", ".join(f"{k} {v}" for k, v in after.items()), flush=True)
    bad = result.get("failed", 0) + result.get("crashed", 0)
    if bad:
        lines = [f"{r.run_id}: {_last_line(r.error)}" for r in failed[:5]]
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise RunsFailedError(
            f"{bad} of {sum(result.values())} runs of this invocation failed or crashed; "
            + "; ".join(lines) + more + f" (details: dualsparse sweep status {args.spec})")
    return {"new": new, "result": result, "counts": after}


class RunsFailedError(ValueError):
    """``sweep run`` finished, but runs of this invocation failed (exit status 1)."""


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "no error text"


def sweep_status(args: argparse.Namespace) -> dict[str, Any]:
    """Print runs per status and the last error line of failed runs."""
    path, sweep, spec = _source(args)
    records, counts = _runs_of(path, sweep, spec)
    print(f"{path} ({'sweep ' + repr(sweep) if sweep else 'all runs'}): "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for r in records:
        if args.runs or r.status in ("running", "failed"):
            extra = ""
            if r.status == "done" and r.metrics:
                ppl = r.metrics.get("test_ppl")
                extra = f"test_ppl {ppl:.2f}" if isinstance(ppl, (int, float)) else ""
            elif r.status == "running":
                extra = f"on {r.host} pid {r.pid}"
            elif r.status == "failed":
                extra = _last_line(r.error)
            print(f"  {r.run_id} {r.status:8s} attempts {r.attempts} {extra}")
    return counts


def cmd_sweep(argv: list[str]) -> dict[str, Any]:
    """``dualsparse sweep ARGS``."""
    args = sweep_parser().parse_args(argv)
    return sweep_run(args) if args.action == "run" else sweep_status(args)


def cmd_report(argv: list[str]) -> Path:
    """``dualsparse report ARGS``: write the report; returns the path of ``report.md``."""
    args = report_parser().parse_args(argv)
    path, sweep, spec = _source(args)
    out = Path(args.out) if args.out else path.parent / "report"
    check_writable(out, "--out")
    notes = ""
    if args.notes:
        try:
            notes = Path(args.notes).read_text()
        except OSError as exc:
            raise ValueError(f"--notes {args.notes}: cannot read it ({exc.strerror or exc})"
                             ) from None
    records, counts = _runs_of(path, sweep, spec)
    done = [r for r in records if r.status == "done"]
    failed = [r for r in records if r.status == "failed"]
    description = spec.description if spec else ""
    if spec is None and sweep is not None:
        with ResultStore(path) as store:
            description = store.sweep_spec(sweep).get("description", "")
    title = args.title or f"Sweep report: {sweep or path.name}"
    report = write_report(done, out, title=title, description=description, counts=counts,
                          failed=failed, hardware=args.hardware, notes=notes)
    print(f"report written to {report} ({len(done)} finished runs)")
    return report


COMMANDS = {"sweep": cmd_sweep, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    """``python -m dualsparse.experiments {sweep,report} ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m dualsparse.experiments {sweep,report} ...", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, OSError) as exc:  # bad input or an OS error: one line, no traceback
        print(f"{argv[0]}: error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["COMMANDS", "cmd_report", "cmd_sweep", "main", "report_parser", "sweep_parser"]
