"""The fused one-call layer step (kernels.layer_step) equals the separate kernels bitwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsparse.engine.runtime import SparseRuntime
from dualsparse.models import EGRU, GRU, LSTM


def _model(cls, density: float):
    torch.manual_seed(5)
    kw = {"threshold_mean": 0.15} if cls is EGRU else {"zoneout": 0.1}
    m = cls(12, [32, 24], **kw).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("weight_"):
                p.mul_((torch.rand(p.shape, generator=g) < density).to(p.dtype))
    return m


@pytest.mark.parametrize("cls", [EGRU, GRU, LSTM])
@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4), (3, 2), "auto"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_layer_step_equals_separate_kernels(cls, block, batch):
    m = _model(cls, 0.4)
    x = torch.randn(14, batch, 12)
    x[x.abs() < 0.5] = 0.0  # sparse inputs
    fused = SparseRuntime.from_model(m, block=block)
    apart = SparseRuntime.from_model(m, block=block)
    assert fused._fuse
    apart._fuse = False
    out_f, seq_f = fused.run(x, return_sequences=True)
    out_a, seq_a = apart.run(x, return_sequences=True)
    assert torch.equal(out_f, out_a)
    for rf, ra in zip(seq_f, seq_a, strict=True):
        for name in rf:
            assert torch.equal(rf[name], ra[name]), name
    assert fused.stats == apart.stats
    for sf, sa in zip(fused.state, apart.state, strict=True):
        for a, b in zip(sf, sa, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
