"""``python -m dualsparse.experiments sweep run|status`` and ``report``."""

import subprocess
import sys

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
    assert main(["sweep", "run", str(spec), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sweep now: pending 0, running 0, done 2, failed 1" in out
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
