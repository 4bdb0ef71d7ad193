"""Embedded accuracy-vs-size figure from KWS metrics.json files (and its script)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dualsparse.analysis.embedded_figures import (
    accuracy_vs_size,
    bits_curves,
    load_kws_results,
    size_points,
)

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "plot_embedded.py"


def _write(root: Path, name: str, **metrics) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"hidden": [32, 20], **metrics}))
    return d / "metrics.json"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "kws"
    _write(root, "gru", model="gru", seed=0, test_acc=0.93, float_bytes=51432)
    for bits, seeds in ((2, {0: 0.70, 1: 0.74}), (3, {0: 0.90, 1: 0.88})):
        for seed, acc in seeds.items():
            _write(root, f"q{bits}_{seed}", model="egru-q", seed=seed, test_acc=acc + 0.01,
                   float_bytes=34568, bits=bits, deployed_test_acc=acc,
                   deployed_bytes=1000 * bits + seed)
    return root


def test_series_are_grouped_over_seeds(runs: Path) -> None:
    results = load_kws_results([runs])
    assert len(results) == 5
    size = size_points(results)
    q3 = size["egru-q 3-bit deployed (32,20)"]
    assert q3["acc"] == [pytest.approx(0.89)] and q3["n"] == [2]
    assert q3["acc_std"] == [pytest.approx(0.01414, abs=1e-4)]  # sample std of 0.90, 0.88
    assert q3["bytes"] == [pytest.approx(3000.5)]
    assert size["gru float32 (32,20)"]["bytes"] == [51432.0]
    curve = bits_curves(results)["egru-q (32,20)"]
    assert curve["bits"] == [2, 3] and curve["acc"] == [pytest.approx(0.72),
                                                        pytest.approx(0.89)]
    assert "gru (32,20)" not in bits_curves(results)  # float-only runs have no bits point


def test_dense_layers_make_their_own_series(runs: Path) -> None:
    _write(runs, "q3_dense", model="egru-q", seed=0, test_acc=0.9, float_bytes=30000, bits=3,
           deployed_test_acc=0.9, deployed_bytes=3500, dense=[16])
    _write(runs, "q3_empty_dense", model="egru-q", seed=2, test_acc=0.9, float_bytes=34568,
           bits=3, deployed_test_acc=0.86, deployed_bytes=3002, dense=[])
    size = size_points(load_kws_results([runs]))
    assert size["egru-q 3-bit deployed (32,20+16 ReLU)"]["bytes"] == [3500.0]
    assert size["egru-q 3-bit deployed (32,20)"]["n"] == [3]  # dense [] = no dense layer


def test_figure_files_and_script(runs: Path, tmp_path: Path) -> None:
    data = accuracy_vs_size(load_kws_results([runs]), tmp_path / "fig" / "a")
    assert set(data) == {"size", "bits"} and (tmp_path / "fig" / "a.png").is_file()
    spec = importlib.util.spec_from_file_location("plot_embedded", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "figs" / "kws"
    assert script.main([str(runs), "--out", str(out)])["bits"]
    assert Path(f"{out}.png").stat().st_size > 0 and Path(f"{out}.pdf").stat().st_size > 0
    with pytest.raises(ValueError, match="--out"):
        script.main([str(runs), "--out", str(out)])


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_kws_results([tmp_path / "nope"])
    with pytest.raises(ValueError, match="no metrics.json"):
        load_kws_results([tmp_path])
    bad = _write(tmp_path, "x", model="egru")
    with pytest.raises(ValueError, match="no 'test_acc'"):
        load_kws_results([bad])
    assert accuracy_vs_size([], tmp_path / "none") is None
