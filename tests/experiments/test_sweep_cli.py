"""``python -m dualsparse.experiments sweep run|status`` and ``report``."""

import subprocess
import sys

import yaml

from dualsparse.experiments.cli import main
from dualsparse.experiments.store import ResultStore


def _spec(tmp_path, fail=False):
    grid = "grid:\n  - {i: [0, 1]}\n" + ("  - {i: [2], fail: [broken on purpose]}\n" if fail
                                         else "")
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: c\nrun: echo\noutput: {tmp_path / 'out'}\n{grid}")
    return path


def test_sweep_run_status_and_errors(tmp_path, capsys):
    spec = _spec(tmp_path, fail=True)
    assert main(["sweep", "run", str(spec), "--dry-run"]) == 0
    assert "3 runs, 3 new" in capsys.readouterr().out
    assert main(["sweep", "run", str(spec), "--quiet"]) == 1  # a run failed: not a success
    out, err = capsys.readouterr()
    assert "sweep now: pending 0, running 0, done 2, failed 1" in out
    assert "1 of 3 runs of this invocation failed" in err and "broken on purpose" in err
    assert main(["sweep", "status", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "done 2, failed 1" in out and "broken on purpose" in out
    store = str(tmp_path / "out" / "results.sqlite")
    assert main(["sweep", "status", "--store", store, "--runs"]) == 0
    assert capsys.readouterr().out.count(" done     attempts 1") == 2
    assert main(["sweep", "run", str(spec), "--dry-run"]) == 0
    assert "3 runs, 0 new" in capsys.readouterr().out
    assert main(["sweep", "status"]) == 1
    assert "either a sweep spec or --store" in capsys.readouterr().err
    assert main(["sweep", "status", "--store", str(tmp_path / "nope.sqlite")]) == 1
    assert main(["sweep", "run", str(tmp_path / "missing.yaml")]) == 1
    assert main(["report", str(spec)]) == 1  # echo runs have no perplexity to plot
    assert "no finished run has a 'test_ppl'" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    spec = _spec(tmp_path)
    res = subprocess.run([sys.executable, "-m", "dualsparse.experiments", "sweep", "run",
                          str(spec), "--workers", "2"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "done 2" in res.stdout
    with ResultStore(tmp_path / "out" / "results.sqlite") as store:
        assert store.counts("c")["done"] == 2
    bad = subprocess.run([sys.executable, "-m", "dualsparse.experiments", "frobnicate"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2


def test_sweep_run_fails_when_every_run_fails(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: f\nrun: echo\noutput: {tmp_path / 'out'}\n"
                    "grid:\n  fail: [one, two]\n")
    assert main(["sweep", "run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 of 2 runs of this invocation failed" in err


def test_bad_run_configs_are_refused_at_spec_load(tmp_path, capsys):
    def spec(run, base):
        path = tmp_path / f"spec{len(list(tmp_path.glob('spec*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump({"name": "v", "run": run, "output": str(tmp_path / "o"),
                                        "base": base}))
        return str(path)

    for argv, message in [
        (["sweep", "run", spec("toy", {"stpes": 5})], "unknown toy config keys ['stpes']"),
        (["sweep", "run", spec("toy", {"steps": -3})], "steps must be an int >= 1, got -3"),
        (["sweep", "run", spec("lm", {"nhdi": 5})], "unknown LM run config keys ['nhdi']"),
        (["sweep", "run", spec("lm", {"max_steps": -1})], "--max-steps must be an int >= 1"),
        (["sweep", "run", spec("nosuch", {})], "unknown run function 'nosuch'"),
        (["sweep", "run", spec("os:system", {})], "needs --allow-import"),
    ]:
        for extra in ([], ["--dry-run"]):
            assert main([*argv, *extra]) == 1, (argv, extra)
            assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.sqlite").exists()  # nothing was registered


def test_a_huge_grid_is_refused_before_it_is_built(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    grid = {f"k{i}": list(range(10)) for i in range(8)}  # 10**8 runs
    path.write_text(yaml.safe_dump({"name": "g", "run": "echo", "output": str(tmp_path / "o"),
                                    "grid": grid}))
    assert main(["sweep", "run", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "100,000,000 runs" in err and "--max-grid" in err


def test_a_spec_is_shown_by_its_runs_whoever_ran_them(tmp_path, capsys):
    """A copy of a spec under another name (to reorder or split the work) runs some of its
    runs into the same store: ``status SPEC`` shows exactly the spec's runs, found by id,
    and how many it has not started (no copy's extra runs, no silent 'pending 0')."""
    out = tmp_path / "out"
    full = tmp_path / "full.yaml"
    full.write_text(f"name: full\nrun: echo\noutput: {out}\ngrid:\n  - {{i: [0, 1, 2, 3]}}\n")
    assert main(["sweep", "status", str(full)]) == 0  # nothing run yet: no store needed
    assert "pending 0, running 0, done 0, failed 0, not started 4" in capsys.readouterr().out
    part = tmp_path / "part.yaml"
    part.write_text(f"name: part\nrun: echo\noutput: {out}\ngrid:\n  - {{i: [3, 1, 7]}}\n")
    assert main(["sweep", "run", str(part), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sweep", "status", str(full), "--runs"]) == 0
    text = capsys.readouterr().out
    assert "done 2, failed 0, not started 2" in text
    assert text.count(" done     attempts 1") == 2  # i = 1 and 3; i = 7 is not the spec's
    assert main(["sweep", "status", str(part)]) == 0
    assert "pending 0, running 0, done 3, failed 0\n" in capsys.readouterr().out
