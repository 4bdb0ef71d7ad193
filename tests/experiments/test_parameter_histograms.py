"""Weight and bias histograms per recurrent layer."""

import pytest
import torch
from torch import nn

from dualsparse.experiments.parameter_histograms import BIN_WIDTH, parameter_histograms
from dualsparse.models import EGRU


def test_counts_land_in_the_right_bins_and_pruned_weights_are_zeros() -> None:
    gru = nn.GRU(2, 3, num_layers=2)
    with torch.no_grad():
        for name, p in gru.named_parameters():
            p.fill_(0.3 if name.startswith("weight") else -0.2)
        gru.weight_hh_l1[0, :] = 0.0   # 3 pruned weights in layer 1
        gru.weight_ih_l1[1, 0] = 7.0   # beyond the range: the outermost bin
    h = parameter_histograms(gru)
    assert [x["layer"] for x in h] == [0, 1]
    assert h[0]["weight_count"] == 9 * 2 + 9 * 3 and h[0]["zeros"] == 0
    assert h[1]["weight_count"] == 9 * 3 + 9 * 3 and h[1]["zeros"] == 3
    edges = h[0]["weights"]["edges"]
    assert edges[0] == -1.5 and edges[-1] == 1.5
    assert edges[1] - edges[0] == pytest.approx(BIN_WIDTH)
    counts = h[0]["weights"]["counts"]
    assert sum(counts) == 45 and counts[round((0.3 + 1.5) / BIN_WIDTH)] == 45  # [0.3, 0.325)
    assert h[1]["weights"]["counts"][-1] == 1 and sum(h[1]["weights"]["counts"]) == 51
    bias = h[1]["biases"]["counts"]
    assert sum(bias) == 18 and bias[round((-0.2 + 1.0) / BIN_WIDTH) - 1] == 18  # [-0.225, -0.2)


def test_the_egru_and_a_model_without_recurrent_layers() -> None:
    h = parameter_histograms(EGRU(4, 5, num_layers=1, bias=False))
    assert len(h) == 1 and h[0]["biases"] is None and h[0]["weight_count"] == 15 * 4 + 15 * 5
    with pytest.raises(ValueError, match="no recurrent weights"):
        parameter_histograms(nn.Linear(3, 2))
