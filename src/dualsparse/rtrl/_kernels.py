"""Numba kernels of :class:`~dualsparse.rtrl.sparse.SparseRTRL` (CPU, whole batch per call).

One call does the influence update of all batch samples, so the per-sample bookkeeping (active
units, nonzero rows, live columns) costs no Python overhead. The recurrent Jacobian is formed
only on the structural nonzeros of ``K = d c~_t / d y_{t-1}``: entry ``(i, j)`` exists when at
least one gate keeps ``W_hh[g, i, j]`` (``K`` is the same for every sample up to the deltas), so
zeros left by pruned recurrent weights are neither formed nor multiplied. MAC counts are added
to ``macs`` as the loops run: ``[jacobian, immediate, update]``.
"""

from __future__ import annotations

import numba
import numpy as np

#: Columns of ``M`` per chunk of the influence update (8 KiB of float64 per row).
UPDATE_CHUNK = 1024


@numba.njit(cache=True)
def _make_live(perm, where, live, b, col):
    """Move the all-zero kept column ``col`` of sample ``b`` into the live block (swap ids)."""
    pos = where[b, col]
    tgt = live[b]
    if pos < tgt:
        return
    other = perm[b, tgt]
    perm[b, tgt] = col
    perm[b, pos] = other
    where[b, col] = tgt
    where[b, other] = pos
    live[b] = tgt + 1


@numba.njit(cache=True)
def sparse_step(m, row_nz, perm, where, live, a_prev, diag, dh, w_hh, kptr, krows, rptr, rcols,
                vals, plain_pos, plain_unit, th_unit, th_pos, own, dyth_prev, slope, macs, chunk):
    """Advance ``m`` ``(B, H, P)`` by one step in place.

    ``dh`` ``(B, 3, H)`` hidden-side deltas, ``w_hh`` ``(3, H, H)`` masked weights, ``kptr``/
    ``krows``: CSC structure of ``K`` (rows of column ``j`` are ``krows[kptr[j]:kptr[j+1]]``),
    ``rptr``/``rcols`` the same structure as CSR (each row's terms are gathered from it, then
    the product runs over column chunks of ``M``, row by row within a chunk).
    ``vals`` ``(B, P_plain)`` immediate terms of the plain columns; ``own`` ``(B, n_theta)`` and
    ``dyth_prev`` ``(B, H)`` for the threshold columns. ``chunk``: columns of ``M`` per pass of
    the update (:data:`UPDATE_CHUNK`; any value >= 1 gives bitwise the same result). Returns
    ``(active_sum, j_entries)``.
    """
    bsz, h, _ = m.shape
    n_plain = plain_pos.shape[0]
    n_theta = th_unit.shape[0]
    kbuf = np.zeros((h, h), dtype=m.dtype)        # kbuf[j, i] = K[i, j] for formed columns
    use = np.empty(h, dtype=np.int64)
    use_k = np.empty(h, dtype=np.int64)          # unit -> index in use, or -1
    need = np.zeros(h, dtype=np.bool_)
    new_rows = np.empty(h, dtype=np.bool_)
    tptr = np.empty(h + 1, dtype=np.int64)        # terms of row i: tk/tc[tptr[i]:tptr[i+1]]
    tk = np.empty(rptr[h], dtype=np.int64)
    tc = np.empty(rptr[h], dtype=m.dtype)
    active_sum = 0.0
    j_entries = 0
    for b in range(bsz):
        nl = live[b]
        n_use = 0
        n_act = 0
        for j in range(h):
            need[j] = False
            use_k[j] = -1
            if a_prev[b, j] != 0.0:
                n_act += 1
                if row_nz[b, j]:
                    use_k[j] = n_use
                    use[n_use] = j
                    n_use += 1
                    need[j] = True
        active_sum += n_act / h
        for k in range(n_theta):
            if dyth_prev[b, th_unit[k]] != 0.0:
                need[th_unit[k]] = True
        # structural nonzeros of the needed columns of K
        for j in range(h):
            if need[j]:
                for idx in range(kptr[j], kptr[j + 1]):
                    i = krows[idx]
                    kbuf[j, i] = (dh[b, 0, i] * w_hh[0, i, j] + dh[b, 1, i] * w_hh[1, i, j]
                                  + dh[b, 2, i] * w_hh[2, i, j])
                macs[0] += 3 * (kptr[j + 1] - kptr[j])
        # old rows of the used units (the diagonal scaling overwrites them)
        mold = np.empty((n_use, nl), dtype=m.dtype)
        for k in range(n_use):
            j = use[k]
            for c in range(nl):
                mold[k, c] = m[b, j, c]
        # off-diagonal terms K[i, j] a[j] of the used units, row by row (CSR of K)
        n_diag_formed = 0
        n_coef = 0
        tptr[0] = 0
        for i in range(h):
            new_rows[i] = row_nz[b, i]
            for idx in range(rptr[i], rptr[i + 1]):
                j = rcols[idx]
                k = use_k[j]
                if k < 0:
                    continue
                if i == j:
                    n_diag_formed += 1
                coef = kbuf[j, i] * a_prev[b, j]
                if coef != 0.0:
                    new_rows[i] = True
                tk[n_coef] = k
                tc[n_coef] = coef
                n_coef += 1
            tptr[i + 1] = n_coef
            if row_nz[b, i]:
                macs[2] += nl
        macs[2] += n_coef * nl
        # M[i, :L] = diag[i] M[i, :L] + sum_terms coef M_old[k, :L], in column chunks: a
        # row's chunk stays in L1 for all its terms and the old rows' chunk in L2 for all
        # rows; per entry the same operations in the same order as row by row
        for c0 in range(0, nl, chunk):
            c1 = min(c0 + chunk, nl)
            w = c1 - c0
            for i in range(h):
                mi = m[b, i, c0:c1]
                if row_nz[b, i]:
                    d = diag[b, i]
                    for c in range(w):
                        mi[c] *= d
                n = tptr[i]
                n_end = tptr[i + 1]
                while n + 4 <= n_end:      # four terms per pass, added in the same order
                    m0 = mold[tk[n], c0:c1]
                    m1 = mold[tk[n + 1], c0:c1]
                    m2 = mold[tk[n + 2], c0:c1]
                    m3 = mold[tk[n + 3], c0:c1]
                    f0, f1, f2, f3 = tc[n], tc[n + 1], tc[n + 2], tc[n + 3]
                    for c in range(w):
                        mi[c] = (((mi[c] + f0 * m0[c]) + f1 * m1[c]) + f2 * m2[c]) + f3 * m3[c]
                    n += 4
                while n < n_end:
                    mo = mold[tk[n], c0:c1]
                    coef = tc[n]
                    for c in range(w):
                        mi[c] += coef * mo[c]
                    n += 1
        macs[0] += n_coef
        j_entries += n_coef + h - n_diag_formed
        # immediate terms (their columns become live first; they were all zero)
        for k in range(n_plain):
            v = vals[b, k]
            if v != 0.0:
                col = plain_pos[k]
                _make_live(perm, where, live, b, col)
                i = plain_unit[k]
                m[b, i, where[b, col]] += v
                new_rows[i] = True
                macs[2] += 1
        for k in range(n_theta):
            u = th_unit[k]
            col = th_pos[k]
            v = own[b, k]
            if v != 0.0:
                _make_live(perm, where, live, b, col)
                m[b, u, where[b, col]] += v
                new_rows[u] = True
                macs[2] += 1
            dy = dyth_prev[b, u]
            if dy != 0.0:
                _make_live(perm, where, live, b, col)
                scale = dy * slope[u]
                s = where[b, col]
                lo, hi = kptr[u], kptr[u + 1]
                for idx in range(lo, hi):
                    i = krows[idx]
                    cv = kbuf[u, i] * scale
                    m[b, i, s] += cv
                    if cv != 0.0:
                        new_rows[i] = True
                macs[1] += hi - lo + 1
                macs[2] += hi - lo
        for i in range(h):
            row_nz[b, i] = new_rows[i]
    return active_sum, j_entries


