"""The SIMD helpers used by the kernels: values and generated instructions."""

from __future__ import annotations

import numpy as np
from numba import njit

from dualsparse.engine.simd import axpy16, fma32, prefetch, vload, vmadd, vstore


@njit(cache=False)
def _axpy_all(out, data, x):
    for s in range(0, out.shape[0], 16):
        prefetch(data, np.int64(s + 64))  # may point past the end: a hint, never a fault
        axpy16(out, np.int64(s), data, np.int64(s), x)


@njit(cache=False)
def _madd(out, data, x):
    acc = vload(out, np.int64(0))
    acc = vmadd(acc, data, np.int64(16), x)
    vstore(out, np.int64(0), acc)


@njit(cache=False)
def _fma_all(out, data, x):
    for i in range(out.shape[0]):
        out[i] = fma32(data[i], x, out[i])


def _fused(acc, w, x):
    """``acc + w * x`` rounded once: the float64 product of two float32 is exact."""
    return (acc.astype(np.float64) + w.astype(np.float64) * np.float64(x)).astype(np.float32)


def test_axpy16_vmadd_and_fma32_fuse_the_multiply_add():
    """One rounding per update (fused multiply-add), the same in the SIMD and the scalar
    helper, so SIMD and scalar kernels adding in the same order give the same floats."""
    rng = np.random.default_rng(0)
    out = rng.standard_normal(64).astype(np.float32)
    data = rng.standard_normal(64).astype(np.float32)
    x = np.float32(0.3)
    want = _fused(out, data, x)
    assert not np.array_equal(want, out + data * x)  # the two roundings differ here
    got = out.copy()
    _axpy_all(got, data, x)
    assert np.array_equal(got, want)
    got = out.copy()
    _fma_all(got, data, x)
    assert np.array_equal(got, want)
    got = out.copy()
    _madd(got, data, x)
    assert np.array_equal(got[:16], _fused(out[:16], data[16:32], x))
    assert np.array_equal(got[16:], out[16:])


def test_prefetch_emits_a_prefetch_instruction():
    _axpy_all(np.zeros(32, np.float32), np.zeros(32, np.float32), np.float32(1))
    asm = _axpy_all.inspect_asm(_axpy_all.signatures[0])
    assert "prefetch" in asm
