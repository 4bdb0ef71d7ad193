"""Ray backend on a local Ray instance started by the test (about 10 s to start).

The ``echo`` run function keeps the Ray workers light (no torch import); the backend does
not depend on what the run function computes.
"""

import pytest

from dualsparse.experiments.runner import WorkerOptions
from dualsparse.experiments.spec import SweepSpec
from dualsparse.experiments.store import ResultStore

ray = pytest.importorskip("ray")


def test_ray_backend_runs_tasks_and_the_driver_stores_results(tmp_path):
    from dualsparse.experiments.ray_backend import run_ray

    out = tmp_path / "out"
    marks = tmp_path / "marks"
    ok = SweepSpec.from_dict({"name": "ok", "run": "echo", "output": str(out),
                              "base": {"marker_dir": str(marks)}, "grid": {"i": [0, 1]}})
    bad = SweepSpec.from_dict({"name": "bad", "run": "echo", "output": str(out),
                               "grid": {"fail": ["raised in a Ray task"]}})
    with ResultStore(ok.store_path) as store:
        store.add_sweep("ok", ok.to_dict(), ok.expand())
        store.add_sweep("bad", bad.to_dict(), bad.expand())
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        counts = run_ray(ok.store_path, out, options=WorkerOptions(heartbeat_s=1.0,
                                                                   verbose=False))
        assert ray.is_initialized()  # an instance it did not start is left running
    finally:
        ray.shutdown()
    assert counts == {"done": 2, "failed": 1, "lost": 0}
    assert len(list(marks.iterdir())) == 2  # each run executed once
    with ResultStore(ok.store_path) as store:
        done = store.records("ok")
        assert [r.status for r in done] == ["done", "done"]
        assert [r.attempts for r in done] == [1, 1]
        assert [r.metrics["echo"]["i"] for r in done] == [0, 1]
        assert all(r.metrics["run_dir"].endswith(r.run_id) for r in done)
        (failed,) = store.records("bad")
        assert failed.status == "failed"
        assert "raised in a Ray task" in failed.error
