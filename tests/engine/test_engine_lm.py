"""The language model through the engine equals the PyTorch path (logits, perplexity)."""

from __future__ import annotations

import math

import pytest
import torch

from dualsparse.apps.lm.evaluate import evaluate_lm
from dualsparse.engine.lm import (
    SparseLM,
    evaluate_lm_sparse,
    evaluate_perplexity_sparse,
)
from dualsparse.models.lm import RNNLanguageModel


def _lm(cell: str, tie: bool, prune: float = 0.0) -> RNNLanguageModel:
    torch.manual_seed(0)
    opts = {"threshold_mean": 0.1} if cell == "egru" else None
    sizes = [24, 16] if tie else [24, 20]
    lm = RNNLanguageModel(60, 16, sizes, cell=cell, tie_weights=tie, cell_options=opts)
    if prune:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in lm.named_parameters():
                if p.dim() == 2 and not name.startswith("embedding"):
                    p.mul_((torch.rand(p.shape, generator=g) >= prune).to(p.dtype))
            if not tie:
                lm.decoder.weight.mul_((torch.rand(lm.decoder.weight.shape, generator=g)
                                        >= prune).float())
    return lm.eval()


@pytest.mark.parametrize("cell", ["egru", "lstm", "gru"])
@pytest.mark.parametrize("tie,prune", [(True, 0.0), (False, 0.8)])
def test_sparse_lm_logits_equal_torch(cell, tie, prune):
    lm = _lm(cell, tie, prune)
    tokens = torch.randint(0, 60, (15, 3))
    with torch.no_grad():
        ref, _ = lm(tokens)
    slm = SparseLM.from_model(lm)
    torch.testing.assert_close(slm.run(tokens), ref, atol=2e-5, rtol=1e-4)
    # streaming == run
    slm.reset(3)
    steps = torch.stack([slm.step(tokens[t]) for t in range(15)])
    torch.testing.assert_close(steps, ref, atol=2e-5, rtol=1e-4)
    assert slm.nbytes > 0 and slm.dense_nbytes > 0
    if prune:
        assert slm.nbytes < slm.dense_nbytes


@pytest.mark.parametrize("batch_size", [1, 2])
def test_sparse_perplexity_equals_evaluate_lm(batch_size):
    lm = _lm("egru", tie=True)
    source = torch.randint(0, 60, (201,))
    ref = evaluate_lm(lm, source, batch_size, bptt=17)
    ppl = evaluate_perplexity_sparse(lm, source, batch_size=batch_size)
    assert math.isclose(ppl, ref["ppl"], rel_tol=1e-5)
    res = evaluate_lm_sparse(lm, source, batch_size=batch_size, chunk=7)
    assert res["tokens"] == ref["tokens"]
    assert math.isclose(res["activity"], ref["activity"], rel_tol=1e-6)
    assert 0.0 < res["activity"] < 1.0


def test_sparse_lm_errors():
    lm = _lm("gru", tie=True)
    slm = SparseLM.from_model(lm)
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        slm.run(torch.tensor([[61]]))
    with pytest.raises(ValueError, match="integer"):
        slm.run(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="reset"):
        slm.step(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="RNNLanguageModel"):
        SparseLM.from_model(torch.nn.GRU(3, 4).eval())
    with pytest.raises(ValueError, match="eval mode"):
        SparseLM.from_model(lm.train())
    with pytest.raises(ValueError, match="2 tokens"):
        evaluate_perplexity_sparse(lm.eval(), torch.tensor([1]))
