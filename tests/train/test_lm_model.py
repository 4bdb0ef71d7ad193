"""RNNLanguageModel: shapes, tying, AWD-style dropouts, per-layer sequences, validation."""

from __future__ import annotations

import pytest
import torch

from dualsparse.models import EGRU, LSTM
from dualsparse.models.lm import RNNLanguageModel, count_parameters


def _tokens(t: int = 7, b: int = 3, v: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, v, (t, b), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cell", ["egru", "lstm", "gru"])
def test_shapes_state_and_sequences(cell: str) -> None:
    torch.manual_seed(0)
    m = RNNLanguageModel(50, 8, [12, 10, 8], cell=cell)
    x = _tokens()
    logits, state, seqs = m(x, return_sequences=True)
    assert logits.shape == (7, 3, 50)
    assert len(state) == 3 and [s[0].shape[-1] for s in state] == [12, 10, 8]
    assert [t.shape[-1] for t in seqs.layer_inputs] == [8, 12, 10]
    assert [s.output.shape for s in seqs.layers] == [(7, 3, 12), (7, 3, 10), (7, 3, 8)]
    assert (seqs.layers[0].events is not None) == (cell == "egru")
    # the carried state continues the sequence exactly
    full, _ = m(torch.cat([x, x]))
    _, st = m(x)
    second, _ = m(x, st)
    torch.testing.assert_close(second, full[7:])


def test_tied_decoder_shares_the_embedding_and_counts_once() -> None:
    tied = RNNLanguageModel(50, 8, [12, 8])
    assert tied.tied and tied.decoder.weight is tied.embedding.weight
    untied = RNNLanguageModel(50, 8, [12, 8], tie_weights=False)
    assert not untied.tied
    assert count_parameters(untied) - count_parameters(tied) == 50 * 8
    assert not RNNLanguageModel(50, 8, [12, 10]).tied  # auto: sizes differ
    with pytest.raises(ValueError, match="cannot tie"):
        RNNLanguageModel(50, 8, [12, 10], tie_weights=True)
    torch.testing.assert_close(tied.decoder.bias, torch.zeros(50))


def test_layers_are_single_layer_modules_matching_a_manual_stack() -> None:
    torch.manual_seed(1)
    m = RNNLanguageModel(50, 8, [12, 8], cell="egru", cell_options={"threshold_mean": 0.1})
    m.eval()
    x = _tokens()
    logits, _, seqs = m(x, return_sequences=True)
    assert all(isinstance(r, EGRU) and r.num_layers == 1 for r in m.rnns)
    h = m.embedding(x)
    for rnn in m.rnns:
        h, _ = rnn(h)
    torch.testing.assert_close(logits, m.decoder(h))
    torch.testing.assert_close(seqs.decoder_input, h)
    assert m.rnns[0].threshold(0).mean().item() == pytest.approx(0.1, abs=0.05)


def test_locked_dropout_masks_are_shared_over_time_and_off_in_eval() -> None:
    torch.manual_seed(2)
    m = RNNLanguageModel(50, 16, [16, 16], cell="lstm", dropouti=0.5, dropouth=0.5,
                         dropout=0.5)
    x = _tokens(t=6, b=4)
    m.train()
    _, _, seqs = m(x, return_sequences=True)
    emb = m.embedding(x)
    # dropouti: for each (sequence, feature) either dropped at every step or scaled by 2
    ratio = seqs.layer_inputs[0] / emb
    assert torch.all((ratio == ratio[0:1]) | torch.isnan(ratio))
    assert set(torch.unique(ratio[~torch.isnan(ratio)].round(decimals=4)).tolist()) <= {0.0, 2.0}
    between = seqs.layer_inputs[1] / seqs.layers[0].output
    zero_cols = between[0] == 0
    assert zero_cols.any() and torch.all(between[:, zero_cols] == 0)
    m.eval()
    a, _ = m(x)
    b, _ = m(x)
    torch.testing.assert_close(a, b)


def test_embedding_dropout_and_dropconnect_are_applied_in_training() -> None:
    torch.manual_seed(3)
    m = RNNLanguageModel(50, 8, [8], cell="gru", dropoute=0.5, wdrop=0.5)
    assert m.rnns[0].dropconnect == 0.5
    x = torch.arange(20).view(10, 2) % 50
    m.train()
    _, _, seqs = m(x, return_sequences=True)
    rows = seqs.layer_inputs[0].reshape(-1, 8)
    assert ((rows == 0).all(1)).any()  # some words dropped entirely
    m.eval()
    _, _, seqs = m(x, return_sequences=True)
    assert not ((seqs.layer_inputs[0].reshape(-1, 8) == 0).all(1)).any()


def test_gradients_reach_thresholds_embedding_and_all_layers() -> None:
    torch.manual_seed(4)
    m = RNNLanguageModel(50, 8, [12, 8], cell="egru",
                         cell_options={"threshold_mean": 0.05, "surrogate_width": 1.0})
    logits, _ = m(_tokens())
    logits.logsumexp(-1).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.rnns[0].threshold_raw_l0.grad.abs().sum() > 0


def test_config_roundtrip() -> None:
    m = RNNLanguageModel(50, 8, [12, 8], cell="egru", dropout=0.1, wdrop=0.2,
                         cell_options={"threshold_mean": 0.01, "surrogate_width": 3.6})
    m2 = RNNLanguageModel.from_config(m.get_config())
    assert m2.get_config() == m.get_config()
    m2.load_state_dict(m.state_dict())
    with pytest.raises(ValueError, match="unknown RNNLanguageModel config"):
        RNNLanguageModel.from_config({**m.get_config(), "nlayers": 2})


def test_bad_input_is_rejected_clearly() -> None:
    m = RNNLanguageModel(50, 8, [8], cell="lstm")
    assert isinstance(m.rnns[0], LSTM)
    with pytest.raises(ValueError, match=r"\(T, B\)"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        m(torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        m(torch.full((3, 2), 50))
    with pytest.raises(ValueError, match="one entry per layer"):
        m(torch.zeros(3, 2, dtype=torch.long), state=())
    with pytest.raises(ValueError, match="unknown cell"):
        RNNLanguageModel(50, 8, [8], cell="rnn")
    with pytest.raises(ValueError, match="only apply to the egru"):
        RNNLanguageModel(50, 8, [8], cell="lstm", cell_options={"threshold_mean": 0.1})
    with pytest.raises(ValueError, match="dropouti"):
        RNNLanguageModel(50, 8, [8], dropouti=1.0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        RNNLanguageModel(50, 8, [])


def test_hidden_sizes_accepts_one_int_and_rejects_junk() -> None:
    from dualsparse.models.lm import RNNLanguageModel as LM

    assert LM(20, 8, 8, cell="gru").hidden_sizes == (8,)
    with pytest.raises(ValueError, match="hidden_sizes"):
        LM(20, 8, "many", cell="gru")


def test_init_range_draws_every_recurrent_weight_uniformly_and_keeps_thresholds() -> None:
    torch.manual_seed(0)
    default = RNNLanguageModel(50, 8, [400, 400], cell="egru")
    torch.manual_seed(0)
    m = RNNLanguageModel(50, 8, [400, 400], cell="egru", init_range=0.1)
    for name, p in m.rnns.named_parameters():
        if name.startswith(("weight_", "bias_")):
            # nn.GRU's init for H = 400 is U(-0.05, 0.05): a range of 0.1 must reach past it
            assert float(p.abs().max()) <= 0.1
            assert float(p.abs().max()) > 0.09
            assert abs(float(p.mean())) < 0.01
    thr = [n for n, _ in m.rnns.named_parameters() if "threshold" in n]
    assert thr
    for n in thr:
        torch.testing.assert_close(dict(m.rnns.named_parameters())[n],
                                   dict(default.rnns.named_parameters())[n])
    assert RNNLanguageModel.from_config(m.get_config()).init_range == 0.1
    for bad in (0.0, -1.0, float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="init_range"):
            RNNLanguageModel(50, 8, [4], init_range=bad)
