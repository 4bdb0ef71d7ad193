"""The language model through the engine equals the PyTorch path (logits, perplexity) in
segment, streaming and batch mode, every format and 1/2 threads; generation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dualsparse.apps.lm.evaluate import evaluate_lm
from dualsparse.engine import formats as FM
from dualsparse.engine.lm import (
    SparseLM,
    evaluate_lm_sparse,
    evaluate_perplexity_sparse,
    sample_token,
)
from dualsparse.models.lm import RNNLanguageModel


def _lm(cell: str, tie: bool, prune: float = 0.0, block16: bool = False) -> RNNLanguageModel:
    """A small LM; ``prune``: fraction of recurrent (and untied decoder) weights zeroed,
    unstructured or, with ``block16``, in 16x1 blocks (whole 16-row runs of a column)."""
    torch.manual_seed(0)
    opts = {"threshold_mean": 0.1} if cell == "egru" else None
    sizes = [24, 16] if tie else [32, 20]
    lm = RNNLanguageModel(60, 16, sizes, cell=cell, tie_weights=tie, cell_options=opts)
    if prune:
        g = torch.Generator().manual_seed(1)

        def mask(shape: torch.Size) -> torch.Tensor:
            if not block16:
                return (torch.rand(shape, generator=g) >= prune).float()
            blocks = torch.rand((-(-shape[0] // 16), shape[1]), generator=g) >= prune
            return blocks.float().repeat_interleave(16, 0)[: shape[0]]

        with torch.no_grad():
            for name, p in lm.named_parameters():
                if p.dim() == 2 and not name.startswith("embedding"):
                    p.mul_(mask(p.shape))
            if not tie:
                lm.decoder.weight.mul_(mask(lm.decoder.weight.shape))
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
    # one streaming token: the range is checked on the scalar path too, at both ends
    slm.reset(1)
    for bad in (torch.tensor([60]), torch.tensor(-1), np.int64(60), 60):
        with pytest.raises(ValueError, match=r"\[0, 60\)"):
            slm.step(bad)
    for bad in (torch.tensor([True]), np.array([1.0]), 1.5):
        with pytest.raises(ValueError, match="integer"):
            slm.step(bad)
    assert slm.step(torch.tensor([59])).shape == (1, 60)
    assert slm.step(np.uint8(0)).shape == (60,)
    with pytest.raises(ValueError, match="reset"):
        slm.step(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="RNNLanguageModel"):
        SparseLM.from_model(torch.nn.GRU(3, 4).eval())
    with pytest.raises(ValueError, match="eval mode"):
        SparseLM.from_model(lm.train())
    with pytest.raises(ValueError, match="2 tokens"):
        evaluate_perplexity_sparse(lm.eval(), torch.tensor([1]))


@pytest.mark.parametrize("block", ["auto", (16, 1), (1, 1), "dense"])
@pytest.mark.parametrize("threads", [1, 2])
def test_modes_formats_threads_equal_torch(block, threads, monkeypatch):
    monkeypatch.setattr(FM, "PARALLEL_MIN_BYTES", 0)
    lm = _lm("egru", tie=False, prune=0.6, block16=True)
    tokens = torch.randint(0, 60, (12, 3))
    with torch.no_grad():
        ref, _ = lm(tokens)
    slm = SparseLM.from_model(lm, block=block, threads=threads)
    first = type(slm.runtime.packed.layers[0].w_ih).__name__
    assert first == ("RowMatrix" if block == "auto" else
                     "DenseMatrix" if block == "dense" else "PackedMatrix")
    seg = slm.run(tokens)                                  # segment mode, batch 3
    torch.testing.assert_close(seg, ref, atol=2e-5, rtol=1e-4)
    slm.reset(3)                                           # streaming, batch 3
    stream = torch.stack([slm.step(tokens[t]) for t in range(12)])
    for b in range(3):                                     # each stream alone, segment mode
        alone = slm.run(tokens[:, b])
        torch.testing.assert_close(alone, ref[:, b], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(stream, seg, atol=1e-6, rtol=1e-6)
    secs = slm.runtime.stats.seconds
    assert secs["decoder"] > 0 and secs["input"] > 0 and secs["recurrent"] > 0


def test_generate_greedy_follows_torch_argmax_and_sampling_is_seeded():
    lm = _lm("egru", tie=True)
    slm = SparseLM.from_model(lm)
    prompt = [3, 14, 15, 9]
    gen = slm.generate(prompt, 6, temperature=0.0)
    assert len(gen.tokens) == 6 and len(gen.latency_s) == 6
    assert all(t > 0 for t in gen.latency_s) and gen.prompt_seconds > 0
    seq = list(prompt)
    for _ in range(6):  # greedy decoding with the PyTorch model
        with torch.no_grad():
            logits, _ = lm(torch.tensor(seq)[:, None])
        seq.append(int(logits[-1, 0].argmax()))
    assert gen.tokens == seq[len(prompt):]
    a = slm.generate(prompt, 8, temperature=1.0, top_k=5, seed=3).tokens
    assert a == slm.generate(prompt, 8, temperature=1.0, top_k=5, seed=3).tokens
    with pytest.raises(ValueError, match="temperature"):
        slm.generate(prompt, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        slm.generate(prompt, 2, top_k=0)
    with pytest.raises(ValueError, match="prompt"):
        slm.generate([], 2)
    with pytest.raises(ValueError, match="n must be"):
        slm.generate(prompt, -1)


def test_sample_token_top_k_and_temperature():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.0, -3.0, 4.5], np.float32)
    draws = {sample_token(logits, 1.0, 2, rng) for _ in range(200)}
    assert draws == {1, 4}  # only the two largest logits
    assert sample_token(logits, 0.0, None, rng) == 1
    cold = [sample_token(logits, 0.05, None, rng) for _ in range(50)]
    assert cold.count(1) >= 48
