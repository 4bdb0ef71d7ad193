"""Sweep specs: grid expansion, stable run ids, validation, YAML/JSON loading."""

import json

import pytest

from dualsparse.experiments.spec import SweepSpec, load_spec, run_id


def _spec(**kw):
    d = {"name": "s", "run": "toy", "output": "out", "base": {"steps": 5},
         "grid": {"model": ["EGRU", "LSTM"], "prune_target": [0.0, 0.5, 0.9]}, "seeds": [1, 2]}
    d.update(kw)
    return SweepSpec.from_dict(d)


def test_expansion_is_the_product_with_seeds_and_base():
    runs = _spec().expand()
    assert len(runs) == 2 * 3 * 2
    configs = [r.config for r in runs]
    assert all(c["steps"] == 5 for c in configs)
    assert {(c["model"], c["prune_target"], c["seed"]) for c in configs} == {
        (m, t, s) for m in ("EGRU", "LSTM") for t in (0.0, 0.5, 0.9) for s in (1, 2)}
    assert len({r.run_id for r in runs}) == len(runs)


def test_run_ids_are_stable_and_canonical():
    a = run_id("toy", {"lr": 1.0, "model": "EGRU", "nhid": [32, 16]})
    b = run_id("toy", {"nhid": [32, 16], "model": "EGRU", "lr": 1})
    assert a == b and len(a) == 16
    assert run_id("toy", {"lr": 1.5}) != run_id("toy", {"lr": 1.25})
    assert run_id("toy", {"lr": 1.0}) != run_id("lm", {"lr": 1.0})
    assert [r.run_id for r in _spec().expand()] == [r.run_id for r in _spec().expand()]


def test_changing_the_spec_adds_only_new_runs():
    old = {r.run_id for r in _spec().expand()}
    grown = _spec(grid={"model": ["EGRU", "LSTM"], "prune_target": [0.0, 0.5, 0.9, 0.95]},
                  seeds=[1, 2, 3])
    new = {r.run_id for r in grown.expand()}
    assert old < new and len(new - old) == 2 * 4 * 3 - 12


def test_grid_list_is_a_union_and_duplicates_collapse():
    spec = _spec(grid=[{"model": ["EGRU"], "prune_target": [0.5, 0.9]},
                       {"model": ["EGRU"], "prune_target": [0.9, 0.95]}], seeds=[0])
    assert sorted(r.config["prune_target"] for r in spec.expand()) == [0.5, 0.9, 0.95]


def test_no_grid_and_no_seeds_gives_one_run():
    spec = SweepSpec.from_dict({"name": "one", "run": "echo", "output": "o", "base": {"a": 1}})
    runs = spec.expand()
    assert len(runs) == 1 and runs[0].config == {"a": 1}


@pytest.mark.parametrize("bad, message", [
    ({"grid": {"model": []}}, "non-empty list"),
    ({"grid": {"model": "EGRU"}}, "non-empty list"),
    ({"seeds": [1, 1]}, "repeated"),
    ({"seeds": [1.5]}, "seeds. entry must be an int"),
    ({"base": {"seed": 3}}, "'seed' is set in 'base'"),
    ({"grid": {"seed": [1, 2]}}, "both a grid key and the seed key"),
    ({"base": {"lr": float("nan")}}, "non-finite"),
    ({"base": {"x": object()}}, "not JSON-able"),
    ({"colour": "red"}, "unknown sweep spec keys"),
    ({"name": ""}, "non-empty string"),
])
def test_bad_specs_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        _spec(**bad)


def test_missing_required_key():
    with pytest.raises(ValueError, match="has no 'run'"):
        SweepSpec.from_dict({"name": "x", "output": "o"})


def test_load_yaml_and_json(tmp_path):
    d = {"name": "y", "run": "toy", "output": str(tmp_path / "o"),
         "grid": {"model": ["EGRU", "GRU"]}, "seeds": [3]}
    (tmp_path / "s.json").write_text(json.dumps(d))
    (tmp_path / "s.yaml").write_text(
        f"name: y\nrun: toy\noutput: {tmp_path / 'o'}\ngrid:\n  model: [EGRU, GRU]\nseeds: [3]\n")
    a, b = load_spec(tmp_path / "s.json"), load_spec(tmp_path / "s.yaml")
    assert [r.run_id for r in a.expand()] == [r.run_id for r in b.expand()]
    assert a.store_path == tmp_path / "o" / "results.sqlite"
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_examples_parse():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "examples" / "sweeps"
    ptb = load_spec(root / "ptb_small.yaml").expand()
    assert len(ptb) == 24
    assert {r.config["model"] for r in ptb} == {"EGRU", "LSTM"}
    assert len({r.config["prune_target"] for r in ptb}) >= 4
    assert {r.config["seed"] for r in ptb} == {1, 2, 3}
    assert len(load_spec(root / "toy.yaml").expand()) > 0
