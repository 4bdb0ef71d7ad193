"""Tables and the markdown report, on synthetic records and on a tiny real toy sweep."""

import json

import pytest

from dualsparse.analysis import tables
from dualsparse.analysis.report import load_summary, write_report
from dualsparse.experiments.cli import main
from dualsparse.experiments.store import ResultStore


def _rec(model, target, seed, ppl, wd=0.0):
    return {"run_id": f"{model}{target}{seed}{wd}",
            "config": {"model": model, "prune_target": target, "seed": seed, "wdecay": wd},
            "metrics": {"test_ppl": ppl, "val_ppl": ppl + 1, "activity_sparsity": 0.5,
                        "weight_sparsity": target, "mac_reduction": 2.0 / (1 - target)}}


def test_best_per_sparsity_picks_lowest_mean_and_marks_the_winner():
    recs = [_rec("EGRU", 0.5, s, p, wd) for s, p, wd in
            ((1, 120, 0.0), (2, 124, 0.0), (1, 110, 0.1), (2, 116, 0.1))]
    recs += [_rec("LSTM", 0.5, s, p) for s, p in ((1, 111, ), (2, 112))]
    recs += [_rec("LSTM", 0.9, 1, 200.0)]
    rows = tables.best_per_sparsity(recs)
    assert [(r["sparsity"], r["model"]) for r in rows] == [(0.5, "EGRU"), (0.5, "LSTM"),
                                                            (0.9, "LSTM")]
    egru, lstm, lstm9 = rows
    assert egru["setting"] == {"wdecay": 0.1} and egru["test_ppl"][0] == pytest.approx(113.0)
    assert egru["n"] == 2 and egru["test_ppl"][1] == pytest.approx(18 ** 0.5)
    assert lstm["best"] and not egru["best"] and lstm9["best"]
    assert lstm9["n"] == 1 and lstm9["test_ppl"] == (200.0, 0.0)
    md = tables.best_table_markdown(rows)
    assert "| 0.5 | **LSTM** | 2 | 111.50 ± 0.71 |" in md
    assert "wdecay=0.1" in md
    assert len(tables.settings_table(recs)) == 4


def test_report_needs_perplexities(tmp_path):
    with pytest.raises(ValueError, match="no finished runs"):
        write_report([], tmp_path)
    with pytest.raises(ValueError, match="test_ppl"):
        write_report([{"config": {"i": 1}, "metrics": {"echo": 1}}], tmp_path)


def test_a_missing_perplexity_curve_says_why(tmp_path):
    # each setting (model, hidden size) sits at one sparsity target: no curve can be drawn,
    # although every run has both metrics, and the report says so
    recs = [_rec("LSTM", 0.0, 1, 140.0), _rec("LSTM", 0.75, 1, 120.0)]
    recs[1]["config"]["nhid"] = [384, 384]
    recs[0]["config"]["nhid"] = [192, 192]
    md = write_report(recs, tmp_path).read_text()
    assert md.count("Not drawn: no setting (model and other varied options) has runs at two "
                    "or more sparsity targets") == 2
    assert "no run has both metrics" not in md


TOY_SPEC = """name: tiny
run: toy
output: {out}
description: tiny toy sweep for the report test
base: {{emsize: 8, nhid: 12, steps: 15, train_tokens: 1500, test_tokens: 250, bptt: 10,
        batch_size: 8, prune_steps: 3, prune_target: 0.0, wdecay: 0.0}}
grid:
  - {{model: [EGRU, LSTM], prune_target: [0.0, 0.75]}}
  - {{model: [EGRU], prune_target: [0.75], prune_steps: [1, 3]}}
  - {{model: [EGRU], wdecay: [0.0, 0.5]}}
seeds: [0, 1]
"""


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    spec = root / "tiny.yaml"
    spec.write_text(TOY_SPEC.format(out=root / "out"))
    assert main(["sweep", "run", str(spec), "--quiet"]) == 0
    assert main(["report", str(spec), "--out", str(root / "report"),
                 "--hardware", "test machine"]) == 0
    return root


def test_tiny_sweep_report(tiny_sweep):
    report = tiny_sweep / "report"
    text = (report / "report.md").read_text()
    assert "# Sweep report: tiny" in text and "test machine" in text
    assert "runs by status: pending 0, running 0, done 12, failed 0" in text
    for name in ("fig_ppl_vs_reduction", "fig_tradeoff_map", "fig_weight_decay",
                 "fig_activity_hist", "fig_distance_hist", "fig_ppl_vs_prune_steps"):
        assert f"]({name}.png)" in text
        assert (report / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (report / f"{name}.pdf").stat().st_size > 1000
    summary = load_summary(report)
    with ResultStore(tiny_sweep / "out" / "results.sqlite") as store:
        recs = store.records("tiny", "done")
    # the plotted EGRU curve is the seed mean of the stored perplexities
    curve = summary["fig_ppl_vs_reduction"]["EGRU"]
    for target, y in zip(curve["sparsity"], curve["y"], strict=True):
        ppls = [r.metrics["test_ppl"] for r in recs if r.config["model"] == "EGRU"
                and r.config["prune_target"] == target and r.config["prune_steps"] == 3
                and r.config["wdecay"] == 0.0]
        assert len(ppls) == 2 and y == pytest.approx(sum(ppls) / 2)
    best = {(r["sparsity"], r["model"]): r for r in summary["best_per_sparsity"]}
    assert set(best) == {(0.0, "EGRU"), (0.0, "LSTM"), (0.75, "EGRU"), (0.75, "LSTM")}
    assert best[(0.75, "LSTM")]["weight_sparsity"][0] == pytest.approx(0.75, abs=0.01)
    steps = summary["fig_ppl_vs_prune_steps"]
    assert list(steps) == ["EGRU"] and steps["EGRU"]["steps"] == [1, 3]
    assert json.dumps(summary)  # plain JSON


def test_status_after_the_sweep(tiny_sweep, capsys):
    assert main(["sweep", "status", "--store", str(tiny_sweep / "out" / "results.sqlite"),
                 "--sweep", "tiny"]) == 0
    assert "done 12, failed 0" in capsys.readouterr().out
