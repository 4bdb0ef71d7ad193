"""NeuroBench metric set: torch RNNs measured layer by layer, compared with NeuroBench itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dualsparse.accounting import ActivityMeter, measure
from dualsparse.models import EGRU
from dualsparse.models.torch_rnn import TorchRNNLayers, attach
from dualsparse.neurobench_metrics import connection_sparsity, footprint, neurobench_metrics

T, B, I, H, V = 6, 3, 5, 8, 4


def _sparse_input(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g)
    return x * (torch.rand(T, B, I, generator=g) > 0.4)


def _prune(module: nn.Module, fraction: float = 0.5) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("weight"):
                p.mul_(torch.rand(p.shape, generator=g) > fraction)


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_rnn_layers_reproduce_the_module(cls, batch_first) -> None:
    torch.manual_seed(0)
    rnn = cls(I, H, num_layers=3, batch_first=batch_first).eval()
    x = _sparse_input()
    x = x.transpose(0, 1) if batch_first else x
    ref, ref_state = rnn(x)
    out, state, seqs = TorchRNNLayers(rnn)(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert len(seqs) == 3 and torch.equal(seqs[-1].output, out)
    # every layer's output is the next one's input: layer k alone gives layer k+1's input
    single = cls(H, H, num_layers=1, batch_first=batch_first).eval()
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(single, f"{n}_l0").copy_(getattr(rnn, f"{n}_l2"))
    torch.testing.assert_close(single(seqs[1].output)[0], out, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM, nn.RNN])
def test_measure_counts_a_torch_rnn_like_the_same_dualsparse_layer_would(cls) -> None:
    torch.manual_seed(0)
    rnn = cls(I, H, num_layers=2).eval()
    _prune(rnn)
    x = _sparse_input()
    report = measure(rnn, x)
    assert [r.num_gates for r in report.layers] == [{nn.RNN: 1, nn.GRU: 3, nn.LSTM: 4}[cls]] * 2
    g = report.layers[0].num_gates
    # layer 0: dense per token G*H*(I+H); effective from the nonzero inputs and weight columns
    assert report.layers[0].dense_macs == g * H * (I + H)
    col_ih = (rnn.weight_ih_l0 != 0).sum(0).double()
    col_hh = (rnn.weight_hh_l0 != 0).sum(0).double()
    out0 = TorchRNNLayers(rnn)(x)[2][0].output
    prev = torch.cat([torch.zeros(1, B, H), out0[:-1]])
    expected = float(((x != 0).double() @ col_ih).sum() + ((prev != 0).double() @ col_hh).sum())
    assert report.layers[0].effective_macs == pytest.approx(expected / (T * B))


def test_torch_rnn_refuses_what_it_cannot_count() -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        TorchRNNLayers(nn.GRU(I, H, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size"):
        TorchRNNLayers(nn.LSTM(I, H, proj_size=2))
    with pytest.raises(ValueError, match="eval mode"):
        measure(nn.GRU(I, H, num_layers=2, dropout=0.5).train(), _sparse_input())


def test_attach_measures_a_torch_rnn_inside_a_model_on_every_call() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.rnn = nn.LSTM(I, H, num_layers=2).eval()
    meter = ActivityMeter(model.rnn)
    detach = attach(meter, model)
    x1, x2 = _sparse_input(1), _sparse_input(2)
    model.rnn(x1)
    model.rnn(x2)
    detach()
    model.rnn(x1)  # no longer measured
    both = measure(model.rnn, torch.cat([x1, x2], 1))
    assert meter.report().layers[1].tokens == 2 * T * B
    assert meter.report().layers[1].effective_macs == pytest.approx(both.layers[1].effective_macs)
    with pytest.raises(ValueError, match="part of model"):
        attach(meter, nn.Sequential(nn.Linear(2, 2)))


class _CellNet(nn.Module):
    """Two stacked cells stepped over time, ``act`` modules on their outputs (ReLU after a
    ReLU cell changes nothing but lets NeuroBench see the activations), a Linear readout:
    a model NeuroBench can count (cells, not multi-layer torch RNNs)."""

    def __init__(self, cell: type, act: type = nn.Identity, **kw) -> None:
        super().__init__()
        self.c1, self.c2 = cell(I, H, **kw), cell(H, H, **kw)
        self.a1, self.a2 = act(), act()
        self.out = nn.Linear(H, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, I)
        h1 = h2 = x.new_zeros(x.size(0), H)
        ys = []
        for t in range(x.size(1)):
            h1 = self.a1(self.c1(x[:, t], h1))
            h2 = self.a2(self.c2(h1, h2))
            ys.append(self.out(h2))
        return torch.stack(ys, 1)


def _twin_rnn(net: _CellNet, cls: type, **kw) -> nn.Module:
    rnn = cls(I, H, num_layers=2, **kw).eval()
    with torch.no_grad():
        for k, cell in enumerate((net.c1, net.c2)):
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(rnn, f"{n}_l{k}").copy_(getattr(cell, n))
    return rnn


def _neurobench(net: nn.Module, x_bt: torch.Tensor) -> dict:
    pytest.importorskip("snntorch")
    nbm = pytest.importorskip("neurobench.models")
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations

    model = nbm.TorchModel(net)
    model.register_hooks()
    data = (x_bt, torch.zeros(x_bt.size(0)))
    preds = model(x_bt)
    return {"ActivationSparsity": ActivationSparsity()(model, preds, data),
            "SynapticOperations": SynapticOperations()(model, preds, data),
            "ConnectionSparsity": ConnectionSparsity()(model), "Footprint": Footprint()(model)}


def _ours(net: _CellNet, rnn: nn.Module, x: torch.Tensor) -> dict:
    meter = ActivityMeter(rnn, decoder=net.out)
    with torch.no_grad():
        out, _, seqs = meter.rnn(x)
        meter.update(x, seqs)
        meter.update_decoder(out)
    return neurobench_metrics(meter.report(), samples=x.size(1), model=net)


def test_same_numbers_as_neurobench_for_a_relu_rnn() -> None:
    torch.manual_seed(0)
    net = _CellNet(nn.RNNCell, nn.ReLU, nonlinearity="relu").eval()
    _prune(net)
    x = _sparse_input()
    theirs = _neurobench(net, x.transpose(0, 1))
    ours = _ours(net, _twin_rnn(net, nn.RNN, nonlinearity="relu"), x)
    assert 0.05 < ours["ActivationSparsity"] < 0.95  # ReLU units: some silent
    assert ours["ActivationSparsity"] == pytest.approx(theirs["ActivationSparsity"], abs=1e-12)
    assert ours["SynapticOperations"]["Effective_MACs"] < ours["SynapticOperations"]["Dense"]
    for key in ("Effective_MACs", "Effective_ACs", "Dense"):
        assert ours["SynapticOperations"][key] == pytest.approx(theirs["SynapticOperations"][key])
    assert round(ours["ConnectionSparsity"], 4) == theirs["ConnectionSparsity"]
    assert ours["Footprint"] == theirs["Footprint"]


def test_gru_elementwise_convention_differs_from_neurobench_by_the_zero_first_state() -> None:
    torch.manual_seed(0)
    net = _CellNet(nn.GRUCell).eval()
    _prune(net)
    x = _sparse_input()
    theirs = _neurobench(net, x.transpose(0, 1))["SynapticOperations"]
    ours = _ours(net, _twin_rnn(net, nn.GRU), x)["SynapticOperations"]
    assert ours["Dense"] == pytest.approx(theirs["Dense"])
    # NeuroBench skips z * h_{t-1} where h_{t-1} = 0: the zero initial state of both layers
    assert ours["Effective_MACs"] - theirs["Effective_MACs"] == pytest.approx(2 * H)


def test_connection_sparsity_and_footprint_of_dualsparse_layers() -> None:
    rnn = EGRU(I, H, num_layers=2)
    with torch.no_grad():
        rnn.weight_hh_l1.zero_()
    n_weights = sum(t.numel() for k in range(2) for t in rnn.layer_weights(k))
    assert connection_sparsity(rnn) == pytest.approx(H * 3 * H / n_weights)
    assert footprint(rnn) == 4 * (sum(p.numel() for p in rnn.parameters())
                                  + sum(b.numel() for b in rnn.buffers()))
    with pytest.raises(ValueError, match="no connection layers"):
        connection_sparsity(nn.ReLU())


def test_metric_set_per_sample_and_ac_layers() -> None:
    torch.manual_seed(0)
    rnn = EGRU(I, H, num_layers=2, threshold_mean=0.3).eval()
    x = (torch.rand(T, B, I) > 0.5).float()  # binary spikes into layer 0
    report = measure(rnn, x)
    m = neurobench_metrics(report, samples=B, ac_layers=[0])
    ops = m["SynapticOperations"]
    l0, l1 = report.layers
    assert ops["Effective_ACs"] == pytest.approx((l0.effective_macs + 3 * H) * T)
    assert ops["Effective_MACs"] == pytest.approx((l1.effective_macs + 3 * H) * T)
    assert ops["Dense"] == pytest.approx((l0.dense_macs + l1.dense_macs + 6 * H) * T)
    assert m["ActivationSparsity"] == pytest.approx(report.mean_activity_sparsity)
    bare = neurobench_metrics(report, samples=B, elementwise=False)["SynapticOperations"]
    assert bare["Dense"] == pytest.approx((l0.dense_macs + l1.dense_macs) * T)
    with pytest.raises(ValueError, match="ac_layers"):
        neurobench_metrics(report, samples=B, ac_layers=[5])
    with pytest.raises(ValueError, match="samples"):
        neurobench_metrics(report, samples=0)
