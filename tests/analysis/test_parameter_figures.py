"""Weight and bias distribution figure: counts pooled over seeds, one curve per setting."""

import pytest

from dualsparse.analysis.parameter_figures import parameter_distributions


def _hist(counts, lo, hi):
    n = len(counts)
    return {"counts": counts, "edges": [lo + (hi - lo) * i / n for i in range(n + 1)]}


def _record(wd, seed, weights, biases, layers=2):
    return {"run_id": f"{wd}-{seed}", "config": {"model": "EGRU", "wdecay": wd, "seed": seed},
            "metrics": {"test_ppl": 100.0, "parameter_histograms": [
                {"layer": k, "weights": _hist(weights, -1.0, 1.0),
                 "biases": None if biases is None else _hist(biases, -0.5, 0.5),
                 "zeros": 0, "weight_count": sum(weights)} for k in range(layers)]}}


def test_seeds_pool_into_one_curve_per_setting(tmp_path):
    recs = [_record(0.0, 1, [1, 3, 0, 0], [2, 2]), _record(0.0, 2, [3, 1, 0, 0], [0, 4]),
            _record(1.0, 1, [0, 0, 0, 4], None), {"run_id": "x", "config": {}, "metrics": {
                "test_ppl": 1.0}}]  # no histograms: left out
    out = parameter_distributions(recs, tmp_path / "dist")
    assert set(out) == {"wdecay=0.0", "wdecay=1.0"}
    layer = out["wdecay=0.0"][1]
    assert layer["weights"]["fraction"] == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert layer["biases"]["fraction"] == pytest.approx([0.25, 0.75])
    assert layer["weights"]["edges"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert out["wdecay=1.0"][0]["biases"] is None
    assert (tmp_path / "dist.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "dist.pdf").stat().st_size > 1000


def test_runs_that_cannot_be_pooled_and_runs_without_histograms(tmp_path):
    assert parameter_distributions([{"run_id": "x", "config": {}, "metrics": {
        "test_ppl": 1.0}}], tmp_path / "none") is None
    assert not (tmp_path / "none.png").exists()
    other_bins = _record(0.0, 2, [1, 1, 1, 1, 1, 1], [1, 1])
    with pytest.raises(ValueError, match="different weights bins"):
        parameter_distributions([_record(0.0, 1, [1, 1, 1, 1], [1, 1]), other_bins],
                                tmp_path / "bad", by=["wdecay"])
    with pytest.raises(ValueError, match="different layer counts"):
        parameter_distributions([_record(0.0, 1, [1, 1, 1, 1], [1, 1]),
                                 _record(0.0, 2, [1, 1, 1, 1], [1, 1], layers=3)],
                                tmp_path / "bad", by=["wdecay"])
