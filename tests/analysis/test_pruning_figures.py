"""Pruning figures: the drawn data equal the inputs (synthetic histories and masks), files are
written, and a saved pruned LM checkpoint is read back (history, per-gate report, fan-out)."""

import warnings

import pytest
import torch

from dualsparse.analysis import pruning_figures as pf
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.sparsity import AGPSchedule, NarangSchedule, Pruner, PruningSpec
from dualsparse.sparsity.report import tensor_report
from dualsparse.train.checkpoint import save_model

PNG = b"\x89PNG\r\n\x1a\n"


def _written(path):
    return path.with_suffix(".png").read_bytes()[:8] == PNG and path.with_suffix(".pdf").is_file()


def test_sparsity_vs_step_draws_histories_and_planned_agp(tmp_path):
    agp = AGPSchedule(0, 40, 10).to_dict()
    runs = {
        "agp": {"history": [{"step": s, "sparsity": 0.9 * (1 - (1 - s / 40) ** 3)}
                            for s in (0, 10, 20, 30, 40)], "schedule": agp, "target": 0.9},
        "narang": {"history": [{"step": 10, "sparsity": 0.2}, {"step": 20, "sparsity": 0.55}],
                   "schedule": NarangSchedule(0, 10, 30, 5, warn=False).to_dict(),
                   "target": 0.9},
        "dense": {"history": []},
    }
    drawn = pf.sparsity_vs_step(runs, tmp_path / "svs")
    assert set(drawn) == {"agp", "narang"}  # a run without updates draws nothing
    assert drawn["narang"] == {"steps": [10, 20], "sparsity": [0.2, 0.55], "planned": []}
    planned = drawn["agp"]["planned"]
    assert [s for s, _ in planned] == [0, 10, 20, 30, 40] and planned[-1][1] == 0.9
    assert [v for _, v in planned] == pytest.approx(drawn["agp"]["sparsity"])
    assert _written(tmp_path / "svs")
    assert pf.sparsity_vs_step({"dense": {"history": []}}, tmp_path / "none") is None
    assert not (tmp_path / "none.png").exists()


def test_gate_bars_and_fanout_histograms_from_report_rows(tmp_path):
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[0:2] = False           # gate r fully pruned
    mask[2:4, :2] = False       # gate z half pruned
    mask[:, 3] = False          # column 3: no output connections at all
    row = tensor_report("rnns.0.weight_hh_l0", mask, (1, 1),
                        (("r", 0, 2), ("z", 2, 4), ("g", 4, 6)), bins=3)
    bars = pf.sparsity_by_gate([row], tmp_path / "gates")
    assert bars == {"rnns.0.weight_hh_l0": {"r": 1.0, "z": pytest.approx(3 / 4),
                                            "g": pytest.approx(1 / 4)}}
    hist = pf.fanout_histograms([row], tmp_path / "fan")
    # fan-outs per column: 2, 2, 4, 0 over edges 0, 2, 4, 6
    assert hist["rnns.0.weight_hh_l0"] == {"edges": [0, 2, 4, 6], "counts": [1, 2, 1]}
    assert _written(tmp_path / "gates") and _written(tmp_path / "fan")
    assert pf.sparsity_by_gate([], tmp_path / "x") is None


def _pruned_lm(folder, finalize=False):
    torch.manual_seed(0)
    model = RNNLanguageModel(30, 8, [8, 8], cell="egru")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruner = Pruner(model, PruningSpec(["*weight_hh_l*"], sparsity=0.8),
                        NarangSchedule(0, 10, 30, 5), q_percentile=80)
    for step in range(30):
        pruner.step(step)
    history = pruner.history
    report = pruner.report(20)
    if finalize:
        pruner.finalize()
    save_model(folder, model, None if finalize else pruner, tag="best")
    return history, report


def test_load_pruning_reads_history_and_report_of_a_saved_checkpoint(tmp_path):
    history, report = _pruned_lm(tmp_path / "run")
    loaded = pf.load_pruning(tmp_path / "run")
    assert loaded["history"] == history and len(history) == 5  # updates at 5, ..., 25
    assert loaded["report"] == report and loaded["schedule"]["type"] == "narang"
    drawn = pf.draw_all([tmp_path / "run"], tmp_path / "figs")
    assert drawn["sparsity_vs_step"]["run"]["sparsity"] == [h["sparsity"] for h in history]
    assert _written(tmp_path / "figs" / "run_fanout")
    pf.main([str(tmp_path / "run"), "--out", str(tmp_path / "cli")])
    assert _written(tmp_path / "cli" / "sparsity_vs_step")


def test_finalized_checkpoint_report_comes_from_the_zero_pattern(tmp_path):
    _, report = _pruned_lm(tmp_path / "fin", finalize=True)
    loaded = pf.load_pruning(tmp_path / "fin")
    assert loaded["history"] == []
    by_name = {r["name"]: r for r in loaded["report"]}
    for r in report:  # same sparsity per gate as the masks had
        assert by_name[r["name"]]["gate_sparsity"] == pytest.approx(r["gate_sparsity"])
    assert any(r["sparsity"] == 0.0 for r in loaded["report"])  # weight_ih was not pruned
