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
