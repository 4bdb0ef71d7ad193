"""Packing: round trip to the dense weights, panel pointers, format choice, and that
``check()`` catches every broken invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsparse.engine.formats import DenseMatrix, PackedMatrix
from dualsparse.engine.pack import (
    choose_block,
    choose_format,
    pack_dense,
    pack_matrix,
    pack_rnn,
)
from dualsparse.engine.rows import pack_rows
from dualsparse.models import EGRU, LSTM


def _pruned(rows: int, cols: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0.0
    w[:, 3] = 0.0  # an all-zero column
    return w


@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4), (3, 2), "64x1"])
@pytest.mark.parametrize("density", [1.0, 0.3, 0.02])
def test_round_trip_equals_dense(block, density):
    w = _pruned(150, 21, density, seed=int(density * 100))
    p = pack_matrix(w, block=block)
    np.testing.assert_array_equal(p.to_dense(), w)
    assert p.nnz == np.count_nonzero(w) and p.shape == (150, 21)
    if p.block == (1, 1):
        assert p.stored_values == p.nnz
        np.testing.assert_array_equal(p.column_nnz(), (w != 0).sum(0))
    else:
        assert p.stored_values >= p.nnz
    assert p.rows_padded % p.block[0] == 0 and p.rows_padded >= 150
    d = pack_dense(w)
    np.testing.assert_array_equal(d.to_dense(), w)
    assert d.rows_padded % 64 == 0 and d.nnz == p.nnz
    r = pack_rows(w)
    np.testing.assert_array_equal(r.to_dense(), w)
    assert r.nnz == p.nnz and r.stored_values == pack_matrix(w, (16, 1)).stored_values
    np.testing.assert_array_equal(r.column_nnz(), pack_matrix(w, (16, 1)).column_nnz())


def test_panel_pointers_partition_each_block_column_by_rows():
    w = _pruned(300, 10, 0.5)
    p = pack_matrix(w, block=(4, 1), panel_rows=50)
    assert p.panel_rows == 52  # rounded up to a multiple of br
    per = p.panel_rows // 4
    for bj in range(10):
        for q in range(p.n_panels):
            rows = p.indices[p.panel_ptr[q, bj]:p.panel_ptr[q + 1, bj]].astype(int)
            assert np.all((rows >= q * per) & (rows < (q + 1) * per))
        assert p.panel_ptr[0, bj] == p.indptr[bj] and p.panel_ptr[-1, bj] == p.indptr[bj + 1]


def _broken(p: PackedMatrix, field: str, value) -> PackedMatrix:
    q = PackedMatrix(p.shape, p.nnz, p.block, p.indptr.copy(), p.indices.copy(), p.data.copy(),
                     p.panel_ptr.copy(), p.panel_rows)
    setattr(q, field, value(getattr(q, field)) if callable(value) else value)
    return q


def _swap_first_two(a):
    a = a.copy()
    a[[0, 1]] = a[[1, 0]]
    return a


def test_check_catches_each_broken_invariant():
    w = _pruned(64, 12, 0.6)
    p = pack_matrix(w, block=(16, 1), panel_rows=32)
    p.check()
    cases = {
        "indptr must run": ("indptr", lambda a: a + 1),
        "non-decreasing": ("indptr", lambda a: np.concatenate([a[:1], a[2:3], a[1:2], a[3:]])),
        r"indices must lie in \[0, 4\)": ("indices", lambda a: np.where(a == a.max(), 4, a)
                                          .astype(a.dtype)),
        "strictly": ("indices", _swap_first_two),
        "dtype": ("indices", lambda a: a.astype(np.int64)),
        "data must have shape": ("data", lambda a: a[:-1].copy()),
        "NaN": ("data", lambda a: np.where(np.arange(a.size) == 0, np.nan, a)
                .astype(np.float32)),
        "nnz": ("nnz", 1),
        "panel_ptr must have shape": ("panel_ptr", lambda a: a[:-1].copy()),
        "panel_ptr must start": ("panel_ptr", lambda a: a + 1),
        "multiple of br": ("panel_rows", 40),
        "C-contiguous": ("data", lambda a: np.repeat(a, 2)[::2]),
    }
    for message, (field, value) in cases.items():
        with pytest.raises(ValueError, match=message):
            _broken(p, field, value).check()
    # a tile moved to the wrong panel
    q = pack_matrix(w, block=(16, 1), panel_rows=32)
    q.panel_ptr[1] = q.panel_ptr[0]
    with pytest.raises(ValueError, match="panel"):
        q.check()
    d2 = pack_dense(w[:50])
    d2.data[50] = 1.0  # row 50 of column 0 is padding
    with pytest.raises(ValueError, match="padding"):
        d2.check()
    with pytest.raises(ValueError, match="nnz"):
        DenseMatrix(d2.shape, 0, pack_dense(w[:50]).data).check()
    r = pack_rows(w[:50])
    r.col_index[[0, 1]] = r.col_index[[1, 0]]
    with pytest.raises(ValueError, match="increase strictly"):
        r.check()
    r = pack_rows(w[:50])
    r.data[-1] = 1.0  # row 63 of the last block row is padding
    with pytest.raises(ValueError, match="padding"):
        r.check()
    r = pack_rows(w[:50])
    r.rowptr[-1] += 1
    with pytest.raises(ValueError, match="rowptr"):
        r.check()


def test_packed_bytes_smaller_than_dense_when_sparse():
    w = _pruned(300, 200, 0.1)
    csc = pack_matrix(w)
    assert csc.nbytes < 0.35 * csc.dense_nbytes
    assert csc.indices.dtype == np.uint16  # 2-byte row indices
    dense_blocks = pack_matrix(np.ones((64, 32), np.float32), block=(16, 1))
    assert dense_blocks.nbytes < 1.15 * dense_blocks.dense_nbytes


def test_pack_rnn_matches_parameters_and_memory_report():
    torch.manual_seed(0)
    m = EGRU(5, [8, 6]).eval()
    with torch.no_grad():
        m.weight_hh_l0.mul_((torch.rand_like(m.weight_hh_l0) < 0.1).float())
    p = pack_rnn(m, block=(1, 1))
    p.check()
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
    lay = p.layers[1]
    lay.b_ih = lay.b_ih[:-1]
    with pytest.raises(ValueError, match="b_ih"):
        p.check()


def test_pack_errors():
    with pytest.raises(ValueError, match="NaN"):
        pack_matrix(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        pack_matrix(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="block"):
        pack_matrix(np.ones((4, 4), np.float32), block=(0, 1))
    with pytest.raises(ValueError, match="panel_rows"):
        pack_matrix(np.ones((4, 4), np.float32), panel_rows=0)
    with pytest.raises(ValueError, match="unsupported module"):
        pack_rnn(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="bidirectional"):
        pack_rnn(torch.nn.GRU(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size"):
        pack_rnn(torch.nn.LSTM(3, 4, proj_size=2))


def test_auto_format_choice():
    rng = np.random.default_rng(7)
    dense = rng.standard_normal((64, 20)).astype(np.float32)
    assert choose_block(dense) == (16, 1)
    assert isinstance(choose_format(dense), DenseMatrix)
    assert choose_block(_pruned(64, 20, 0.05)) == (1, 1)
    assert choose_format(_pruned(64, 20, 0.05)).block == (1, 1)
    rowblocks = np.kron(rng.random((4, 20)) < 0.2, np.ones((16, 1))).astype(np.float32)
    assert choose_block(rowblocks * dense) == (16, 1)
    p = choose_format(rowblocks * dense)
    assert p.block == (16, 1) and p.stored_values == p.nnz
    np.testing.assert_array_equal(p.to_dense(), rowblocks * dense)
    assert isinstance(choose_format(rowblocks * dense, "dense"), DenseMatrix)
    assert choose_format(dense, (4, 4)).block == (4, 4)


@pytest.mark.parametrize("shape,dtype", [(1, np.float32), ((3, 5), np.float32),
                                         ((1000, 17), np.int32), ((2, 3, 4), np.uint16)])
def test_aligned_arrays(shape, dtype):
    """The engine's allocations start on a cache line, whatever NumPy would have given."""
    from dualsparse.engine.arrays import ALIGN_BYTES, aligned_copy, aligned_empty, aligned_zeros

    for _ in range(3):  # several allocations: NumPy's own alignment varies between them
        a = aligned_empty(shape, dtype)
        assert a.ctypes.data % ALIGN_BYTES == 0 and a.flags.c_contiguous
        assert a.shape == (np.empty(shape).shape) and a.dtype == dtype
        assert not aligned_zeros(shape, dtype).any()
    src = np.arange(60, dtype=np.float64).reshape(3, 4, 5).transpose(2, 0, 1)  # not contiguous
    c = aligned_copy(src, np.float32)
    assert c.ctypes.data % ALIGN_BYTES == 0 and c.flags.c_contiguous and c.dtype == np.float32
    np.testing.assert_array_equal(c, src.astype(np.float32))


