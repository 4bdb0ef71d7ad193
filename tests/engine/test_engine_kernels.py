"""Each numba kernel against a numpy (or torch) reference: the multi-vector event
accumulate in every format (serial, parallel, any grouping: bitwise equal), and the fused
gate kernels against the PyTorch cell steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsparse.engine import formats as FM
from dualsparse.engine import gates as K
from dualsparse.engine import kernels as KA
from dualsparse.engine.pack import pack_dense, pack_matrix
from dualsparse.engine.rows import pack_rows
from dualsparse.models.egru import egru_step
from dualsparse.models.rnn import gru_step, lstm_step
from dualsparse.models.surrogate import Surrogate


def _sparse_rows(n: int, cols: int, density: float, rng) -> np.ndarray:
    """(n, cols) float32, each row with its own random nonzeros."""
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[rng.random((n, cols)) >= density] = 0.0
    return x


def _matrix(rows: int, cols: int, density: float, rng) -> np.ndarray:
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0.0
    return w


def _lists(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.zeros(x.shape, np.int32)
    cnt = np.zeros(x.shape[0], np.int32)
    KA.active_lists(x, idx, cnt)
    return idx, cnt


def test_active_lists_are_each_rows_nonzeros():
    rng = np.random.default_rng(1)
    x = _sparse_rows(5, 50, 0.2, rng)
    idx, cnt = _lists(x)
    for v in range(5):
        np.testing.assert_array_equal(idx[v, :cnt[v]], np.nonzero(x[v])[0])
    assert KA.active_lists(x, idx, cnt) == np.count_nonzero(x)


def test_active_lists_edge_rows():
    """Branch-free compaction: an all-zero row, an all-nonzero row, -0.0 (a zero) and a
    nonzero in the last column; stale list entries from an earlier call do not leak."""
    x = np.zeros((4, 7), np.float32)
    x[1] = np.arange(1, 8)
    x[2, 3] = -0.0
    x[3, 6] = 2.5
    idx = np.full(x.shape, 99, np.int32)
    cnt = np.full(4, 99, np.int32)
    assert KA.active_lists(x, idx, cnt) == 8
    np.testing.assert_array_equal(cnt, [0, 7, 0, 1])
    np.testing.assert_array_equal(idx[1], np.arange(7))
    assert idx[3, 0] == 6


# (1, 5): one-row tiles wider than one column (once read as CSC, a bug the fuzzers found);
# (4, 4), (4, 2): the 4-row loop; (64, 1), (16, 3), (32, 32): the loop for heights 16k
FORMATS = [(1, 1), (16, 1), (4, 4), (4, 2), (3, 2), (1, 5), (64, 1), (16, 3), (32, 32),
           "dense", "rows"]


def _pack(w: np.ndarray, fmt):
    if fmt == "rows":
        return pack_rows(w)
    return pack_dense(w) if fmt == "dense" else pack_matrix(w, block=fmt, panel_rows=32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [1, 7])
def test_accumulate_matches_numpy_per_vector(fmt, n, monkeypatch):
    monkeypatch.setattr(FM, "PARALLEL_MIN_BYTES", 0)  # threads even for this small matrix
    rng = np.random.default_rng(2)
    w = _matrix(150, 45, 0.3, rng)
    p = _pack(w, fmt)
    x = _sparse_rows(n, 45, 0.3, rng)
    idx, cnt = _lists(x)
    bias = rng.standard_normal(p.rows_padded).astype(np.float32)
    out = np.tile(bias, (n, 1))
    p.accumulate(x, idx, cnt, out)
    ref = bias[:150].astype(np.float64) + x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(out[:, :150], ref, rtol=1e-5, atol=1e-5)
    # threads (row groups in parallel) and any grouping give the same floats
    for threads in (2, 3):
        out2 = np.tile(bias, (n, 1))
        p.accumulate(x, idx, cnt, out2, threads=threads)
        np.testing.assert_array_equal(out2, out)
    if fmt == "rows":  # row-major tiles add the same terms in the same order as 16x1 columns
        out16 = np.tile(bias, (n, 1))
        pack_matrix(w, block=(16, 1)).accumulate(x, idx, cnt, out16)
        np.testing.assert_array_equal(out16, out)
    if fmt == "dense" and n == 1:  # the single-vector kernel of large (streamed) matrices
        assert p.by_columns is False  # decided at the first single vector: a small matrix
        monkeypatch.setattr(FM, "COLUMNS_MIN_BYTES", 0)
        p.by_columns = None
        assert p.kernel_args(1)[0] == KA.FORMAT_CODES["dense_columns"]
        assert p.kernel_args(1) is p.kernel_args(1)  # built once (streaming hot path)
        assert p.nbytes == 2 * p.data.nbytes  # the column-major copy, kept
        np.testing.assert_array_equal(p.columns().reshape(45, -1)[:, :150], w.T)
        for threads in (1, 2):
            out4 = np.tile(bias, (n, 1))
            p.accumulate(x, idx, cnt, out4, threads=threads)
            np.testing.assert_array_equal(out4, out)
    if fmt not in ("dense", "rows"):
        # every tile loop adds a vector's terms in its active-list order: the same floats
        csc = pack_matrix(w, block=(1, 1))
        out_csc = np.tile(bias[:csc.rows_padded], (n, 1))
        csc.accumulate(x, idx, cnt, out_csc)
        np.testing.assert_array_equal(out_csc[:, :150], out[:, :150])
        for group in (1, 2, p.n_panels):
            out3 = np.tile(bias, (n, 1))
            KA.accumulate_tiles(p.panel_ptr, p.indices, p.data, *p.block, group, x, idx, cnt,
                                out3)
            np.testing.assert_array_equal(out3, out)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [1, 2, 7])
def test_product_from_bias_equals_copy_then_accumulate(fmt, n, monkeypatch):
    """``out = bias + W x`` with the register kernels starting from the bias (dense panels,
    row-major tiles) gives the floats of copying the bias in and accumulating, whatever
    ``out`` held before, on 1 and 2 threads; the padding rows of ``out`` hold the bias's
    zeros."""
    from dualsparse.engine.products import bias_rows, product_from_bias

    monkeypatch.setattr(FM, "PARALLEL_MIN_BYTES", 0)
    rng = np.random.default_rng(5)
    w = _matrix(150, 45, 0.3, rng)
    p = _pack(w, fmt)
    x = _sparse_rows(n, 45, 0.3, rng)
    idx, cnt = _lists(x)
    b = rng.standard_normal(150).astype(np.float32)
    rows = bias_rows(b, p)
    assert rows.shape == (p.rows_padded,) and not rows[150:].any()
    ref = np.tile(rows, (n, 1))
    p.accumulate(x, idx, cnt, ref)
    for threads in (1, 2):
        out = np.full((n, p.rows_padded), np.nan, np.float32)  # stale contents are ignored
        product_from_bias(p, x, idx, cnt, out, rows, threads)
        np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(ref[:, :150], b + x.astype(np.float64) @ w.T.astype(np.float64),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "rows"])
def test_inactive_columns_are_never_read(fmt):
    """Work follows each vector's own active list: poisoning the weights of columns that no
    vector uses, or that a vector does not list, changes nothing."""
    rng = np.random.default_rng(3)
    w = _matrix(80, 40, 0.5, rng)
    x = _sparse_rows(4, 40, 0.2, rng)
    x[:, 5] = 0.0
    idx, cnt = _lists(x)
    w2 = w.copy()
    w2[:, 5] = 1e30
    outs = []
    for mat in (w, w2):
        p = _pack(mat, fmt)
        out = np.zeros((4, p.rows_padded), np.float32)
        p.accumulate(x, idx, cnt, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_dense_gemm_path_equals_event_path():
    rng = np.random.default_rng(4)
    w = _matrix(100, 30, 1.0, rng)
    p = pack_dense(w)
    x = rng.standard_normal((FM.GEMM_MIN_VECTORS, 30)).astype(np.float32)  # all active
    idx, cnt = _lists(x)
    assert p.uses_gemm(x.shape[0], int(cnt.sum()))
    assert not p.uses_gemm(x.shape[0], int(0.2 * cnt.sum()))
    # fewer vectors, even all active, take the event kernels (faster than the per-panel GEMM)
    assert not p.uses_gemm(FM.GEMM_MIN_VECTORS - 1, (FM.GEMM_MIN_VECTORS - 1) * 30)
    out = np.zeros((x.shape[0], p.rows_padded), np.float32)
    threads = torch.get_num_threads()
    p.accumulate(x, idx, cnt, out, threads=1)
    assert torch.get_num_threads() == threads
    ref = np.zeros_like(out)
    KA.accumulate_dense(p.data, p.rows_padded, x, idx, cnt, ref)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # one vector: column by column, same floats as the register panels
    one, col = np.zeros((1, p.rows_padded), np.float32), np.zeros((1, p.rows_padded), np.float32)
    p.accumulate(x[:1] * (x[:1] > 0), *_lists(x[:1] * (x[:1] > 0)), one)
    KA.accumulate_dense(p.data, p.rows_padded, x[:1] * (x[:1] > 0), *_lists(x[:1] * (x[:1] > 0)),
                        col)
    np.testing.assert_array_equal(one, col)


def test_accumulate_rejects_wrong_buffers():
    p = pack_matrix(np.eye(4, dtype=np.float32))
    x = np.ones((2, 4), np.float32)
    idx, cnt = _lists(x)
    with pytest.raises(ValueError, match="out must be"):
        p.accumulate(x, idx, cnt, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="x must be"):
        p.accumulate(x.astype(np.float64), idx, cnt, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="idx"):
        p.accumulate(x, idx[:1], cnt, np.zeros((2, 4), np.float32))


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
    # the kernels use the sequence-major layout (B, rows)
    ev, ct = np.zeros((b, h), np.float32), np.zeros((b, h), np.float32)
    idx, cnt = np.zeros((b, h), np.int32), np.zeros(b, np.int32)
    yk, ck = y.T.copy(), c.T.copy()
    n = K.egru_gates(gi.T.copy(), gh.T.copy(), yk, ck, theta, code, True, np.float32(zone),
                     np.float32(1 - zone), ev, ct, idx, cnt)
    ev, ct, yk, ck = ev.T, ct.T, yk.T, ck.T
    np.testing.assert_allclose(ct, res.c_tilde.numpy().T, rtol=1e-6, atol=1e-6)
    near = np.abs(res.c_tilde.numpy().T - theta[:, None]) < 1e-6
    assert np.array_equal(ev[~near], res.events.numpy().T[~near])
    np.testing.assert_allclose(yk, res.y.numpy().T, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ck, c_ref, rtol=1e-6, atol=1e-6)
    for j in range(b):
        np.testing.assert_array_equal(idx[j, :cnt[j]], np.nonzero(yk[:, j])[0])
    assert n == np.count_nonzero(yk) and 0 < n < h * b


def test_egru_gates_without_events_is_a_gru_of_c():
    rng = np.random.default_rng(5)
    h = 16
    gi, gh = _gate_inputs(h, 3, 1, rng)
    c = rng.standard_normal((h, 1)).astype(np.float32)
    y, cc = c.T.copy(), c.T.copy()
    ev, ct = np.zeros((1, h), np.float32), np.zeros((1, h), np.float32)
    idx, cnt = np.zeros((1, h), np.int32), np.zeros(1, np.int32)
    n = K.egru_gates(gi.T.copy(), gh.T.copy(), y, cc, np.zeros(h, np.float32), 0, False,
                     np.float32(0), np.float32(1), ev, ct, idx, cnt)
    ref = gru_step(torch.from_numpy(gi.T.copy()), torch.from_numpy(c.T.copy()),
                   torch.zeros(3 * h, h), torch.from_numpy(gh[:, 0].copy()))
    np.testing.assert_allclose(y[0], ref[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, cc)
    assert n == h and np.all(ev == 1) and cnt[0] == h


def test_gru_and_lstm_gates_match_torch_steps():
    rng = np.random.default_rng(6)
    h, b = 24, 2
    gi, gh = _gate_inputs(h, 3, b, rng)
    hid = rng.standard_normal((h, b)).astype(np.float32)
    idx, cnt = np.zeros((b, h), np.int32), np.zeros(b, np.int32)
    hk = hid.T.copy()
    n = K.gru_gates(gi.T.copy(), gh.T.copy(), hk, np.float32(0), np.float32(1), idx, cnt)
    # gh = W_hh h + b_hh: feed it as a bias with a zero weight, column by column
    for j in range(b):
        ref = gru_step(torch.from_numpy(gi[:, j][None].copy()),
                       torch.from_numpy(hid[:, j][None].copy()), torch.zeros(3 * h, h),
                       torch.from_numpy(gh[:, j].copy()))
        np.testing.assert_allclose(hk[j], ref[0].numpy(), rtol=1e-6, atol=1e-6)
    assert n == h * b
    gi4, gh4 = _gate_inputs(h, 4, b, rng)
    cc = rng.standard_normal((h, b)).astype(np.float32)
    hk, ck = hid.T.copy(), cc.T.copy()
    K.lstm_gates(gi4.T.copy(), gh4.T.copy(), hk, ck, np.float32(0), np.float32(1), idx, cnt)
    for j in range(b):
        rh, rc = lstm_step(torch.from_numpy(gi4[:, j][None].copy()),
                           torch.from_numpy(hid[:, j][None].copy()),
                           torch.from_numpy(cc[:, j][None].copy()), torch.zeros(4 * h, h),
                           torch.from_numpy(gh4[:, j].copy()))
        np.testing.assert_allclose(hk[j], rh[0].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ck[j], rc[0].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows", [64, 100, 1024, 4096, 7680, 10048, 40000])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("most,multiple", [(4096, 64), (1000, 64), (4096, 16), (10, 64)])
def test_balanced_rows_splits_work_evenly_between_threads(rows, threads, most, multiple):
    g = KA.balanced_rows(rows, most, threads, multiple)
    assert g % multiple == 0 and g <= max(multiple, most // multiple * multiple)
    items = -(-rows // g)
    sizes = [min(g, rows - i * g) for i in range(items)]
    # prange's static schedule: contiguous, equal counts of items per thread
    per_thread = [sum(part) for part in np.array_split(np.array(sizes), threads)]
    if items >= threads:
        # the busiest thread does at most one group more than an even share
        assert max(per_thread) <= rows / threads + g
    if threads == 2 and rows == 10048 and most == 4096:
        # the 10000-row decoder: two items each, not 8192 rows on one thread and 1856 on the
        # other (what a fixed 4096-row group gave)
        assert max(per_thread) <= 0.55 * rows


@pytest.mark.parametrize("faster", ["panels", "columns"])
def test_mid_sized_dense_matrix_takes_the_faster_single_vector_path(faster, monkeypatch):
    rng = np.random.default_rng(5)
    w = _matrix(200, 40, 1.0, rng)
    p = pack_dense(w)
    monkeypatch.setattr(FM, "COLUMNS_TRIAL_BYTES", 0)  # this small matrix is "mid-sized"
    calls = []

    def timed(*args, **kw):
        calls.append(args)
        return (1.0, 0.5) if faster == "columns" else (0.5, 1.0)

    monkeypatch.setattr(KA, "single_vector_seconds", timed)
    x = _sparse_rows(1, 40, 0.3, rng)
    idx, cnt = _lists(x)
    out = np.zeros((1, p.rows_padded), np.float32)
    for _ in range(3):
        p.accumulate(x, idx, cnt, out)
    assert len(calls) == 1  # timed once, then kept
    code = KA.FORMAT_CODES["dense_columns" if faster == "columns" else "dense"]
    assert p.kernel_args(1)[0] == code
    # the column-major copy is kept only where it is used
    assert p.nbytes == (2 if faster == "columns" else 1) * p.data.nbytes
    assert p.kernel_args(4)[0] == KA.FORMAT_CODES["dense"]  # several vectors: panels
    np.testing.assert_allclose(out[0, :200], 3 * (w @ x[0]), rtol=1e-5, atol=1e-5)


def test_single_vector_seconds_times_both_paths_without_touching_the_matrix():
    rng = np.random.default_rng(6)
    w = _matrix(300, 70, 1.0, rng)
    p = pack_dense(w)
    before = p.data.copy()
    t_panels, t_columns = KA.single_vector_seconds(p.data, p.columns(), p.rows_padded, p.cols,
                                                   p.column_group())
    assert 0 < t_panels < 1 and 0 < t_columns < 1
    np.testing.assert_array_equal(p.data, before)