@numba.njit(cache=True)
def sparse_gradient(m, row_nz, perm, live, v, acc):
    """``acc[perm[b, c]] += sum_r v[b, r] M[b, r, c]`` over nonzero rows and live columns."""
    bsz, h, _ = m.shape
    macs = 0
    for b in range(bsz):
        nl = live[b]
        tmp = np.zeros(nl, dtype=m.dtype)
        for r in range(h):
            vr = v[b, r]
            if vr != 0.0 and row_nz[b, r]:
                for c in range(nl):
                    tmp[c] += m[b, r, c] * vr
                macs += nl
        for c in range(nl):
            acc[perm[b, c]] += tmp[c]
    return macs


@numba.njit(cache=True)
def make_live_batch(perm, where, live, fresh):
    """Move the kept columns flagged in ``fresh`` ``(B, P)`` (all zero so far, or already
    live) into each sample's live block; used by the batched-GEMM backend."""
    bsz, p = fresh.shape
    for b in range(bsz):
        for col in range(p):
            if fresh[b, col]:
                _make_live(perm, where, live, b, col)


@numba.njit(cache=True)
def gemm_immediate(m, inv, perm, where, live, deltas, src, plain_q, plain_src, plain_pos,
                   plain_unit, th_unit, th_pos, own, th_scale, k):
    """Immediate terms of the batched-GEMM backend, added to ``m`` (scaled storage) in place.

    ``m`` ``(B, H, P)`` holds ``N`` with ``M = diag(1 / inv) N``; ``deltas`` ``(B, 6H)``,
    ``src`` ``(B, I + H + 1)``: a plain column's term ``deltas[plain_q] * src[plain_src]`` is
    formed only where its source is nonzero (silent presynaptic units cost one compare). A
    column whose term is nonzero becomes live first (it was all zero). Threshold columns:
    ``own`` ``(B, n_theta)`` on the own unit, ``k[:, u] * th_scale`` ``(B, n_theta)`` on the
    whole column where ``th_scale != 0``; ``k`` ``(B, H, H)``. Returns the MACs done.
    """
    bsz, h, _ = m.shape
    n_plain = plain_pos.shape[0]
    n_theta = th_unit.shape[0]
    macs = 0
    for b in range(bsz):
        for q in range(n_plain):
            sv = src[b, plain_src[q]]
            if sv == 0.0:
                continue
            v = deltas[b, plain_q[q]] * sv
            macs += 2
            if v == 0.0:
                continue
            col = plain_pos[q]
            _make_live(perm, where, live, b, col)
            i = plain_unit[q]
            m[b, i, where[b, col]] += v * inv[b, i]
        for q in range(n_theta):
            u = th_unit[q]
            col = th_pos[q]
            v = own[b, q]
            sc = th_scale[b, q]
            if v == 0.0 and sc == 0.0:
                continue
            _make_live(perm, where, live, b, col)
            s = where[b, col]
            if v != 0.0:
                m[b, u, s] += v * inv[b, u]
                macs += 2
            if sc != 0.0:
                for i in range(h):
                    m[b, i, s] += k[b, i, u] * sc * inv[b, i]
                macs += 3 * h
    return macs
