"""Packing: round trip to the dense weights (zeros included), splits, memory, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsparse.engine.pack import choose_block, pack_matrix, pack_rnn
from dualsparse.models import EGRU, LSTM


def _pruned(rows: int, cols: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0.0
    w[:, 3] = 0.0  # an all-zero column
    return w


@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4), (3, 2)])
@pytest.mark.parametrize("density", [1.0, 0.3, 0.02])
def test_round_trip_equals_dense(block, density):
    w = _pruned(45, 21, density, seed=int(density * 100))
    p = pack_matrix(w, block=block, nparts=3)
    np.testing.assert_array_equal(p.to_dense(), w)
    assert p.nnz == np.count_nonzero(w)
    assert p.shape == (45, 21)
    if block == (1, 1):
        assert p.stored_values == p.nnz
        np.testing.assert_array_equal(p.column_nnz(), (w != 0).sum(0))
    else:
        assert p.stored_values >= p.nnz
    assert p.rows_padded % block[0] == 0 and p.rows_padded >= 45


def test_row_splits_partition_the_tiles():
    w = _pruned(64, 10, 0.5)
    p = pack_matrix(w, block=(4, 1), nparts=4)
    nbr = p.rows_padded // 4
    for bj in range(len(p.indptr) - 1):
        s = p.splits[bj]
        assert s[0] == p.indptr[bj] and s[-1] == p.indptr[bj + 1]
        assert np.all(np.diff(s) >= 0)
        for part in range(4):
            rows = p.indices[s[part]:s[part + 1]].astype(int)
            lo, hi = int(np.ceil(nbr * part / 4)), int(np.ceil(nbr * (part + 1) / 4))
            assert np.all((rows >= lo) & (rows < hi))


def test_packed_bytes_smaller_than_dense_when_sparse():
    w = _pruned(300, 200, 0.1)
    csc = pack_matrix(w)
    assert csc.nbytes < 0.25 * csc.dense_nbytes
    assert csc.indices.dtype == np.uint16  # 2-byte row indices
    dense_blocks = pack_matrix(np.ones((64, 32), np.float32), block=(16, 1))
    # dense columns: one index per 16 values on top of the values
    assert dense_blocks.nbytes < 1.1 * dense_blocks.dense_nbytes


def test_pack_rnn_matches_parameters_and_memory_report():
    torch.manual_seed(0)
    m = EGRU(5, [8, 6]).eval()
    with torch.no_grad():
        m.weight_hh_l0.mul_((torch.rand_like(m.weight_hh_l0) < 0.1).float())
    p = pack_rnn(m, block=(1, 1))
    assert [lay.hidden_size for lay in p.layers] == [8, 6]
    assert [lay.input_size for lay in p.layers] == [5, 8]
    for k, lay in enumerate(p.layers):
        np.testing.assert_array_equal(lay.w_ih.to_dense(), getattr(m, f"weight_ih_l{k}")
                                      .detach().numpy())
        np.testing.assert_array_equal(lay.w_hh.to_dense(), getattr(m, f"weight_hh_l{k}")
                                      .detach().numpy())
        np.testing.assert_array_equal(lay.threshold, m.threshold(k).detach().numpy())
        assert lay.reset_mode == m.reset_mode and lay.events
    rep = p.memory_report()
    assert rep["packed_bytes"] == p.nbytes and rep["dense_bytes"] == p.dense_nbytes
    lstm = pack_rnn(LSTM(4, 5, bias=False).eval())
    assert lstm.layers[0].num_gates == 4 and not lstm.layers[0].b_ih.any()


def test_pack_errors():
    with pytest.raises(ValueError, match="NaN"):
        pack_matrix(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        pack_matrix(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="block"):
        pack_matrix(np.ones((4, 4), np.float32), block=(0, 1))
    with pytest.raises(ValueError, match="nparts"):
        pack_matrix(np.ones((4, 4), np.float32), nparts=0)
    with pytest.raises(ValueError, match="unsupported module"):
        pack_rnn(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="bidirectional"):
        pack_rnn(torch.nn.GRU(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size"):
        pack_rnn(torch.nn.LSTM(3, 4, proj_size=2))


def test_auto_block_choice():
    rng = np.random.default_rng(7)
    dense = rng.standard_normal((64, 20)).astype(np.float32)
    assert choose_block(dense) == (16, 1)
    assert choose_block(_pruned(64, 20, 0.05)) == (1, 1)
    rowblocks = np.kron(rng.random((4, 20)) < 0.2, np.ones((16, 1))).astype(np.float32)
    assert choose_block(rowblocks * dense) == (16, 1)
    p = pack_matrix(rowblocks * dense, block="auto")
    assert p.block == (16, 1) and p.stored_values == p.nnz
    np.testing.assert_array_equal(p.to_dense(), rowblocks * dense)