def test_aligned_and_bias_rows_reject_bad_shapes():
    from dualsparse.engine.arrays import aligned_empty
    from dualsparse.engine.products import bias_rows

    with pytest.raises(ValueError, match="non-negative integers"):
        aligned_empty((3, -1))
    with pytest.raises(ValueError, match="non-negative integers"):
        aligned_empty((2.5,))
    mat = pack_dense(np.ones((70, 3), np.float32))  # 128 padded rows
    assert bias_rows(np.ones(70, np.float32), mat).shape == (128,)
    with pytest.raises(ValueError, match="at most 128 values"):
        bias_rows(np.ones(129, np.float32), mat)
    with pytest.raises(ValueError, match="1-D"):
        bias_rows(np.ones((2, 3), np.float32), mat)


def test_packed_weights_and_runtime_buffers_are_aligned():
    """Every array that the SIMD kernels load 16 floats at a time from is 64-byte aligned:
    the packed weights of each format, the column-major copy, and the runtime's buffers."""
    from dualsparse.engine.arrays import ALIGN_BYTES
    from dualsparse.engine.runtime import SparseRuntime

    rng = np.random.default_rng(0)
    w = rng.standard_normal((200, 300)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0.0
    dense = pack_dense(w)
    arrays = [dense.data, dense.columns(), pack_matrix(w, block=(16, 1)).data,
              pack_matrix(w, block=(1, 1)).data, pack_rows(w).data]
    torch.manual_seed(0)
    rt = SparseRuntime.from_model(EGRU(24, 40, num_layers=2).eval())
    rt.reset(3)
    for st in rt._layers:
        arrays += [st.gh, st.y, st.c, st.ev, st.ct, *st.buffers(5, False, True)[:2]]
    assert all(a.ctypes.data % ALIGN_BYTES == 0 for a in arrays)
