"""Models on CUDA: forward and backward equal the CPU path (float64), fused EGRU included."""

from __future__ import annotations

import pytest
import torch

from dualsparse.models import EGRU, GRU, LSTM
from dualsparse.models.lm import RNNLanguageModel


def _fwd_bwd(model: torch.nn.Module, x: torch.Tensor):
    model.zero_grad()
    out = model(x)[0]
    (out.square().sum() + out.sum()).backward()
    return out.detach().cpu(), {n: p.grad.detach().cpu() for n, p in model.named_parameters()}


@pytest.mark.parametrize("make", [
    lambda: EGRU(7, [32, 16], threshold_mean=0.2, dtype=torch.float64),
    lambda: EGRU(7, [32, 16], threshold_mean=0.2, fused=False, dtype=torch.float64),
    lambda: EGRU(7, 32, threshold_mean=0.2, zoneout=0.1, reset_mode="subtract_output",
                 dtype=torch.float64).eval(),
    lambda: GRU(7, [32, 16], dtype=torch.float64),
    lambda: LSTM(7, [32, 16], dtype=torch.float64),
    lambda: GRU(7, [32, 16], fused=False, dtype=torch.float64),
    lambda: LSTM(7, [32, 16], fused=False, dtype=torch.float64),
], ids=["egru-fused", "egru-reference", "egru-zoneout-eval", "gru", "lstm", "gru-step-loop",
        "lstm-step-loop"])
def test_cuda_equals_cpu(make):
    torch.manual_seed(0)
    cpu = make()
    gpu = make().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(12, 5, 7, dtype=torch.float64)
    out_c, g_c = _fwd_bwd(cpu, x)
    out_g, g_g = _fwd_bwd(gpu, x.cuda())
    assert torch.allclose(out_c, out_g, rtol=1e-9, atol=1e-10)
    for name, g in g_c.items():
        assert torch.allclose(g, g_g[name], rtol=1e-7, atol=1e-9), name


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_cudnn_recurrence_equals_the_step_loop_in_float32(cls):
    """``fused=True`` runs cuDNN over masked, dropconnect-ed weights: same values and
    gradients as the Python step loop (IEEE fp32, TF32 off by the conftest)."""
    torch.manual_seed(0)
    m = cls(48, [64, 32], dropconnect=0.3).cuda().train()
    with torch.no_grad():
        m.weight_hh_l0.mul_((torch.rand_like(m.weight_hh_l0) > 0.5).float())
    x = torch.randn(30, 8, 48, device="cuda")
    results = []
    for fused in (True, False):
        m.fused = fused
        torch.manual_seed(3)  # the same dropconnect masks for both
        results.append(_fwd_bwd(m, x))
    (out_f, g_f), (out_l, g_l) = results
    assert torch.allclose(out_f, out_l, rtol=1e-4, atol=1e-5)
    for name, g in g_f.items():  # float32 sums over 240 (step, row) pairs in another order
        assert float((g - g_l[name]).norm() / g_l[name].norm()) < 1e-4, name


def test_language_model_on_cuda_float32():
    torch.manual_seed(1)
    cpu = RNNLanguageModel(50, 16, [32, 16], cell="egru",
                           cell_options={"threshold_mean": 0.1})
    gpu = RNNLanguageModel(50, 16, [32, 16], cell="egru",
                           cell_options={"threshold_mean": 0.1}).cuda()
    gpu.load_state_dict(cpu.state_dict())
    tok = torch.randint(0, 50, (10, 4))
    losses = []
    for m, t in ((cpu, tok), (gpu, tok.cuda())):
        logits = m(t)[0]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), t.reshape(-1))
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(cpu.embedding.weight.grad, gpu.embedding.weight.grad.cpu(),
                          rtol=1e-3, atol=1e-6)
