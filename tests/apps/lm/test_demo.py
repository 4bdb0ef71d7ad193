"""examples/demo.py: a second `make demo` never touches the first run's folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEMO = Path(__file__).resolve().parents[3] / "examples" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("demo_under_test", DEMO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_demo_picks_a_free_run_folder(tmp_path) -> None:
    free_folder = _demo().free_folder
    base = tmp_path / "demo"
    assert free_folder(base) == str(base)
    base.mkdir()
    assert free_folder(base) == str(tmp_path / "demo-2")
    (tmp_path / "demo-2").mkdir()
    assert free_folder(base) == str(tmp_path / "demo-3")


def test_the_demo_prunes_in_blocks_that_tile_every_gate() -> None:
    prune_block = _demo().prune_block
    assert prune_block([256, 128]) == "16x1"  # cpu-small
    assert prune_block([200, 200]) == "8x1"  # ptb-demo: 16 does not divide 200
    assert prune_block([211, 211]) == "1x1"
