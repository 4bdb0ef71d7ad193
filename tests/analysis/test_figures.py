"""Figures: the plotted data equal the seed means/stds of the records; files are written."""

import math

import pytest

from dualsparse.analysis import figures
from dualsparse.analysis.records import Run, aggregate, as_runs, mean_std, varying_keys

PNG = b"\x89PNG\r\n\x1a\n"


def _hist(counts, lo=0.0, hi=1.0):
    n = len(counts)
    return {"counts": counts, "edges": [lo + (hi - lo) * i / n for i in range(n + 1)]}


def _record(model, target, seed, ppl, red, act, steps=3, wd=0.0, wdb=0.0):
    return {"run_id": f"{model}-{target}-{seed}-{steps}-{wd}-{wdb}",
            "config": {"model": model, "prune_target": target, "seed": seed,
                       "prune_steps": steps, "wdecay": wd, "wdecay_bias": wdb},
            "metrics": {"test_ppl": ppl, "mac_reduction": red, "activity_sparsity": act,
                        "weight_sparsity": target, "effective_macs": 1000.0 / red,
                        "layers": [{"activity_histogram": _hist([seed + 1, 1, 0, 0]),
                                    "distance_histogram": (_hist([1, seed, 2, 0], -2, 2)
                                                           if model == "EGRU" else None),
                                    "carried_distance_histogram": (
                                        _hist([seed, 1, 1, 0], -2, 2)
                                        if model == "EGRU" else None)}]}}


@pytest.fixture
def records():
    out = []
    for model, act in (("EGRU", 0.8), ("LSTM", 0.0)):
        for target, base in ((0.0, 100.0), (0.5, 110.0), (0.9, 150.0)):
            for seed, delta in ((1, -2.0), (2, 2.0)):
                red = 1 / ((1 - act) * (1 - target)) if act < 1 else 1.0
                out.append(_record(model, target, seed, base + delta + (10 if model == "EGRU"
                                                                        else 0), red + seed,
                                   act))
    return out


def test_records_helpers(records):
    runs = as_runs(records)
    assert varying_keys(runs, ignore=["seed"]) == ["model", "prune_target"]
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert mean_std([5]) == (5.0, 0.0, 1)
    assert math.isnan(mean_std([None, float("nan")])[0])
    pts = aggregate(runs, ["model", "prune_target"], ["test_ppl"])
    assert len(pts) == 6 and pts[0].key == ("EGRU", 0.0) and pts[0].n == 2
    assert pts[0].values["test_ppl"] == (110.0, pytest.approx(math.sqrt(8)))
    assert as_runs([{"config": {}, "metrics": None}]) == []
    # stores written before the rename: prune_steps reads as prune_rounds
    assert as_runs([{"config": {"prune_steps": 3}, "metrics": {}}])[0].get("prune_rounds") == 3
    with pytest.raises(ValueError, match="must be dicts"):
        as_runs([{"config": [], "metrics": {}}])


def test_ppl_vs_reduction_data_and_files(records, tmp_path):
    curves = figures.ppl_vs_reduction(records, tmp_path / "f1")
    assert set(curves) == {"EGRU", "LSTM"}
    egru = curves["EGRU"]
    assert egru["sparsity"] == [0.0, 0.5, 0.9]
    assert egru["y"] == pytest.approx([110.0, 120.0, 160.0])
    assert egru["yerr"] == pytest.approx([math.sqrt(8)] * 3)
    assert egru["x"] == pytest.approx([5.0 + 1.5, 10.0 + 1.5, 50.0 + 1.5])
    assert egru["xerr"] == pytest.approx([math.sqrt(0.5)] * 3)
    assert curves["LSTM"]["y"] == pytest.approx([100.0, 110.0, 150.0])
    for fmt in ("png", "pdf"):
        data = (tmp_path / f"f1.{fmt}").read_bytes()
        assert len(data) > 1000
    assert (tmp_path / "f1.png").read_bytes().startswith(PNG)
    assert (tmp_path / "f1.pdf").read_bytes().startswith(b"%PDF")
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_ppl_vs_reduction_on_the_papers_axis(records, tmp_path):
    """``reduction="ideal_reduction"`` plots lambda_a x lambda_w, not the measured count."""
    for r in records:
        act, w = r["metrics"]["activity_sparsity"], r["metrics"]["weight_sparsity"]
        r["metrics"]["ideal_reduction"] = 1 / ((1 - act) * (1 - w))
    curves = figures.ppl_vs_reduction(records, tmp_path / "f2", reduction="ideal_reduction")
    assert curves["EGRU"]["x"] == pytest.approx([5.0, 10.0, 50.0])  # seeds agree: no +1.5
    assert curves["LSTM"]["x"] == pytest.approx([1.0, 2.0, 10.0])
    assert (tmp_path / "f2.png").read_bytes().startswith(PNG)


