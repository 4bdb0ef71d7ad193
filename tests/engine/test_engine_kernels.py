"""Each numba kernel against a numpy (or torch) reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsparse.engine import kernels as K
from dualsparse.engine.pack import pack_matrix
from dualsparse.models.egru import egru_step
from dualsparse.models.rnn import gru_step, lstm_step
from dualsparse.models.surrogate import Surrogate


def _sparse_input(cols: int, batch: int, density: float, rng) -> np.ndarray:
    x = rng.standard_normal((cols, batch)).astype(np.float32)
    x[rng.random((cols, batch)) >= density] = 0.0
    return x


def _matrix(rows: int, cols: int, density: float, rng) -> np.ndarray:
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0.0
    return w


def test_active_columns_is_the_union_of_nonzero_rows():
    rng = np.random.default_rng(1)
    x = _sparse_input(50, 3, 0.1, rng)
    active = np.zeros(50, np.int32)
    n = K.active_columns(x, active)
    np.testing.assert_array_equal(active[:n], np.nonzero((x != 0).any(1))[0])


@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4)])
def test_single_vector_accumulate_matches_numpy(block):
    rng = np.random.default_rng(2)
    w = _matrix(70, 33, 0.3, rng)
    p = pack_matrix(w, block=block)
    x = _sparse_input(33, 1, 0.3, rng)
    active = np.zeros(33, np.int32)
    n = K.active_columns(x, active)
    bias = rng.standard_normal(p.rows_padded).astype(np.float32)
    out = bias.copy()
    if block == (1, 1):
        K.accumulate_csc(p.indptr, p.indices, p.data, x.reshape(-1), active, n, out)
    else:
        K.accumulate_block(p.indptr, p.indices, p.data, *block, x.reshape(-1), active, n, out)
    ref = bias[:70].astype(np.float64) + w.astype(np.float64) @ x[:, 0].astype(np.float64)
    np.testing.assert_allclose(out[:70], ref, rtol=1e-5, atol=1e-5)
    special = {(16, 1): K.accumulate_block16, (4, 4): K.accumulate_block4x4}.get(block)
    if special is not None:
        out2 = bias.copy()
        special(p.indptr, p.indices, p.data, x.reshape(-1), active, n, out2)
        np.testing.assert_array_equal(out2, out)


@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4)])
@pytest.mark.parametrize("parallel", [False, True])
def test_batched_accumulate_over_union_matches_numpy(block, parallel):
    rng = np.random.default_rng(3)
    w = _matrix(50, 40, 0.25, rng)
    p = pack_matrix(w, block=block, nparts=2)
    x = _sparse_input(40, 8, 0.1, rng)
    active = np.zeros(40, np.int32)
    n = K.active_columns(x, active)
    out = np.zeros((p.rows_padded, 8), np.float32)
    if parallel:
        K.accumulate_parallel(p.indptr, p.indices, p.data, p.splits, *block, x, active, n, out)
    else:
        K.accumulate_batch(p.indptr, p.indices, p.data, *block, x, active, n, out)
    ref = w.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_allclose(out[:50], ref, rtol=1e-5, atol=1e-5)
    # inactive columns are never read: poisoning their weights changes nothing
    inactive = np.setdiff1d(np.arange(40), active[:n])
    if block == (1, 1) and len(inactive):
        w2 = w.copy()
        w2[:, inactive] = 1e30
        p2 = pack_matrix(w2, block=block)
        out2 = np.zeros_like(out)
        K.accumulate_batch(p2.indptr, p2.indices, p2.data, 1, 1, x, active, n, out2)
        np.testing.assert_array_equal(out2, out)


def _gate_inputs(h: int, gates: int, batch: int, rng):
    gi = rng.standard_normal((gates * h, batch)).astype(np.float32)
    gh = rng.standard_normal((gates * h, batch)).astype(np.float32)
    return gi, gh


@pytest.mark.parametrize("mode,code", [("subtract_threshold", 0), ("subtract_output", 1),
                                       ("none", 2)])
@pytest.mark.parametrize("zone", [0.0, 0.25])
def test_egru_gates_match_egru_step(mode, code, zone):
    rng = np.random.default_rng(4)
    h, b = 40, 3
    gi, gh = _gate_inputs(h, 3, b, rng)
    y = np.abs(rng.standard_normal((h, b))).astype(np.float32) * (rng.random((h, b)) < 0.3)
    y = y.astype(np.float32)
    c = rng.standard_normal((h, b)).astype(np.float32)
    theta = rng.uniform(0.05, 0.6, h).astype(np.float32)
    # torch reference, one batch column at a time: gh = W_hh y + b_hh is fed as the bias of a
    # zero weight, so that y (needed by subtract_output) is the real previous output
    cols = [egru_step(torch.from_numpy(gi[:, j][None].copy()), torch.from_numpy(y[:, j][None]
                                                                                .copy()),
                      torch.from_numpy(c[:, j][None].copy()), torch.zeros(3 * h, h),
                      torch.from_numpy(gh[:, j].copy()), torch.from_numpy(theta), Surrogate(),
                      mode) for j in range(b)]
    res = type(cols[0])(*(torch.cat(t) for t in zip(*cols, strict=True)))
    c_ref = res.c.numpy().T
    if zone:
        c_ref = np.float32(zone) * c.astype(np.float32) + np.float32(1 - zone) * c_ref
    ev, ct = np.zeros((h, b), np.float32), np.zeros((h, b), np.float32)
    active = np.zeros(h, np.int32)
    yk, ck = y.copy(), c.copy()
    n = K.egru_gates(gi, gh, yk, ck, theta, code, True, np.float32(zone), np.float32(1 - zone),
                     ev, ct, active)
    np.testing.assert_allclose(ct, res.c_tilde.numpy().T, rtol=1e-6, atol=1e-6)
    near = np.abs(res.c_tilde.numpy().T - theta[:, None]) < 1e-6
    assert np.array_equal(ev[~near], res.events.numpy().T[~near])
    np.testing.assert_allclose(yk, res.y.numpy().T, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ck, c_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(active[:n], np.nonzero((yk != 0).any(1))[0])
    assert 0 < n < h


def test_egru_gates_without_events_is_a_gru_of_c():
    rng = np.random.default_rng(5)
    h = 16
    gi, gh = _gate_inputs(h, 3, 1, rng)
    c = rng.standard_normal((h, 1)).astype(np.float32)
    y, cc = c.copy(), c.copy()
    ev, ct, active = np.zeros((h, 1), np.float32), np.zeros((h, 1), np.float32), np.zeros(h,
                                                                                     np.int32)
    n = K.egru_gates(gi, gh, y, cc, np.zeros(h, np.float32), 0, False, np.float32(0),
                     np.float32(1), ev, ct, active)
    ref = gru_step(torch.from_numpy(gi.T.copy()), torch.from_numpy(c.T.copy()),
                   torch.zeros(3 * h, h), torch.from_numpy(gh[:, 0].copy()))
    np.testing.assert_allclose(y[:, 0], ref[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, cc)
    assert n == h and np.all(ev == 1)


def test_gru_and_lstm_gates_match_torch_steps():
    rng = np.random.default_rng(6)
    h, b = 24, 2
    gi, gh = _gate_inputs(h, 3, b, rng)
    hid = rng.standard_normal((h, b)).astype(np.float32)
    active = np.zeros(h, np.int32)
    hk = hid.copy()
    n = K.gru_gates(gi, gh, hk, np.float32(0), np.float32(1), active)
    # gh = W_hh h + b_hh: feed it as a bias with a zero weight, column by column
    for j in range(b):
        ref = gru_step(torch.from_numpy(gi[:, j][None].copy()),
                       torch.from_numpy(hid[:, j][None].copy()), torch.zeros(3 * h, h),
                       torch.from_numpy(gh[:, j].copy()))
        np.testing.assert_allclose(hk[:, j], ref[0].numpy(), rtol=1e-6, atol=1e-6)
    assert n == h
    gi4, gh4 = _gate_inputs(h, 4, b, rng)
    cc = rng.standard_normal((h, b)).astype(np.float32)
    hk, ck = hid.copy(), cc.copy()
    K.lstm_gates(gi4, gh4, hk, ck, np.float32(0), np.float32(1), active)
    for j in range(b):
        rh, rc = lstm_step(torch.from_numpy(gi4[:, j][None].copy()),
                           torch.from_numpy(hid[:, j][None].copy()),
                           torch.from_numpy(cc[:, j][None].copy()), torch.zeros(4 * h, h),
                           torch.from_numpy(gh4[:, j].copy()))
        np.testing.assert_allclose(hk[:, j], rh[0].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ck[:, j], rc[0].numpy(), rtol=1e-6, atol=1e-6)
