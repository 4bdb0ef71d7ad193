"""Local runner: run functions, failures, several worker processes, toy runs end to end."""

import json
import os

import pytest

from dualsparse.experiments.runner import (
    WorkerOptions,
    resolve_run_function,
    run_dir_for,
    run_local,
    work,
)
from dualsparse.experiments.spec import SweepSpec
from dualsparse.experiments.store import ResultStore

TINY_TOY = {"emsize": 8, "nhid": 12, "steps": 12, "train_tokens": 1500, "test_tokens": 200,
            "bptt": 10, "batch_size": 8}


def _setup(tmp_path, run, base, grid, seeds=(), name="r"):
    spec = SweepSpec.from_dict({"name": name, "run": run, "output": str(tmp_path / "out"),
                                "base": base, "grid": grid, "seeds": list(seeds)})
    with ResultStore(spec.store_path) as store:
        store.add_sweep(spec.name, spec.to_dict(), spec.expand())
    return spec


def test_resolve_run_function():
    assert resolve_run_function("echo").__name__ == "run_echo"
    assert resolve_run_function("dualsparse.experiments.toy:run_toy").__name__ == "run_toy"
    for bad in ("nonsense", "no.such.module:f", "dualsparse.experiments.toy:missing"):
        with pytest.raises(ValueError, match="run function"):
            resolve_run_function(bad, allow_import=True)


def test_unregistered_run_functions_need_allow_import(tmp_path):
    """A spec's ``run: os:system`` would execute a shell command: refused by default, at
    resolution and again when a worker executes a stored run."""
    with pytest.raises(ValueError, match="not registered.*--allow-import"):
        resolve_run_function("os:system")
    assert resolve_run_function("os:getcwd", allow_import=True)() == os.getcwd()
    spec = _setup(tmp_path, "os:getpid", {}, [{"i": [0]}])
    counts = work(spec.store_path, spec.output, WorkerOptions(sweep="r", verbose=False))
    assert counts == {"done": 0, "failed": 1, "lost": 0}
    with ResultStore(spec.store_path) as store:
        assert "--allow-import" in store.records("r", "failed")[0].error


def test_worker_options_validation():
    with pytest.raises(ValueError, match="heartbeat_s < stale_after"):
        WorkerOptions(heartbeat_s=10, stale_after=5)
    with pytest.raises(ValueError, match="max_runs"):
        WorkerOptions(max_runs=0)


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path):
    spec = _setup(tmp_path, "echo", {}, [{"i": [0, 2]}, {"i": [1], "fail": ["on purpose"]}])
    counts = work(spec.store_path, spec.output, WorkerOptions(sweep="r", verbose=False))
    assert counts == {"done": 2, "failed": 1, "lost": 0}
    with ResultStore(spec.store_path) as store:
        failed = store.records("r", "failed")
        assert len(failed) == 1
        assert "RuntimeError: echo run asked to fail: 'on purpose'" in failed[0].error
        assert "Traceback" in failed[0].error
        done = store.records("r", "done")
        assert all(r.metrics["echo"] == r.config for r in done)
    # files written next to every run
    rid = done[0].run_id
    folder = run_dir_for(spec.output, rid)
    assert json.loads((folder / "config.json").read_text())["config"] == done[0].config
    assert json.loads((folder / "metrics.json").read_text())["echo"] == done[0].config
    # a second invocation repeats nothing; --retry-failed retries the failure only
    assert work(spec.store_path, spec.output, WorkerOptions(sweep="r", verbose=False))[
        "done"] == 0
    again = work(spec.store_path, spec.output,
                 WorkerOptions(sweep="r", retry_failed=True, max_attempts=2, verbose=False))
    assert again == {"done": 0, "failed": 1, "lost": 0}


def test_max_runs_stops_early(tmp_path):
    spec = _setup(tmp_path, "echo", {}, {"i": [0, 1, 2, 3]})
    assert work(spec.store_path, spec.output, WorkerOptions(max_runs=3, verbose=False))[
        "done"] == 3
    with ResultStore(spec.store_path) as store:
        assert store.counts() == {"pending": 1, "running": 0, "done": 3, "failed": 0}


def test_several_local_processes_run_everything_once(tmp_path):
    marks = tmp_path / "marks"
    spec = _setup(tmp_path, "echo", {"sleep_s": 0.05, "marker_dir": str(marks)},
                  {"i": list(range(12))})
    total = run_local(spec.store_path, spec.output, workers=3,
                      options=WorkerOptions(sweep="r", verbose=False))
    assert total["done"] == 12 and total["failed"] == 0 and total["crashed"] == 0
    assert len(list(marks.iterdir())) == 12
    with ResultStore(spec.store_path) as store:
        recs = store.records("r")
        assert all(r.status == "done" and r.attempts == 1 for r in recs)
        assert len({r.metrics["pid"] for r in recs}) >= 1
    with pytest.raises(ValueError, match="workers"):
        run_local(spec.store_path, spec.output, workers=0)


