"""SparseRuntime equals the PyTorch models (eval mode): EGRU (each reset mode), GRU, LSTM,
pruned and dense, every format, batch 1 and 8, 1 and 2 threads, stacked layers; segment,
streaming and batch modes give identical floats; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsparse.engine import formats as FM
from dualsparse.engine.runtime import SparseRuntime, compare_events
from dualsparse.models import EGRU, GRU, LSTM

ATOL = 2e-5


def _prune(model: torch.nn.Module, density: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("weight_"):
                p.mul_((torch.rand(p.shape, generator=g) < density).to(p.dtype))


def _egru(reset_mode: str = "subtract_threshold", **kw) -> EGRU:
    m = EGRU(12, [32, 24], reset_mode=reset_mode, threshold_mean=0.15, **kw)
    return m.eval()


def _check_egru(m: EGRU, x: torch.Tensor, block=(1, 1), threads: int = 1) -> int:
    """Runtime vs torch; returns the number of (near-threshold, explained) event mismatches.

    Outputs and ``c~`` must agree up to the first time step with an event mismatch (after it
    the two computations legitimately diverge for that unit); event mismatches are allowed
    only where ``|c~ - theta| < 1e-5``."""
    with torch.no_grad():
        out, _, seqs = m(x, return_sequences=True)
    rt = SparseRuntime.from_model(m, block=block, threads=threads)
    out_rt, seqs_rt = rt.run(x, return_sequences=True)
    mismatches, first = 0, x.shape[0]
    for k in range(m.num_layers):
        cmp = compare_events(seqs_rt[k]["events"], seqs[k].events, seqs_rt[k]["internal"],
                             seqs[k].internal, m.threshold(k).detach())
        assert cmp.unexplained == 0, cmp
        mismatches += cmp.mismatches
        bad = (seqs_rt[k]["events"] != seqs[k].events).flatten(1).any(1).nonzero()
        if len(bad):
            first = min(first, int(bad[0]))
    assert first > 0
    torch.testing.assert_close(out_rt[:first], out[:first], atol=ATOL, rtol=1e-4)
    for k in range(m.num_layers):
        torch.testing.assert_close(seqs_rt[k]["internal"][:first], seqs[k].internal[:first],
                                   atol=ATOL, rtol=1e-4)
    return mismatches


@pytest.mark.parametrize("reset_mode", ["subtract_threshold", "subtract_output", "none"])
@pytest.mark.parametrize("density", [1.0, 0.2])
@pytest.mark.parametrize("batch", [1, 8])
def test_egru_runtime_equals_torch(reset_mode, density, batch):
    torch.manual_seed(0)
    m = _egru(reset_mode)
    if density < 1:
        _prune(m, density)
    x = torch.randn(20, batch, 12)
    print(f"event mismatches near threshold: {_check_egru(m, x)}")
    # the layers really are sparse in activity
    with torch.no_grad():
        _, _, seqs = m(x, return_sequences=True)
    rate = float(seqs[0].events.mean())
    assert 0.01 < rate < 0.9


@pytest.fixture
def parallel_everywhere(monkeypatch):
    """Run even the tiny test matrices' recurrent products on parallel threads."""
    monkeypatch.setattr(FM, "PARALLEL_MIN_BYTES", 0)


@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4), "auto", (3, 2), "dense"])
def test_egru_runtime_formats_and_threads(block, parallel_everywhere):
    torch.manual_seed(1)
    m = _egru(zoneout=0.2)
    _prune(m, 0.5)
    x = torch.randn(15, 8, 12)
    for xb, threads in ((x, 2), (x[:, :1], 2), (x[:, :1], 1), (x, 1)):
        print(f"event mismatches near threshold: {_check_egru(m, xb, block, threads)}")


