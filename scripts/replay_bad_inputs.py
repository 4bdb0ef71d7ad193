#!/usr/bin/env python3
"""Replay bad inputs to the ``dualsparse`` command and show every answer at once.

Each case runs ``python -m dualsparse ...`` as a subprocess, in a fresh temporary folder
(cwd), with a timeout, with ``DUALSPARSE_DATA`` and ``DUALSPARSE_CACHE`` pointing at empty
folders and ``DUALSPARSE_DATA_URL`` at a mirror that does not exist (so that a case that is
wrongly accepted fails on missing data instead of downloading a corpus or training). For each
case it prints the exit status and the last line of stderr (preceded by the ``error:`` line
when that is not the last one); a traceback, a timeout or an exit status of 0 is marked,
since a bad input should end in one clear line.

Usage::

    python scripts/replay_bad_inputs.py                 # all cases
    python scripts/replay_bad_inputs.py --only eval     # cases whose name contains "eval"
    python scripts/replay_bad_inputs.py --list          # names only
    python scripts/replay_bad_inputs.py --check         # exit 1 if any case is marked

Run it from the repository root (or with the package installed); the case files (a corrupt
checkpoint, a bad sweep spec, an existing run folder, ...) are made in the temporary folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

Setup = Callable[[Path], None]


def _corrupt_run(d: Path) -> None:
    """A run folder whose checkpoint pointers are not JSON."""
    (d / "run").mkdir()
    for tag in ("best", "latest"):
        (d / "run" / f"{tag}.json").write_text("{not json")


def _foreign_run(d: Path) -> None:
    """A run folder whose pointers are JSON, but not a dualsparse checkpoint."""
    (d / "run").mkdir()
    for tag in ("best", "latest"):
        (d / "run" / f"{tag}.json").write_text('{"format": "something-else"}')


def _existing_run(d: Path) -> None:
    """A folder that already holds a run (must not be overwritten)."""
    (d / "run").mkdir()
    (d / "run" / "latest.json").write_text("{}")
    (d / "run" / "metrics.csv").write_text("step,loss\n")


def _empty_dir(d: Path) -> None:
    (d / "empty").mkdir()


def _spec(text: str) -> Setup:
    def make(d: Path) -> None:
        (d / "spec.yaml").write_text(text)
    return make


def _not_a_store(d: Path) -> None:
    (d / "results.sqlite").write_text("this is not a database")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    setup: Setup | None = None


CASES: list[Case] = [
    # ---------------------------------------------------------------------- top level
    Case("no-command", ()),
    Case("unknown-command", ("frobnicate",)),
    # ---------------------------------------------------------------------------- train
    Case("train-negative-lr", ("train", "--lr", "-1", "--max-steps", "1")),
    Case("train-nan-lr", ("train", "--lr", "nan", "--max-steps", "1")),
    Case("train-zero-steps", ("train", "--max-steps", "0")),
    Case("train-bad-hidden-sizes", ("train", "--hidden-sizes", "10,abc")),
    Case("train-negative-hidden", ("train", "--hidden-sizes", "-4", "--max-steps", "1")),
    Case("train-dropout-above-1", ("train", "--dropout", "1.5", "--max-steps", "1")),
    Case("train-zero-batch", ("train", "--batch-size", "0", "--max-steps", "1")),
    Case("train-zero-bptt", ("train", "--bptt", "0", "--max-steps", "1")),
    Case("train-unknown-cell", ("train", "--cell", "transformer")),
    Case("train-unknown-preset", ("train", "--preset", "nosuch")),
    Case("train-unknown-corpus", ("train", "--corpus", "nosuch", "--max-steps", "1")),
    Case("train-missing-data", ("train", "--max-steps", "1", "--save", "")),
    Case("train-data-dir-missing", ("train", "--data-dir", "no/such/dir", "--max-steps", "1")),
    Case("train-prune-target-1", ("train", "--prune-method", "magnitude", "--prune-target",
                                  "1.0", "--max-steps", "1")),
    Case("train-bad-prune-block", ("train", "--prune-block", "3x", "--max-steps", "1")),
    Case("train-existing-save", ("train", "--max-steps", "1", "--save", "run"), _existing_run),
    Case("train-resume-empty", ("train", "--max-steps", "1", "--save", "empty", "--resume"),
         _empty_dir),
    Case("train-unknown-flag", ("train", "--learning-rate", "0.1")),
    Case("train-kws-bad-bits", ("train", "--task", "kws", "--bits", "9")),
    Case("train-kws-bad-hidden", ("train", "--task", "kws", "--hidden", "32,x")),
    Case("train-kws-missing-data", ("train", "--task", "kws", "--epochs", "1")),
    # ----------------------------------------------------------------------------- eval
    Case("eval-missing-checkpoint", ("eval", "--checkpoint", "no/such/run")),
    Case("eval-empty-folder", ("eval", "--checkpoint", "empty"), _empty_dir),
    Case("eval-corrupt-pointer", ("eval", "--checkpoint", "run"), _corrupt_run),
    Case("eval-foreign-pointer", ("eval", "--checkpoint", "run"), _foreign_run),
    Case("eval-unknown-engine", ("eval", "--checkpoint", "run", "--engine", "gpu")),
    Case("eval-unknown-device", ("eval", "--checkpoint", "run", "--device", "tpu")),
    Case("eval-sparse-on-cuda", ("eval", "--checkpoint", "run", "--engine", "sparse",
                                 "--device", "cuda")),
    Case("eval-zero-batch", ("eval", "--checkpoint", "run", "--batch-size", "0"), _corrupt_run),
    Case("eval-no-checkpoint-flag", ("eval",)),
    # ---------------------------------------------------------------------------- prune
    Case("prune-missing-checkpoint", ("prune", "--checkpoint", "no/such/run")),
    Case("prune-corrupt-pointer", ("prune", "--checkpoint", "run"), _corrupt_run),
    Case("prune-target-above-1", ("prune", "--checkpoint", "run", "--prune-target", "1.5"),
         _corrupt_run),
    Case("prune-bad-block", ("prune", "--checkpoint", "run", "--prune-block", "0x4"),
         _corrupt_run),
    Case("prune-negative-fine-tune", ("prune", "--checkpoint", "run", "--fine-tune-steps",
                                      "-3"), _corrupt_run),
    Case("prune-save-over-run", ("prune", "--checkpoint", "run", "--save", "run"),
         _existing_run),
    # ---------------------------------------------------------------------------- sweep
    Case("sweep-missing-spec", ("sweep", "run", "no/such/spec.yaml")),
    Case("sweep-bad-yaml", ("sweep", "run", "spec.yaml"), _spec("name: [unclosed\n")),
    Case("sweep-spec-not-a-mapping", ("sweep", "run", "spec.yaml"), _spec("- 1\n- 2\n")),
    Case("sweep-no-output", ("sweep", "run", "spec.yaml"),
         _spec("name: s\nrun: echo\ngrid: {i: [0]}\n")),
    Case("sweep-unknown-key", ("sweep", "run", "spec.yaml"),
         _spec("name: s\nrun: echo\noutput: out\ngrid: {i: [0]}\nfrobnicate: 1\n")),
    Case("sweep-unknown-run-function", ("sweep", "run", "spec.yaml"),
         _spec("name: s\nrun: no.such.module:f\noutput: out\ngrid: {i: [0]}\n")),
    Case("sweep-empty-grid-axis", ("sweep", "run", "spec.yaml"),
         _spec("name: s\nrun: echo\noutput: out\ngrid: {i: []}\n")),
    Case("sweep-zero-workers", ("sweep", "run", "spec.yaml", "--workers", "0"),
         _spec("name: s\nrun: echo\noutput: out\ngrid: {i: [0]}\n")),
    Case("sweep-bad-toy-config", ("sweep", "run", "spec.yaml"),
         _spec("name: s\nrun: toy\noutput: out\ngrid: {nhid: [0]}\n")),
    Case("sweep-status-missing-store", ("sweep", "status", "--store", "no/such.sqlite")),
    Case("sweep-status-not-a-store", ("sweep", "status", "--store", "results.sqlite"),
         _not_a_store),
    Case("sweep-unknown-subcommand", ("sweep", "frobnicate")),
    # --------------------------------------------------------------------------- report
    Case("report-missing-store", ("report", "no/such.sqlite")),
    Case("report-store-as-spec", ("report", "results.sqlite"), _not_a_store),
    Case("report-not-a-store", ("report", "--store", "results.sqlite"), _not_a_store),
    Case("report-no-argument", ("report",)),
]


@dataclass
class Outcome:
    case: Case
    returncode: int | None  # None: timed out
    last_line: str
    traceback: bool

    @property
    def marked(self) -> bool:
        """A bad input must end with a nonzero status and one clear line, in time."""
        return self.returncode in (None, 0) or self.traceback

    def format(self) -> str:
        rc = "TIMEOUT" if self.returncode is None else f"rc={self.returncode}"
        flags = " TRACEBACK" if self.traceback else ""
        flags += " ACCEPTED" if self.returncode == 0 else ""
        mark = "!!" if self.marked else "  "
        return f"{mark} {rc:<8}{flags} {self.case.name:<28} | {self.last_line}"


def replay(case: Case, timeout: float, data_dir: str | None) -> Outcome:
    """Run one case in its own temporary folder and collect its answer."""
    with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
        d = Path(tmp)
        if case.setup is not None:
            case.setup(d)
        env = {**os.environ, "DUALSPARSE_DATA": data_dir or str(d / "no-data"),
               "DUALSPARSE_CACHE": str(d / "cache"), "PYTHONWARNINGS": "ignore"}
        if data_dir is None:
            env["DUALSPARSE_DATA_URL"] = (d / "no-mirror").as_uri()
        src = Path(__file__).resolve().parents[1] / "src"
        if src.is_dir():  # this checkout's code, not another installed copy
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src),
                                                              env.get("PYTHONPATH")]))
        try:
            r = subprocess.run([sys.executable, "-m", "dualsparse", *case.argv], cwd=d, env=env,
                               capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else \
                (exc.stderr or "")
            lines = [ln for ln in err.splitlines() if ln.strip()]
            return Outcome(case, None, lines[-1] if lines else "", "Traceback" in err)
    lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
    shown = lines[-1] if lines else "(no stderr)"
    errors = [ln for ln in lines if ": error:" in ln]
    if errors and errors[-1] != shown:  # a message over several lines: show where it starts
        shown = f"{errors[-1]} ... {shown}"
    return Outcome(case, r.returncode, shown, "Traceback (most recent call last)" in r.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[],
                   help="run the cases whose name contains this (repeatable)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    p.add_argument("--jobs", type=int, default=2, help="cases run at the same time")
    p.add_argument("--data", default=None,
                   help="DUALSPARSE_DATA for the cases (default: an empty folder)")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if a case timed out, printed a traceback or exited with 0")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.timeout <= 0:
        p.error(f"--timeout must be > 0, got {args.timeout}")
    cases = [c for c in CASES if not args.only or any(s in c.name for s in args.only)]
    if not cases:
        p.error(f"no case matches --only {args.only}")
    if args.list:
        for c in cases:
            print(f"{c.name:<28} dualsparse {' '.join(c.argv)}")
        return 0
    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(lambda c: replay(c, args.timeout, args.data), cases))
    for o in outcomes:
        print(o.format())
    marked = [o for o in outcomes if o.marked]
    print(f"\n{len(outcomes)} cases, {len(marked)} marked (!!: timeout, traceback or exit 0)")
    return 1 if args.check and marked else 0


if __name__ == "__main__":
    sys.exit(main())
