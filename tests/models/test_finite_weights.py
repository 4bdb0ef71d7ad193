"""NaN/inf weights are refused by the PyTorch forward (as by the engine and checkpoint
loading), and the check stays out of compiled graphs."""

from __future__ import annotations

import pytest
import torch

from dualsparse import EGRU, GRU, LSTM
from dualsparse.models.tracing import all_finite, check_finite, check_parameters_finite


@pytest.mark.parametrize("cls", [EGRU, GRU, LSTM])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(cls, value: float) -> None:
    rnn = cls(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    rnn(x)  # finite: fine
    with torch.no_grad():
        rnn.weight_hh_l1[0, 0] = value
    with pytest.raises(ValueError, match=r"\['weight_hh_l1'\] contain NaN or inf"):
        rnn(x)
    rnn.check_finite = False  # the documented switch turns every finite check off
    rnn(x)


def test_the_check_is_skipped_while_compiling(monkeypatch) -> None:
    rnn = GRU(3, 4)
    with torch.no_grad():
        rnn.weight_ih_l0[0, 0] = float("nan")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    check_parameters_finite(rnn, "GRU")  # no data-dependent branch inside a graph


def test_non_finite_weights_are_refused_on_packed_input_too() -> None:
    from torch.nn.utils.rnn import pack_padded_sequence

    rnn = EGRU(3, 4)
    with torch.no_grad():
        rnn.bias_ih_l0[1] = float("nan")
    packed = pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    with pytest.raises(ValueError, match=r"\['bias_ih_l0'\] contain NaN or inf"):
        rnn(packed)


def test_large_finite_values_whose_sum_overflows_are_accepted() -> None:
    """The check sums first; a sum that overflows to inf must not be taken for an inf."""
    big = torch.full((4, 3), 3e38)  # finite float32, sum = inf
    assert torch.isinf(big.sum()) and all_finite(big)
    rnn = GRU(3, 4)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.full_like(rnn.weight_ih_l0, 3e38))
    check_parameters_finite(rnn, "GRU")
    check_finite(big, "input")


@pytest.mark.parametrize("values", [[1.0, float("nan")], [float("inf"), 1.0],
                                    [float("inf"), float("-inf")], [3e38, 3e38, float("nan")]])
def test_any_nan_or_inf_element_is_found(values) -> None:
    t = torch.tensor(values)
    assert not all_finite(t)
    with pytest.raises(ValueError, match="input contains NaN or inf"):
        check_finite(t, "input")
