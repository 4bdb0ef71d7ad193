import pytest
import torch

from dualsparse.accounting import ActivityMeter, count_macs, ideal_reduction, measure
from dualsparse.models import EGRU, GRU, LSTM, LayerSequences


def test_hand_counted_small_case():
    """One layer, I=2, H=1, G=3, two steps, one sequence; every MAC counted by hand."""
    w_ih = torch.tensor([[1.0, 0.0], [2.0, 3.0], [0.0, 0.0]])  # column nnz: [2, 1]
    w_hh = torch.tensor([[0.0], [5.0], [6.0]])  # column nnz: [2]
    x = torch.tensor([[[1.0, 0.0]], [[4.0, 5.0]]])  # (T=2, B=1, I=2)
    y = torch.tensor([[[0.0]], [[0.7]]])  # step 0 silent, step 1 fires
    seq = LayerSequences(output=y, initial_output=torch.tensor([[0.9]]))
    meter = ActivityMeter()
    meter.update_layer(0, w_ih, w_hh, x, seq)
    r = meter.report().layers[0]
    # dense: 3 * 1 * (2 + 1) = 9 per token
    assert r.dense_macs == 9
    # effective: t0: x=[1,0] -> 2 ; y_prev=0.9 -> 2 ; t1: x=[4,5] -> 3 ; y_prev=0 -> 0
    assert r.effective_macs == (2 + 2 + 3 + 0) / 2
    assert r.activity == 0.5 and r.activity_sparsity == 0.5
    assert r.input_density == 3 / 4
    assert r.weight_density_ih == 3 / 6 and r.weight_density_hh == 2 / 3
    assert r.reduction == pytest.approx(9 / 3.5)


def test_count_macs():
    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert count_macs(w, x) == (12, 1 + 0 + 2)
    with pytest.raises(ValueError, match="features"):
        count_macs(w, torch.ones(2, 4))


def test_meter_equals_brute_force_loop_on_egru_with_zeros():
    torch.manual_seed(0)
    m = EGRU(6, [9, 5], threshold_mean=0.2).eval()
    with torch.no_grad():  # prune some weights by hand
        m.weight_hh_l0[torch.rand_like(m.weight_hh_l0) < 0.6] = 0
        m.weight_ih_l1[:, :3] = 0
    x = torch.randn(7, 3, 6)
    x[x.abs() < 0.5] = 0
    rep = measure(m, x)
    _, _, seqs = m(x, return_sequences=True)
    layer_in = x
    for k, seq in enumerate(seqs):
        w_ih, w_hh = m.weight_ih_l0 if k == 0 else m.weight_ih_l1, getattr(m, f"weight_hh_l{k}")
        total, prev = 0, seq.initial_output
        for t in range(7):
            for b in range(3):
                for j in range(w_ih.size(1)):
                    if layer_in[t, b, j] != 0:
                        total += int((w_ih[:, j] != 0).sum())
                for j in range(w_hh.size(1)):
                    if prev[b, j] != 0:
                        total += int((w_hh[:, j] != 0).sum())
            prev = seq.output[t]
        assert rep.layers[k].effective_macs == pytest.approx(total / 21)
        assert rep.layers[k].dense_macs == 3 * w_hh.size(1) * (w_ih.size(1) + w_hh.size(1))
        act = float((seq.output != 0).float().mean())
        assert rep.layers[k].activity == pytest.approx(act)
        dist = seq.internal - m.threshold(k)
        assert rep.layers[k].backward_sparsity == pytest.approx(
            float((dist.abs() >= m.surrogate.width).float().mean()))
        assert sum(rep.layers[k].distance_histogram["counts"]) == dist.numel()
        layer_in = seq.output
    assert rep.rnn_reduction > 1
    assert "reduction" in rep.format_table()
    assert rep.to_dict()["layers"][0]["layer"] == 0


def test_lstm_and_gru_dense_macs_and_decoder():
    torch.manual_seed(0)
    x = torch.randn(5, 2, 4)
    dec = torch.nn.Linear(6, 11)
    with torch.no_grad():
        dec.weight[:, 0] = 0
    rep = measure(LSTM(4, 6), x, decoder=dec)
    assert rep.layers[0].dense_macs == 4 * 6 * (4 + 6)
    assert rep.decoder.dense_macs == 66
    assert rep.decoder.effective_macs == pytest.approx(55)  # column 0 has no weights
    assert rep.layers[0].backward_sparsity is None
    assert measure(GRU(4, 6), x).layers[0].dense_macs == 3 * 6 * 10