def test_toy_runs_produce_standard_metrics(tmp_path):
    spec = _setup(tmp_path, "toy", TINY_TOY,
                  {"model": ["EGRU", "LSTM"], "prune_target": [0.0, 0.75]}, seeds=[0])
    counts = work(spec.store_path, spec.output, WorkerOptions(sweep="r", verbose=False))
    assert counts["done"] == 4
    with ResultStore(spec.store_path) as store:
        recs = {(r.config["model"], r.config["prune_target"]): r for r in store.records("r")}
    for (model, target), r in recs.items():
        m = r.metrics
        assert m["test_ppl"] > 1.0
        assert m["weight_sparsity"] == pytest.approx(target, abs=0.01)
        assert m["dense_macs"] == pytest.approx(3 * 12 * (8 + 12) if model == "EGRU"
                                                else 4 * 12 * (8 + 12))
        assert m["mac_reduction"] == pytest.approx(m["dense_macs"] / m["effective_macs"])
        assert r.checkpoint and r.checkpoint.endswith("latest.json")
        layer = m["layers"][0]
        assert sum(layer["activity_histogram"]["counts"]) == 12  # one count per neuron
        if model == "EGRU":
            assert layer["distance_histogram"] is not None
            assert 0.0 < m["activity_sparsity"] < 1.0
        else:
            assert layer["distance_histogram"] is None and m["activity_sparsity"] == 0.0
    # pruning cuts MACs: with the same activity, 75 % fewer weights
    assert recs[("LSTM", 0.75)].metrics["mac_reduction"] == pytest.approx(4.0, rel=0.02)


def test_toy_task_implements_the_task_protocol():
    from dualsparse.experiments.toy import ToyTask, markov_stream
    from dualsparse.train.task import Task

    stream = markov_stream(16, 3, 400, seed=1)
    task = ToyTask(stream.view(40, 10), stream[:50], bptt=10)
    assert isinstance(task, Task) and task.steps_per_epoch == 3
    first = [task.next_batch()[0] for _ in range(3)]
    assert task.next_batch()[0].equal(first[0]) and task.epoch == 1  # wraps around


def test_toy_rejects_bad_config(tmp_path):
    from dualsparse.experiments.toy import run_toy
    with pytest.raises(ValueError, match="unknown toy config keys"):
        run_toy({"hidden": 3}, tmp_path)
    with pytest.raises(ValueError, match="prune_target"):
        run_toy({"prune_target": 1.0}, tmp_path)
    with pytest.raises(ValueError, match="EGRU, LSTM or GRU"):
        run_toy({**TINY_TOY, "model": "RNN"}, tmp_path)
    with pytest.raises(ValueError, match="prune_steps=9 rounds"):
        run_toy({**TINY_TOY, "prune_target": 0.5, "prune_steps": 9}, tmp_path)


def test_heartbeats_keep_a_long_run_from_being_taken_over(tmp_path):
    import threading
    import time

    spec = _setup(tmp_path, "echo", {"sleep_s": 1.5}, {"i": [0]})
    opts = WorkerOptions(sweep="r", heartbeat_s=0.1, stale_after=0.5, verbose=False)
    result = {}
    t = threading.Thread(target=lambda: result.update(work(spec.store_path, spec.output, opts)))
    t.start()
    time.sleep(1.0)  # longer than stale_after: only the heartbeats keep the claim alive
    with ResultStore(spec.store_path) as store:
        assert store.records("r")[0].status == "running"
        assert store.claim("intruder", "r", stale_after=0.5) is None
    t.join(timeout=30)
    assert result == {"done": 1, "failed": 0, "lost": 0}


def _sigint_default() -> None:
    """In the child before exec: SIGINT back to its default, so that Python installs its
    KeyboardInterrupt handler even when this test runs where SIGINT is ignored (a pytest
    started in the background with ``&`` passes SIG_IGN on to its children)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signame, workers", [("SIGINT", 1), ("SIGTERM", 1), ("SIGTERM", 2)])
def test_ctrl_c_gives_the_run_back(tmp_path, signame, workers):
    """Ctrl-C, and ``kill`` (SIGTERM, passed on to the worker processes), give the run back."""
    import os
    import signal
    import subprocess
    import sys
    import time

    gate = tmp_path / "never"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"name: c\nrun: echo\noutput: {tmp_path / 'out'}\n"
                         f"base: {{wait_for: {gate}}}\ngrid: {{i: [0]}}\n")
    with open(tmp_path / "stdout.txt", "wb") as out, open(tmp_path / "stderr.txt", "wb") as err:
        # own session: a Ctrl-C typed at the terminal running pytest does not reach it
        proc = subprocess.Popen([sys.executable, "-m", "dualsparse.experiments", "sweep", "run",
                                 str(spec_file), "--workers", str(workers)], stdout=out, stderr=err,
                                preexec_fn=_sigint_default, start_new_session=True)
    try:
        store_path = tmp_path / "out" / "results.sqlite"
        deadline, status = time.time() + 120, None
        while time.time() < deadline and status != "running" and proc.poll() is None:
            time.sleep(0.2)
            if store_path.exists():
                with ResultStore(store_path) as store:
                    recs = store.records()
                    status = recs[0].status if recs else None
        assert status == "running", (tmp_path / "stderr.txt").read_text()[-2000:]
        os.kill(proc.pid, getattr(signal, signame))
        proc.wait(timeout=60)
        with ResultStore(store_path) as store:
            rec = store.records()[0]
            assert rec.status == "pending" and rec.attempts == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_a_signal_during_a_claim_waits_until_the_claim_has_returned():
    """SIGTERM inside signals_deferred() (as around store.claim) is handled at its end, so
    the worker has the claimed record in hand to give it back."""
    import signal
    import threading
    import time

    from dualsparse.experiments.runner import signals_deferred, sigterm_as_exit

    # another thread, as torch's and the heartbeat's: the kernel may hand it the signal
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    reached = []
    try:
        with pytest.raises(SystemExit), sigterm_as_exit():
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # time for the signal to arrive
                reached.append("inside")  # the signal is held: the block runs to its end
            reached.append("after")  # not reached: SystemExit as the block ends
    finally:
        done.set()
        other.join()
    assert reached == ["inside"]
