"""Integer side of the power-of-two quantiser: code words, packing, Q15 arithmetic.

The float quantiser (levels, rounding rule, straight-through estimator) is
:mod:`dualsparse.models.pow2_quant`; here its values become code words.

Code words (``b`` bits, the paper's encoding generalised): the top bit is the sign (1 = negative),
the low ``b-1`` bits hold the shift ``k``; the all-ones word means zero.  For ``b = 3``:
``+1 -> 000, +1/2 -> 001, +1/4 -> 010, -1 -> 100, -1/2 -> 101, -1/4 -> 110, 0 -> 111``.

Integer semantics (Q15: ``value = q / 32768``) are defined here and used by the reference model
and the emitted C code; see :func:`softsign_q15` and :func:`asr`.
"""

from __future__ import annotations

import numpy as np
import torch

from dualsparse.models.pow2_quant import (
    INT16_MAX,
    INT16_MIN,
    Q15_ONE,
    SOFTSIGN_LIMIT,
    check_bits,
    max_shift,
)

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def zero_code(bits: int) -> int:
    """The code word meaning zero: all ones."""
    return (1 << check_bits(bits)) - 1


def encode_pow2(w: np.ndarray | torch.Tensor, bits: int = 3) -> np.ndarray:
    """Map values that are exactly on the power-of-two grid to code words (uint8, same shape)."""
    arr = np.asarray(w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else w, np.float64)
    km = max_shift(bits)
    if np.isnan(arr).any():
        raise ValueError("encode_pow2: values contain NaN")
    codes = np.full(arr.shape, zero_code(bits), dtype=np.uint8)
    nz = arr != 0
    a = np.abs(arr[nz])
    k = np.rint(-np.log2(a)).astype(np.int64)
    if (k < 0).any() or (k > km).any() or not np.array_equal(np.exp2(-k.astype(np.float64)), a):
        raise ValueError(f"encode_pow2: values are not on the {bits}-bit power-of-two grid")
    sign = (arr[nz] < 0).astype(np.int64)
    codes[nz] = (sign << (bits - 1)) | k
    return codes


def decode_pow2(codes: np.ndarray, bits: int = 3) -> np.ndarray:
    """Inverse of :func:`encode_pow2`: code words -> float64 values."""
    c = np.asarray(codes).astype(np.int64)
    km = max_shift(bits)
    if (c < 0).any() or (c > zero_code(bits)).any():
        raise ValueError(f"decode_pow2: codes out of range for {bits} bits")
    k = c & ((1 << (bits - 1)) - 1)
    neg = (c >> (bits - 1)) & 1
    bad = (k > km) & (c != zero_code(bits))
    if bad.any():
        raise ValueError(f"decode_pow2: unused code word(s) {sorted(set(c[bad].tolist()))}")
    val = np.where(neg == 1, -1.0, 1.0) * np.exp2(-np.minimum(k, km).astype(np.float64))
    return np.where(c == zero_code(bits), 0.0, val)


def codes_per_word(bits: int) -> int:
    """Number of ``bits``-bit codes packed into one uint32 word (LSB first, top bits unused)."""
    return 32 // check_bits(bits)


def pack_codes(codes: np.ndarray, bits: int = 3) -> np.ndarray:
    """Pack the rows of a 2-D code array ``(R, N)`` into uint32 words ``(R, ceil(N / cpw))``.

    Code ``j`` of a row sits in word ``j // cpw`` at bit ``bits * (j % cpw)``; padding slots in
    the last word of a row hold the zero code.
    """
    c = np.asarray(codes)
    if c.ndim != 2:
        raise ValueError(f"pack_codes expects a 2-D array (rows, n), got shape {c.shape}")
    if (c < 0).any() or (c > zero_code(bits)).any():
        raise ValueError(f"pack_codes: codes out of range for {bits} bits")
    cpw = codes_per_word(bits)
    rows, n = c.shape
    nw = -(-n // cpw)
    padded = np.full((rows, nw * cpw), zero_code(bits), dtype=np.uint64)
    padded[:, :n] = c
    padded = padded.reshape(rows, nw, cpw)
    shifts = (np.arange(cpw, dtype=np.uint64) * np.uint64(bits))[None, None, :]
    return (padded << shifts).sum(axis=2).astype(np.uint32)


def unpack_codes(words: np.ndarray, n: int, bits: int = 3) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``(R, W)`` uint32 -> ``(R, n)`` uint8 codes."""
    w = np.asarray(words, dtype=np.uint64)
    if w.ndim != 2:
        raise ValueError(f"unpack_codes expects a 2-D array, got shape {w.shape}")
    cpw = codes_per_word(bits)
    shifts = (np.arange(cpw, dtype=np.uint64) * np.uint64(bits))[None, None, :]
    c = (w[:, :, None] >> shifts) & np.uint64(zero_code(bits))
    c = c.reshape(w.shape[0], -1)
    if c.shape[1] < n:
        raise ValueError(f"unpack_codes: {c.shape[1]} slots per row < n = {n}")
    return c[:, :n].astype(np.uint8)


# ----------------------------------------------------------------------------- Q15 integer helpers


def to_q15(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float -> Q15 int64 array: ``clip(round_half_even(x * 32768), -32768, 32767)``."""
    arr = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, np.float64)
    if np.isnan(arr).any():
        raise ValueError("to_q15: input contains NaN")
    return np.clip(np.rint(arr * Q15_ONE), INT16_MIN, INT16_MAX).astype(np.int64)


def from_q15(q: np.ndarray) -> np.ndarray:
    """Q15 integers -> float64 values ``q / 32768``."""
    return np.asarray(q, dtype=np.float64) / Q15_ONE


def sat(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Saturate an int64 array to ``[lo, hi]``."""
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def sat16(x: np.ndarray) -> np.ndarray:
    """Saturate to int16."""
    return sat(x, INT16_MIN, INT16_MAX)


def sat32(x: np.ndarray) -> np.ndarray:
    """Saturate to int32."""
    return sat(x, INT32_MIN, INT32_MAX)


def asr(x: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Arithmetic shift right = ``floor(x / 2**k)`` (rounds towards minus infinity)."""
    return np.right_shift(np.asarray(x, dtype=np.int64), np.asarray(k, dtype=np.int64))


def softsign_q15(x: np.ndarray) -> np.ndarray:
    """Integer softsign in Q15 (int64 in, int64 out; exact rule).

    ``a = min(|x|, SOFTSIGN_LIMIT)`` (pre-activation saturated to +-64.0),
    ``y = sign(x) * floor(a * 32768 / (32768 + a))``: truncation towards zero, so the result is
    odd-symmetric and lies in ``[-32263, 32263]``.  On the MCU the quotient is formed with two
    unsigned 32-bit divisions (``a << 10`` then the remainder ``<< 5``), which gives the same
    integer because ``floor(floor(u/d)*m + floor(r*m/d)) == floor(u*m/d)``.
    """
    x = np.asarray(x, dtype=np.int64)
    a = np.minimum(np.abs(x), SOFTSIGN_LIMIT)
    y = (a << 15) // (Q15_ONE + a)
    return np.where(x < 0, -y, y)
