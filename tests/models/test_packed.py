"""PackedSequence in and out of EGRU/GRU/LSTM, as torch.nn.GRU/LSTM do; accounting skips padding."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dualsparse.accounting import measure
from dualsparse.models import EGRU, GRU, LSTM, stack_state

LENGTHS = [3, 7, 1, 7, 4]
I, H = 5, 8


def _packed(enforce_sorted: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    x = torch.randn(max(lengths), len(lengths), I, generator=g)
    return x, torch.tensor(lengths), pack_padded_sequence(x, torch.tensor(lengths),
                                                          enforce_sorted=enforce_sorted)


@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("ours_cls, ref_cls", [(GRU, torch.nn.GRU), (LSTM, torch.nn.LSTM)])
def test_packed_batch_equals_torch_rnn(ours_cls, ref_cls, enforce_sorted) -> None:
    torch.manual_seed(0)
    ours, ref = ours_cls(I, H, num_layers=2), ref_cls(I, H, num_layers=2)
    ref.load_state_dict(ours.state_dict())
    _, _, packed = _packed(enforce_sorted)
    h0 = torch.randn(2, len(LENGTHS), H)
    state = (h0, torch.randn_like(h0)) if ours_cls is LSTM else h0
    out, st = ours(packed, state)
    out_ref, st_ref = ref(packed, state)
    assert isinstance(out, type(out_ref))
    assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
    if enforce_sorted:
        assert out.sorted_indices is None
    else:
        assert torch.equal(out.sorted_indices, out_ref.sorted_indices)
    torch.testing.assert_close(out.data, out_ref.data, atol=1e-5, rtol=0)
    stacked = stack_state(st)
    for a, b in zip(stacked if ours_cls is LSTM else (stacked,),
                    st_ref if ours_cls is LSTM else (st_ref,), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # each sequence's own last step
    out.data.square().sum().backward()
    out_ref.data.square().sum().backward()
    for name in ("weight_hh_l0", "weight_ih_l1", "bias_hh_l1"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(ref, name).grad,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_packed_egru_equals_each_sequence_run_alone(fused) -> None:
    torch.manual_seed(0)
    rnn = EGRU(I, H, num_layers=2, threshold_mean=0.2, fused=fused)
    x, lengths, packed = _packed()
    out, st, seqs = rnn(packed, return_sequences=True)
    padded, got_lengths = pad_packed_sequence(out)
    assert got_lengths.tolist() == LENGTHS
    events = [pad_packed_sequence(s.events)[0] for s in seqs]
    for b, n in enumerate(LENGTHS):
        alone, alone_state, alone_seqs = rnn(x[:n, b:b + 1], return_sequences=True)
        torch.testing.assert_close(padded[:n, b], alone[:, 0], atol=1e-6, rtol=0)
        assert not padded[n:, b].any()  # padding stays zero
        for k in range(2):
            torch.testing.assert_close(st[k].c[b], alone_state[k].c[0], atol=1e-6, rtol=0)
            torch.testing.assert_close(st[k].y[b], alone_state[k].y[0], atol=1e-6, rtol=0)
            assert torch.equal(events[k][:n, b], alone_seqs[k].events[:, 0])


def test_batch_first_does_not_change_packed_input() -> None:
    torch.manual_seed(0)
    a = GRU(I, H, batch_first=True)
    b = GRU(I, H)
    b.load_state_dict(a.state_dict())
    _, _, packed = _packed()
    torch.testing.assert_close(a(packed)[0].data, b(packed)[0].data, rtol=0, atol=0)


def test_packed_input_is_checked() -> None:
    _, _, packed = _packed()
    with pytest.raises(ValueError, match="input: packed data must be"):
        GRU(I + 1, H)(packed)
    bad = packed._replace(data=packed.data.clone().index_fill_(0, torch.tensor([2]), float("nan")))
    with pytest.raises(ValueError, match="input contains NaN"):
        GRU(I, H)(bad)


def test_accounting_of_a_packed_batch_skips_the_padding() -> None:
    torch.manual_seed(0)
    rnn = EGRU(I, H, num_layers=2, threshold_mean=0.2).eval()
    x, _, packed = _packed()
    report = measure(rnn, packed)
    assert report.layers[0].tokens == sum(LENGTHS)
    # same numbers as measuring the sequences one by one, unpadded
    alone = [measure(rnn, x[:n, b:b + 1]) for b, n in enumerate(LENGTHS)]
    for k in range(2):
        eff = sum(r.layers[k].effective_macs * r.layers[k].tokens for r in alone)
        act = sum(r.layers[k].activity * r.layers[k].tokens for r in alone)
        assert report.layers[k].effective_macs * sum(LENGTHS) == pytest.approx(eff)
        assert report.layers[k].activity * sum(LENGTHS) == pytest.approx(act)
    # batch_first does not matter for packed input, in the counts either
    twin = EGRU(I, H, num_layers=2, threshold_mean=0.2, batch_first=True).eval()
    twin.load_state_dict(rnn.state_dict())
    assert measure(twin, packed).to_dict() == report.to_dict()
