"""Triton kernel bodies of :mod:`dualsparse.models.triton_egru`, plain functions until
:func:`load` imports triton (an optional heavy dependency) and wraps them with ``triton.jit``.

``import dualsparse`` therefore never imports triton. Whether the kernels are compiled (CUDA)
or run by Triton's CPU interpreter is fixed per process by ``TRITON_INTERPRET=1`` at the time
triton is first imported (Triton's own library functions are decorated then).

Encodings shared with the host code: ``RESET`` 0 = subtract_threshold, 1 = subtract_output,
2 = none; ``KEEP`` 0 = no zoneout, 1 = keep-mask tensor, 2 = constant keep probability;
``SHAPE`` 0 = triangle, 1 = rectangle, 2 = fast_sigmoid. The surrogate's ``gamma``, ``width``
and the zoneout probability are compile-time constants (exact in float64; one compilation per
model setting). Weights: the forward reads ``W_hh^T`` ``(H, 3H)`` row-major, the backward
``W_hh`` ``(3H, H)`` row-major (both coalesced along the hidden units a tile owns). A tile is
``BLOCK_B`` batch rows x ``BLOCK_H`` units.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

tl: Any = None
"""``triton.language`` once :func:`load` has run; the kernel bodies refer to it."""
_LOADED: SimpleNamespace | None = None


def egru_fwd_step(gi_ptr, y_prev_ptr, c_prev_ptr, wt_ptr, b_ptr, theta_ptr, keep_ptr,
                  y_ptr, c_ptr, o_ptr, ct_ptr, r_ptr, z_ptr, g_ptr, ghg_ptr,
                  B, H, keep_p: tl.constexpr,
                  HAS_BIAS: tl.constexpr, KEEP: tl.constexpr, RESET: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """One step for one tile: ``gh = y_prev @ W_hh^T`` (three gate accumulators), then gates,
    event, reset and zoneout in the epilogue. Writes y, c, o, c~ and the saved r, z, g, W_hg y."""
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = rb < B
    mh = rh < H
    dt = y_prev_ptr.dtype.element_ty
    acc_r = tl.zeros((BLOCK_B, BLOCK_H), dtype=dt)
    acc_z = tl.zeros((BLOCK_B, BLOCK_H), dtype=dt)
    acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=dt)
    for k0 in range(0, H, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < H
        y = tl.load(y_prev_ptr + rb[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :],
                    other=0.0)
        wm = mk[:, None] & mh[None, :]
        w_base = wt_ptr + rk[:, None] * (3 * H) + rh[None, :]
        acc_r = tl.dot(y, tl.load(w_base, mask=wm, other=0.0), acc_r,
                       input_precision=PRECISION, out_dtype=dt)
        acc_z = tl.dot(y, tl.load(w_base + H, mask=wm, other=0.0), acc_z,
                       input_precision=PRECISION, out_dtype=dt)
        acc_g = tl.dot(y, tl.load(w_base + 2 * H, mask=wm, other=0.0), acc_g,
                       input_precision=PRECISION, out_dtype=dt)
    if HAS_BIAS:
        acc_r += tl.load(b_ptr + rh, mask=mh, other=0.0)[None, :]
        acc_z += tl.load(b_ptr + H + rh, mask=mh, other=0.0)[None, :]
        acc_g += tl.load(b_ptr + 2 * H + rh, mask=mh, other=0.0)[None, :]
    m2 = mb[:, None] & mh[None, :]
    off = rb[:, None] * H + rh[None, :]
    gi_off = rb[:, None] * (3 * H) + rh[None, :]
    r = tl.sigmoid(tl.load(gi_ptr + gi_off, mask=m2, other=0.0) + acc_r)
    z = tl.sigmoid(tl.load(gi_ptr + gi_off + H, mask=m2, other=0.0) + acc_z)
    n = tl.load(gi_ptr + gi_off + 2 * H, mask=m2, other=0.0) + r * acc_g
    g = 2.0 * tl.sigmoid(2.0 * n) - 1.0  # tanh(n)
    c_prev = tl.load(c_prev_ptr + off, mask=m2, other=0.0)
    ct = g + z * (c_prev - g)
    if RESET == 1:
        ct -= tl.load(y_prev_ptr + off, mask=m2, other=0.0)
    th = tl.load(theta_ptr + rh, mask=mh, other=0.0)[None, :]
    o = tl.where(ct > th, 1.0, 0.0).to(dt)
    if RESET == 0:
        c_new = ct - o * th
    else:
        c_new = ct
    if KEEP == 1:
        c_new = c_new + tl.load(keep_ptr + off, mask=m2, other=0.0) * (c_prev - c_new)
    elif KEEP == 2:
        c_new = keep_p * c_prev + (1.0 - keep_p) * c_new
    tl.store(y_ptr + off, o * ct, mask=m2)
    tl.store(c_ptr + off, c_new, mask=m2)
    tl.store(o_ptr + off, o, mask=m2)
    tl.store(ct_ptr + off, ct, mask=m2)
    tl.store(r_ptr + off, r, mask=m2)
    tl.store(z_ptr + off, z, mask=m2)
    tl.store(g_ptr + off, g, mask=m2)
    tl.store(ghg_ptr + off, acc_g, mask=m2)


def egru_bwd_step(dgi_next_ptr, dghg_next_ptr, w_ptr, dys_ptr, dct_ptr, dc_ptr,
                  o_ptr, ct_ptr, c_prev_ptr, r_ptr, z_ptr, g_ptr, ghg_ptr, theta_ptr, keep_ptr,
                  dev_ptr, dctl_ptr, dgi_ptr, dghg_ptr, dth_ptr, skip_ptr, dyg_ptr, pos_ptr,
                  B, H, dy_stride, keep_p: tl.constexpr, gamma: tl.constexpr, width: tl.constexpr,
                  HAS_NEXT: tl.constexpr, HAS_DYS: tl.constexpr, HAS_DEV: tl.constexpr,
                  HAS_DCTL: tl.constexpr, SPARSE: tl.constexpr, GIVEN_DY: tl.constexpr,
                  SHAPE: tl.constexpr, KEEP: tl.constexpr, RESET: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """BPTT step t for one tile. ``dy_t = d_gh_{t+1} @ W_hh`` is computed only if some unit of
    the tile needs it (``SPARSE``: fired or inside the surrogate support); then the gate
    derivatives. ``dc`` (and ``d_ct`` for subtract_output) are updated in place: each tile
    reads and writes only its own entries. ``skip_ptr[tile]`` records 1 where the matmul was
    skipped. With ``GIVEN_DY`` the matmul is not done here: ``dy`` was computed beforehand
    (cuBLAS) into ``dyg_ptr`` ``(B, dy_stride)``; unit ``u``'s column is ``pos_ptr[u]``
    (int32), or -1 for a unit whose ``dy`` was not computed because it is never used (see
    :func:`dualsparse.models.surrogate.needed_units`)."""
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = rb < B
    mh = rh < H
    m2 = mb[:, None] & mh[None, :]
    off = rb[:, None] * H + rh[None, :]
    dt = dc_ptr.dtype.element_ty
    o = tl.load(o_ptr + off, mask=m2, other=0.0)
    ct = tl.load(ct_ptr + off, mask=m2, other=0.0)
    th = tl.load(theta_ptr + rh, mask=mh, other=0.0)[None, :]
    a = tl.abs(ct - th) / width
    if SHAPE == 0:
        s = gamma * tl.maximum(1.0 - a, 0.0)
    elif SHAPE == 1:
        s = gamma * (a < 1.0).to(dt)
    else:
        s = gamma / ((1.0 + a) * (1.0 + a))
    dy = tl.zeros((BLOCK_B, BLOCK_H), dtype=dt)
    if HAS_NEXT and GIVEN_DY:
        pos = tl.load(pos_ptr + rh, mask=mh, other=-1)
        dy = tl.load(dyg_ptr + rb[:, None] * dy_stride + pos[None, :],
                     mask=m2 & (pos[None, :] >= 0), other=0.0)
        if RESET == 1:
            dy -= tl.load(dct_ptr + off, mask=m2, other=0.0)
    elif HAS_NEXT:
        run = 1
        if SPARSE and SHAPE != 2:
            need = tl.where(m2 & ((o > 0.0) | (a < 1.0)), 1, 0)
            run = tl.max(tl.max(need, axis=1), axis=0)
        skip_off = skip_ptr + pid_b * tl.num_programs(1) + pid_h
        tl.store(skip_off, 1)
        if run > 0:
            tl.store(skip_off, 0)
            for k0 in range(0, H, BLOCK_K):
                rk = k0 + tl.arange(0, BLOCK_K)
                mk = rk < H
                am = mb[:, None] & mk[None, :]
                a_off = rb[:, None] * (3 * H) + rk[None, :]
                wm = mk[:, None] & mh[None, :]
                w_base = w_ptr + rk[:, None] * H + rh[None, :]
                dy = tl.dot(tl.load(dgi_next_ptr + a_off, mask=am, other=0.0),
                            tl.load(w_base, mask=wm, other=0.0), dy, input_precision=PRECISION,
                            out_dtype=dt)
                dy = tl.dot(tl.load(dgi_next_ptr + a_off + H, mask=am, other=0.0),
                            tl.load(w_base + H * H, mask=wm, other=0.0), dy,
                            input_precision=PRECISION, out_dtype=dt)
                dy = tl.dot(tl.load(dghg_next_ptr + rb[:, None] * H + rk[None, :], mask=am,
                                    other=0.0),
                            tl.load(w_base + 2 * H * H, mask=wm, other=0.0), dy,
                            input_precision=PRECISION, out_dtype=dt)
        if RESET == 1:
            dy -= tl.load(dct_ptr + off, mask=m2, other=0.0)
    if HAS_DYS:
        dy += tl.load(dys_ptr + off, mask=m2, other=0.0)
    dc = tl.load(dc_ptr + off, mask=m2, other=0.0)
    if KEEP == 1:
        keep = tl.load(keep_ptr + off, mask=m2, other=0.0)
        d_cnew = (1.0 - keep) * dc
        dc_prev = keep * dc
    elif KEEP == 2:
        d_cnew = (1.0 - keep_p) * dc
        dc_prev = keep_p * dc
    else:
        d_cnew = dc
        dc_prev = tl.zeros((BLOCK_B, BLOCK_H), dtype=dt)
    d_ct = d_cnew + o * dy
    d_o = ct * dy
    if HAS_DEV:
        d_o += tl.load(dev_ptr + off, mask=m2, other=0.0)
    d_th = tl.zeros((BLOCK_B, BLOCK_H), dtype=dt)
    if RESET == 0:
        d_o -= th * d_cnew
        d_th -= o * d_cnew
    if HAS_DCTL:
        d_ct += tl.load(dctl_ptr + off, mask=m2, other=0.0)
    d_x = d_o * s
    d_ct += d_x
    d_th -= d_x
    r = tl.load(r_ptr + off, mask=m2, other=0.0)
    z = tl.load(z_ptr + off, mask=m2, other=0.0)
    g = tl.load(g_ptr + off, mask=m2, other=0.0)
    c_prev = tl.load(c_prev_ptr + off, mask=m2, other=0.0)
    dz = d_ct * (c_prev - g)
    dc_prev += d_ct * z
    dn = d_ct * (1.0 - z) * (1.0 - g * g)
    dr = dn * tl.load(ghg_ptr + off, mask=m2, other=0.0)
    gi_off = rb[:, None] * (3 * H) + rh[None, :]
    tl.store(dgi_ptr + gi_off, dr * r * (1.0 - r), mask=m2)
    tl.store(dgi_ptr + gi_off + H, dz * z * (1.0 - z), mask=m2)
    tl.store(dgi_ptr + gi_off + 2 * H, dn, mask=m2)
    tl.store(dghg_ptr + off, dn * r, mask=m2)
    tl.store(dc_ptr + off, dc_prev, mask=m2)
    if RESET == 1:
        tl.store(dct_ptr + off, d_ct, mask=m2)
    tl.store(dth_ptr + off, d_th, mask=m2)


def load() -> SimpleNamespace:
    """The jit-wrapped kernels (``egru_fwd_step``, ``egru_bwd_step``) and ``INTERPRETED``
    (True when they run in Triton's CPU interpreter)."""
    global tl, _LOADED
    if _LOADED is None:
        import triton  # optional heavy dependency (extra "gpu"): imported when kernels run
        import triton.language as language  # the kernel bodies' ``tl``; same optional dependency

        tl = language
        kernels = {f.__name__: triton.jit(f) for f in (egru_fwd_step, egru_bwd_step)}
        _LOADED = SimpleNamespace(
            **kernels,
            INTERPRETED=not isinstance(kernels["egru_fwd_step"], triton.runtime.JITFunction))
    return _LOADED
