"""dualsparse.validation: the core argument checkers."""

from __future__ import annotations

import numpy as np
import pytest

from dualsparse.validation import check_block, check_choice, check_int, check_real


def test_check_int_accepts_ints_and_numpy_ints_within_bounds() -> None:
    assert check_int("n", 3, low=1) == 3
    assert type(check_int("n", np.int64(5), low=0, high=5)) is int


@pytest.mark.parametrize("bad", [True, 2.0, "3", None, 0, 11])
def test_check_int_refuses_bools_non_ints_and_out_of_range(bad: object) -> None:
    with pytest.raises(ValueError, match="^n must be an int"):
        check_int("n", bad, low=1, high=10)


def test_check_real_bounds_open_and_closed() -> None:
    assert check_real("p", 0, low=0.0, high=1.0, high_open=True) == 0.0
    with pytest.raises(ValueError, match="p must be < 1.0"):
        check_real("p", 1.0, low=0.0, high=1.0, high_open=True)
    with pytest.raises(ValueError, match="lr must be > 0"):
        check_real("lr", 0.0, low=0.0, low_open=True)
    for bad in (float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="^x must be"):
            check_real("x", bad)
    assert check_real("x", float("inf"), finite=False) == float("inf")
    with pytest.raises(ValueError, match="finite"):
        check_real("x", float("nan"), finite=False)


def test_check_choice_lists_the_options() -> None:
    assert check_choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"mode must be one of \['a', 'b'\], got 'c'"):
        check_choice("mode", "c", ("a", "b"))


def test_check_block_parses_strings_and_pairs() -> None:
    assert check_block("block", "16x1") == (16, 1)
    assert check_block("block", "4×4") == (4, 4)
    assert check_block("block", [2, 3]) == (2, 3)
    for bad in ("16", "ax1", (0, 1), (1, 2, 3), 4, (True, 1), (1.0, 2)):
        with pytest.raises(ValueError, match="^block must"):
            check_block("block", bad)
