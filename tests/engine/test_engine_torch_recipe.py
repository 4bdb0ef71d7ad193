"""The documented recipe (docs/engine.md): prune a plain ``torch.nn.LSTM``/``nn.GRU`` with
``Pruner``, pack it, run it through the engine; outputs equal the pruned PyTorch module's."""

from __future__ import annotations

import pytest
import torch

from dualsparse.engine import SparseRuntime
from dualsparse.sparsity import Pruner, PruningSpec


@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU])
@pytest.mark.parametrize("threads", [1, 2])
def test_prune_pack_run_plain_torch_rnn(cls, threads):
    torch.manual_seed(0)
    model = cls(input_size=20, hidden_size=48, num_layers=2)
    spec = PruningSpec(tensors=["weight_ih_l*", "weight_hh_l*"], sparsity=0.75, block=(16, 1))
    pruner = Pruner(model, spec)
    pruner.prune_to(1.0)          # or train with pruner.step(global_step) after each step
    pruner.finalize()             # pruned weights become exact zeros; masks removed
    model.eval()
    for name in ("weight_ih_l0", "weight_hh_l1"):
        assert float((getattr(model, name) == 0).float().mean()) == pytest.approx(0.75, abs=0.02)
    rt = SparseRuntime.from_model(model, threads=threads)   # block="auto": 16x1 tiles
    assert {lay.w_hh.block for lay in rt.packed.layers} == {(16, 1)}
    assert rt.packed.memory_report()["ratio"] < 0.4
    x = torch.randn(25, 3, 20)
    with torch.no_grad():
        ref, _ = model(x)
    torch.testing.assert_close(rt.run(x), ref, atol=2e-5, rtol=1e-4)
    rt.reset(3)                   # streaming, one step per call
    torch.testing.assert_close(rt.step(x[0]), ref[0], atol=2e-5, rtol=1e-4)