@pytest.mark.parametrize("cls", [EGRU, GRU, LSTM])
@pytest.mark.parametrize("block", [(1, 1), (16, 1), "dense"])
def test_segment_streaming_batch_and_threads_give_identical_floats(cls, block,
                                                                   parallel_everywhere):
    """Per-sequence active lists and a fixed summation order: a sequence's outputs do not
    depend on the mode (segment/streaming), the batch it runs in, or the thread count."""
    torch.manual_seed(7)
    kw = {"threshold_mean": 0.15} if cls is EGRU else {}
    m = cls(12, [40, 24], **kw).eval()
    _prune(m, 0.4)
    x = torch.randn(9, 4, 12)
    x[x.abs() < 0.5] = 0.0  # sparse inputs, different per sequence
    seg = SparseRuntime.from_model(m, block=block).run(x)
    rt2 = SparseRuntime.from_model(m, block=block, threads=2)
    torch.testing.assert_close(rt2.run(x), seg, atol=0, rtol=0)
    rt2.reset(4)
    stream = torch.stack([rt2.step(x[t]) for t in range(9)])
    torch.testing.assert_close(stream, seg, atol=0, rtol=0)
    single = SparseRuntime.from_model(m, block=block)
    for b in range(4):
        torch.testing.assert_close(single.run(x[:, b]), seg[:, b], atol=0, rtol=0)
    with torch.no_grad():
        ref = m(x)[0]
    torch.testing.assert_close(seg, ref, atol=ATOL, rtol=1e-4)


def test_stats_count_per_sequence_columns():
    torch.manual_seed(8)
    m = _egru()
    x = torch.randn(6, 3, 12)
    x[:, 0] = 0.0  # sequence 0 has no input at all
    rt = SparseRuntime.from_model(m)
    _, seqs = rt.run(x, return_sequences=True)
    st = rt.stats
    assert st.steps == 6 and st.batch == 3
    assert st.active_inputs[0] == int((x != 0).sum())
    prev = torch.cat([torch.zeros(1, 3, 32), seqs[0]["output"][:-1]])
    assert st.active_recurrent[0] == int((prev != 0).sum())
    assert st.nonzero_outputs[1] == int((seqs[1]["output"] != 0).sum())
    assert st.input_density(0) == pytest.approx(float((x != 0).float().mean()))
    assert set(st.seconds) == {"input", "recurrent", "decoder"}


def test_event_mismatches_are_counted_and_only_near_threshold():
    """A bigger, longer run: events may flip only where c~ is within 1e-5 of theta."""
    torch.manual_seed(2)
    m = EGRU(32, 128, threshold_mean=0.1).eval()
    _prune(m, 0.3)
    x = torch.randn(60, 4, 32)
    with torch.no_grad():
        _, _, seqs = m(x, return_sequences=True)
    _, seqs_rt = SparseRuntime.from_model(m).run(x, return_sequences=True)
    cmp = compare_events(seqs_rt[0]["events"], seqs[0].events, seqs_rt[0]["internal"],
                         seqs[0].internal, m.threshold(0).detach())
    assert cmp.total == 60 * 4 * 128
    assert cmp.unexplained == 0
    assert cmp.mismatches == cmp.near_threshold
    print(f"event mismatches: {cmp.mismatches} of {cmp.total} (all within 1e-5 of theta)")


def test_compare_events_separates_near_and_far_mismatches():
    theta = torch.tensor([0.5, 0.5])
    ev_ref = torch.tensor([[[1.0, 0.0]]])
    ev = torch.tensor([[[0.0, 1.0]]])
    internal = torch.tensor([[[0.5 + 1e-7, 0.9]]])
    cmp = compare_events(ev, ev_ref, internal, internal, theta)
    assert (cmp.mismatches, cmp.near_threshold, cmp.unexplained) == (2, 1, 1)