def test_accumulates_over_batches_and_batch_first():
    torch.manual_seed(0)
    m = EGRU(3, 4, batch_first=True, threshold_mean=0.1).eval()
    x = torch.randn(2, 6, 3)
    meter = ActivityMeter(m)
    with torch.no_grad():
        for chunk in (x[:, :3], x[:, 3:]):
            _, _, s = m(chunk, return_sequences=True)
            meter.update(chunk, s)
    r = meter.report().layers[0]
    assert r.tokens == 12
    assert len(r.per_neuron_activity) == 4


def _same_report(a, b):
    for ra, rb in zip(a.layers, b.layers, strict=True):
        assert ra.tokens == rb.tokens
        assert ra.effective_macs == pytest.approx(rb.effective_macs)
        assert ra.dense_macs == rb.dense_macs
        assert ra.per_neuron_activity == pytest.approx(rb.per_neuron_activity)
        assert ra.backward_sparsity == pytest.approx(rb.backward_sparsity)


@pytest.mark.parametrize("steps", [5, 4])  # 4 == hidden size: a transposed count fits
def test_batch_first_and_unbatched_count_as_time_first(steps):
    torch.manual_seed(0)
    tf = EGRU(3, [4, 4], threshold_mean=0.1).eval()
    bf = EGRU(3, [4, 4], batch_first=True, threshold_mean=0.1).eval()
    bf.load_state_dict(tf.state_dict())
    x = torch.randn(steps, 2, 3)
    ref = measure(tf, x)
    _same_report(measure(bf, x.transpose(0, 1)), ref)
    # unbatched (T, I) is time-first for batch_first modules too, as in nn.GRU
    ref1 = measure(tf, x[:, 0])
    _same_report(measure(bf, x[:, 0]), ref1)


def test_meter_errors():
    with pytest.raises(ValueError, match="nothing measured"):
        ActivityMeter().report()
    with pytest.raises(ValueError, match="needs the meter"):
        ActivityMeter().update(torch.zeros(1, 1, 1), ())
    with pytest.raises(ValueError, match="activity_density must be > 0"):
        ideal_reduction(0.0, 0.5)
    assert ideal_reduction(0.2, 0.25) == pytest.approx(20.0)


def test_empty_batches_are_skipped_and_an_empty_meter_says_so():
    m = EGRU(3, 4).eval()
    meter = ActivityMeter(m, decoder=torch.nn.Linear(4, 5))
    with torch.no_grad():
        out, _, seqs = m(torch.zeros(6, 0, 3), return_sequences=True)
    meter.update(torch.zeros(6, 0, 3), seqs)
    meter.update_decoder(out)
    with pytest.raises(ValueError, match="nothing measured"):
        meter.report()


@pytest.mark.parametrize("reset_mode", ["subtract_threshold", "subtract_output", "none"])
def test_carried_distance_histogram_is_the_state_the_model_carries(reset_mode):
    """The carried (post-reset) histogram bins exactly the ``c`` the EGRU hands to its next
    step: fed one step per call, each call's returned state ``c_n`` is that value."""
    torch.manual_seed(1)
    m = EGRU(4, [6], threshold_mean=0.1, reset_mode=reset_mode).eval()
    x = torch.randn(9, 2, 4)
    meter = ActivityMeter(m, bins=40, distance_range=(-1.0, 1.0))
    carried, state = [], None
    with torch.no_grad():
        for t in range(9):
            _, state, seqs = m(x[t:t + 1], state, return_sequences=True)
            meter.update(x[t:t + 1], seqs)
            carried.append(state[0].c - m.threshold(0))
    expected = torch.histc(torch.stack(carried).double().clamp(-1, 1), bins=40, min=-1, max=1)
    rep = meter.report().layers[0]
    assert rep.carried_distance_histogram["counts"] == expected.tolist()
    pre, post = rep.distance_histogram["counts"], rep.carried_distance_histogram["counts"]
    assert rep.activity > 0  # some units fired
    assert sum(post) == sum(pre) == 9 * 2 * 6
    if reset_mode == "subtract_threshold":
        assert post != pre  # the reset moved the fired entries down by theta


def test_carried_histogram_absent_without_reset_mode_and_checked():
    m = EGRU(3, [4]).eval()
    x = torch.randn(5, 1, 3)
    _, _, seqs = m(x, return_sequences=True)
    meter = ActivityMeter()
    w_ih, w_hh, _, _ = m.layer_weights(0)
    meter.update_layer(0, w_ih, w_hh, x, seqs[0], m.threshold(0), m.surrogate)
    assert meter.report().layers[0].carried_distance_histogram is None
    with pytest.raises(ValueError, match="reset_mode"):
        meter.update_layer(0, w_ih, w_hh, x, seqs[0], m.threshold(0), reset_mode="zero")
