"""The ptb-small reference presets: equal parameter counts, and the committed reference runs
(docs/results/<preset>/results.json) were made with exactly the preset's settings."""

import json
from pathlib import Path

import pytest

from dualsparse.apps.lm.config import LMConfig
from dualsparse.apps.lm.presets import get_preset

RESULTS = Path(__file__).resolve().parents[3] / "docs" / "results"
SMALL = ["ptb-small-lstm", "ptb-small-egru", "ptb-small-egru-untied"]
BOOKKEEPING = {"save", "progress", "resume", "overwrite", "tensorboard"}


def _parameters(name: str) -> int:
    model = LMConfig.from_dict(get_preset(name)).model.build(10000)  # PTB's vocabulary
    return sum(p.numel() for p in model.parameters())


def test_the_small_egrus_have_the_lstms_parameter_count_within_2_percent() -> None:
    lstm = _parameters("ptb-small-lstm")
    for name in ("ptb-small-egru", "ptb-small-egru-untied"):
        assert abs(_parameters(name) / lstm - 1) <= 0.02, name


def _differences(folder: str, preset: str) -> dict[str, tuple]:
    """Settings of the committed run in ``docs/results/<folder>`` that differ from ``preset``
    (bookkeeping aside): name -> (preset's value, run's value)."""
    stored = json.loads((RESULTS / folder / "results.json").read_text())["config"]
    run = LMConfig.from_dict(stored, strict=False).flat()
    base = LMConfig.from_dict(get_preset(preset)).flat()
    return {k: (base[k], run[k]) for k in base if base[k] != run[k] and k not in BOOKKEEPING}


@pytest.mark.parametrize("name", SMALL)
def test_the_committed_reference_run_used_the_preset(name: str) -> None:
    differ = _differences(name, name)
    assert not differ, differ


@pytest.mark.parametrize("folder, preset, differs", [
    ("ptb-small-egru-seed2", "ptb-small-egru", {"seed"}),
    ("ptb-small-egru-nopenalty", "ptb-small-egru", {"activity_penalty"}),
    # the tied-LSTM control: the EGRU's recipe, only the cell and its widths changed
    ("ptb-small-lstm-tied310", "ptb-small-egru",
     {"cell", "hidden_sizes", "emb_size", "activity_penalty"}),
])
def test_the_committed_variant_runs_differ_from_their_preset_only_as_named(
        folder: str, preset: str, differs: set[str]) -> None:
    assert set(_differences(folder, preset)) == differs
