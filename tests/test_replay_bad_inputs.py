"""scripts/replay_bad_inputs.py: its cases are well formed, and a few of them, replayed, end
in one clear error line (nonzero status, no traceback) that names what was wrong."""

from __future__ import annotations

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replay_bad_inputs.py"


def _load():
    spec = importlib.util.spec_from_file_location("replay_bad_inputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_cases_are_unique_and_cover_every_command(capsys):
    r = _load()
    names = [c.name for c in r.CASES]
    assert len(names) == len(set(names))
    assert {c.argv[0] for c in r.CASES if c.argv} >= {"train", "eval", "prune", "sweep", "report"}
    assert r.main(["--list", "--only", "eval-"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed and all(line.startswith("eval-") for line in listed)
    with pytest.raises(SystemExit):
        r.main(["--only", "no-such-case"])


def test_a_few_bad_inputs_end_in_one_clear_line():
    r = _load()
    expect = {"eval-corrupt-pointer": "best.json is not valid JSON",
              "sweep-unknown-key": "unknown sweep spec keys ['frobnicate']",
              "report-no-argument": "give either a sweep spec or --store"}
    cases = [c for c in r.CASES if c.name in expect]
    with ThreadPoolExecutor(len(cases)) as pool:
        outcomes = list(pool.map(lambda c: r.replay(c, 300, None), cases))
    for o in outcomes:
        assert o.returncode == 1 and not o.traceback and not o.marked, o.format()
        assert o.last_line.startswith(f"dualsparse {o.case.argv[0]}: error:"), o.format()
        assert expect[o.case.name] in o.last_line, o.format()