def test_tradeoff_map(records, tmp_path):
    panels = figures.tradeoff_map(records, tmp_path / "map")
    assert set(panels) == {"EGRU", "LSTM"}
    assert panels["EGRU"]["weight_sparsity"] == pytest.approx([0.0, 0.5, 0.9])
    assert panels["EGRU"]["activity_sparsity"] == pytest.approx([0.8] * 3)
    assert panels["LSTM"]["ppl"] == pytest.approx([100.0, 110.0, 150.0])
    assert panels["LSTM"]["effective_macs"][0] == pytest.approx(
        (1000 / 2 + 1000 / 3) / 2)
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_weight_decay_and_steps_need_varying_keys(records, tmp_path):
    assert figures.weight_decay_effect(records, tmp_path / "wd") is None
    assert figures.ppl_vs_prune_steps(records, tmp_path / "st") is None
    assert not (tmp_path / "wd.png").exists() and not (tmp_path / "st.png").exists()
    extra = [_record("EGRU", 0.0, s, 100 + 10 * wd + s, 5.0, 0.5 + wd, wd=wd, wdb=wdb)
             for wd in (0.0, 0.1, 1.0) for wdb in (0.0, 1.0) for s in (1, 2)]
    out = figures.weight_decay_effect(extra, tmp_path / "wd")
    assert set(out) == {"wdecay", "wdecay_bias"}
    series = out["wdecay"]["EGRU, wdecay_bias=0.0"]
    assert series["x"] == [0.0, 0.1, 1.0]
    assert series["test_ppl"] == pytest.approx([101.5, 102.5, 111.5])
    assert series["activity_sparsity"] == pytest.approx([0.5, 0.6, 1.5])
    assert out["wdecay_bias"]["EGRU, wdecay=1.0"]["x"] == [0.0, 1.0]
    steps = [_record(m, t, s, 100 + n + s, 5.0, 0.5, steps=n)
             for m in ("EGRU", "LSTM") for t in (0.8, 0.9) for n in (1, 3, 6) for s in (1, 2)]
    steps.append(_record("EGRU", 0.0, 1, 90.0, 2.0, 0.5, steps=1))  # dense: left out
    curves = figures.ppl_vs_prune_steps(steps, tmp_path / "st")
    assert set(curves) == {"EGRU, prune_target=0.8", "EGRU, prune_target=0.9",
                           "LSTM, prune_target=0.8", "LSTM, prune_target=0.9"}
    assert curves["LSTM, prune_target=0.9"]["steps"] == [1, 3, 6]
    assert curves["LSTM, prune_target=0.9"]["y"] == pytest.approx([102.5, 104.5, 107.5])
    assert (tmp_path / "st.pdf").exists()


def test_histograms_pool_seeds(records, tmp_path):
    act = figures.activity_histograms(records, tmp_path / "ha")
    # seeds 1 and 2 pooled: counts [2,1,0,0] + [3,1,0,0] = [5,2,0,0] -> fractions of 7
    (layer,) = act["EGRU, prune_target=0.5"]
    assert layer["fraction"] == pytest.approx([5 / 7, 2 / 7, 0, 0])
    assert layer["edges"] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    dist = figures.distance_histograms(records, tmp_path / "hd")
    assert all(k.startswith("EGRU") for k in dist)  # LSTM has no c - theta
    assert dist["EGRU, prune_target=0.0"][0]["fraction"] == pytest.approx(
        [2 / 9, 3 / 9, 4 / 9, 0])
    carried = figures.distance_histograms(records, tmp_path / "hc", state="carried")
    # seeds 1 and 2 pooled: [1,1,1,0] + [2,1,1,0] = [3,2,2,0] -> fractions of 7
    assert carried["EGRU, prune_target=0.0"][0]["fraction"] == pytest.approx(
        [3 / 7, 2 / 7, 2 / 7, 0])
    with pytest.raises(ValueError, match="state"):
        figures.distance_histograms(records, tmp_path / "hx", state="post")
    only_lstm = [r for r in records if r["config"]["model"] == "LSTM"]
    assert figures.distance_histograms(only_lstm, tmp_path / "none") is None
    bad = [records[0], {**records[1], "metrics": {**records[1]["metrics"], "layers": [
        {"activity_histogram": _hist([1, 2, 3]), "distance_histogram": None}]}}]
    with pytest.raises(ValueError, match="cannot be pooled"):
        figures.activity_histograms(bad, tmp_path / "bad")


def test_runs_without_metrics_give_no_figure(tmp_path):
    assert figures.ppl_vs_reduction([Run("a", {"model": "EGRU"}, {})], tmp_path / "x") is None
    assert figures.tradeoff_map([], tmp_path / "y") is None
