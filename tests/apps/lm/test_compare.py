"""compare_with_torch: perplexity on both paths, densities, speed-up bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch

from dualsparse.apps.lm.compare import compare_with_torch
from dualsparse.models.lm import RNNLanguageModel


def _pruned_egru_lm() -> RNNLanguageModel:
    """A small untied EGRU LM with 70% of its weight matrices zeroed at random."""
    torch.manual_seed(0)
    lm = RNNLanguageModel(60, 16, [24, 20], cell="egru", tie_weights=False,
                          cell_options={"threshold_mean": 0.1})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() == 2 and not name.startswith("embedding"):
                p.mul_((torch.rand(p.shape, generator=g) >= 0.7).to(p.dtype))
    return lm


def test_compare_with_torch_reports_both_paths():
    lm = _pruned_egru_lm()
    lm.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        res = compare_with_torch(lm, torch.randint(0, 60, (120,)), bptt=20, timing_tokens=30,
                                 repeats=1)
        assert torch.get_num_threads() == threads + 1  # torch's thread count restored
    finally:
        torch.set_num_threads(threads)
    assert lm.training  # mode restored
    assert math.isclose(res["ppl_engine"], res["ppl_torch"], rel_tol=1e-5)
    assert 0.0 < res["activity_density"] < 1.0
    assert 0.2 < res["weight_density"] < 0.4
    assert res["ideal_speedup"] > 1.0
    assert res["speedup_seq"] == pytest.approx(res["dense_seq_us_per_token"]
                                               / res["engine_us_per_token"])
    assert res["ratio_seq"] == pytest.approx(res["speedup_seq"] / res["ideal_speedup"])
    assert res["packed_bytes"] < res["dense_bytes"]


def test_ideal_speedup_counts_the_decoder():
    """A GRU LM (every output nonzero) with dense recurrent weights and a 90%-pruned decoder:
    the ideal speed-up is the whole model's dense / effective MACs per token, counted here
    from the weights (the first step's recurrent input is the zero state and costs nothing),
    not the recurrent layers' ratio, which is about 1."""
    torch.manual_seed(0)
    V, E, H = 50, 8, [12, 10]
    lm = RNNLanguageModel(V, E, H, cell="gru", tie_weights=False)
    with torch.no_grad():
        keep = torch.rand(lm.decoder.weight.shape, generator=torch.Generator().manual_seed(3))
        lm.decoder.weight.mul_((keep < 0.1).float())
    n = 40  # predictions: tokens[:-1] -> tokens[1:], batch 1, state carried throughout
    res = compare_with_torch(lm, torch.randint(0, V, (n + 1,)), bptt=16, timing_tokens=4,
                             repeats=1)
    assert res["tokens"] == n
    dense = 3 * H[0] * (E + H[0]) + 3 * H[1] * (H[0] + H[1]) + V * H[1]
    nnz_dec = int((lm.decoder.weight != 0).sum())
    effective = (3 * H[0] * E + 3 * H[1] * H[0] + nnz_dec
                 + (n - 1) / n * (3 * H[0] * H[0] + 3 * H[1] * H[1]))
    assert res["ideal_speedup"] == pytest.approx(dense / effective, rel=1e-9)
    assert res["ideal_speedup_rnn"] == pytest.approx(1.0, abs=0.05)
    assert res["ideal_speedup"] > 1.2 * res["ideal_speedup_rnn"]