@pytest.mark.parametrize("cls", [GRU, LSTM])
@pytest.mark.parametrize("density", [1.0, 0.3])
@pytest.mark.parametrize("batch", [1, 8])
def test_gru_lstm_runtime_equals_torch(cls, density, batch):
    torch.manual_seed(3)
    m = cls(10, [20, 16], zoneout=0.1).eval()
    if density < 1:
        _prune(m, density)
    x = torch.randn(18, batch, 10)
    with torch.no_grad():
        out, state = m(x)
    rt = SparseRuntime.from_model(m)
    torch.testing.assert_close(rt.run(x), out, atol=ATOL, rtol=1e-4)
    for s_rt, s in zip(rt.state, state, strict=True):
        for a, b in zip(s_rt, s, strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("cls", [torch.nn.GRU, torch.nn.LSTM])
def test_torch_nn_modules_are_supported(cls):
    torch.manual_seed(4)
    m = cls(6, 14, num_layers=2).eval()
    x = torch.randn(10, 3, 6)
    with torch.no_grad():
        out, _ = m(x)
    torch.testing.assert_close(SparseRuntime.from_model(m).run(x), out, atol=ATOL, rtol=1e-4)


def test_streaming_step_equals_run_and_state_round_trip():
    torch.manual_seed(5)
    m = _egru()
    _prune(m, 0.5)
    x = torch.randn(12, 2, 12)
    rt = SparseRuntime.from_model(m)
    full = rt.run(x)
    rt.reset(2)
    steps = torch.stack([rt.step(x[t]) for t in range(12)])
    torch.testing.assert_close(steps, full, atol=0, rtol=0)
    # continue from a saved state == continuing the run
    rt.run(x[:6])
    saved = rt.state
    rt2 = SparseRuntime.from_model(m)
    rt2.set_state(saved)
    torch.testing.assert_close(rt2.run(x[6:], reset=False), full[6:], atol=0, rtol=0)
    # unbatched input
    rt.reset(1)
    y = rt.step(x[0, 0])
    assert y.shape == (24,)
    assert rt.run(x[:, 0]).shape == (12, 24)
    assert rt.stats.steps > 0 and 0 < rt.stats.recurrent_density(0) < 1


def test_runtime_errors():
    m = _egru()
    rt = SparseRuntime.from_model(m)
    with pytest.raises(ValueError, match="input must be"):
        rt.step(torch.randn(1, 5))
    with pytest.raises(ValueError, match="NaN"):
        rt.step(torch.full((1, 12), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        rt.run(torch.full((3, 1, 12), float("inf")))
    with pytest.raises(ValueError, match="reset"):
        rt.step(torch.randn(4, 12))
    with pytest.raises(ValueError, match="sequence must be"):
        rt.run(torch.randn(3, 1, 11))
    with pytest.raises(ValueError, match="eval mode"):
        SparseRuntime.from_model(EGRU(3, 4))
    with pytest.raises(ValueError, match="unsupported module"):
        SparseRuntime.from_model(torch.nn.Linear(3, 4).eval())
    with pytest.raises(ValueError, match="threads"):
        SparseRuntime(rt.packed, threads=0)
    with pytest.raises(ValueError, match="torch.Tensor or numpy"):
        rt.step([0.0] * 12)
    with pytest.raises(ValueError, match="state"):
        rt.set_state((np.zeros((1, 32), np.float32),))


def test_set_state_rejects_misshaped_tensors_and_keeps_the_state():
    torch.manual_seed(2)
    m = LSTM(4, 8).eval()
    rt = SparseRuntime.from_model(m)
    rt.run(torch.randn(3, 2, 4))
    before = rt.state
    # same number of values as (2, 8) but the wrong shape
    with pytest.raises(ValueError, match=r"state c of layer 0 has shape \(4, 4\), expected "
                                         r"\(2, 8\)"):
        rt.set_state(((torch.randn(2, 8), torch.randn(4, 4)),))
    with pytest.raises(ValueError, match=r"expected \(8,\)"):
        rt.set_state(((torch.randn(8), torch.randn(1, 8)),))
    with pytest.raises(ValueError, match="NaN"):
        rt.set_state(((torch.randn(2, 8), torch.full((2, 8), float("nan"))),))
    assert rt.batch_size == 2
    for a, b in zip(rt.state[0], before[0], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # unbatched state: batch 1
    rt.set_state(((torch.randn(8), torch.randn(8)),))
    assert rt.batch_size == 1 and rt.state[0].h.shape == (1, 8)


def test_numba_threads_sets_and_restores_the_count_even_on_error():
    import numba

    from dualsparse.engine.runtime import NumbaThreads

    outer = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with NumbaThreads(2):
            assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
        assert numba.get_num_threads() == 1
        with pytest.raises(RuntimeError), NumbaThreads(2):
            raise RuntimeError("inside")
        assert numba.get_num_threads() == 1
        with NumbaThreads(1):  # one thread: numba's setting is left alone
            assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(outer)
