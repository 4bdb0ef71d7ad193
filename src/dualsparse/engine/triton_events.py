"""Event-driven EGRU inference on the GPU for batch-1 streaming (Triton; imports triton).

The GPU counterpart of the numba engine's active-column accumulate: with the weights stored
transposed (``W^T`` ``(K, N)`` row-major, one input's column of ``W`` as a contiguous row),
``out = b + W @ y`` reads only the rows of ``W^T`` whose input ``y_k`` is nonzero: the loads
of inactive rows are masked off, so memory traffic scales with the activity (a block of
``BLOCK_K`` inputs with no event is skipped outright). Kernels:

* :func:`event_matvec` -- ``b + W @ y`` for a sparse vector ``y`` (an EGRU output feeding the
  next layer's input projection, or a decoder);
* :func:`egru_event_step` -- one EGRU step: the recurrent event matvec for the three gates of a
  block of units fused with the gates, event, reset and eval-mode zoneout (as
  :func:`dualsparse.models.egru.egru_step`);
* :class:`TritonEventEGRU` -- a multi-layer :class:`~dualsparse.models.EGRU` streamed one
  input vector at a time (layer 0 input projection dense via cuBLAS, upper layers event-driven).

triton is optional (extra ``gpu``): this module is imported only on request, never by
``dualsparse.engine``. Kernels need CUDA tensors, or CPU tensors in a process started with
``TRITON_INTERPRET=1`` (the interpreter: slow, for tests). Float32 only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dualsparse.models.egru import EGRU
from dualsparse.models.triton_egru import RESET_CODES, interpreting
from dualsparse.validation import check_int

BLOCK_N = 16
"""Default outputs (units) per program; small so that a 1350-unit layer fills the GPU."""
BLOCK_K = 32
"""Default inputs per skip block."""


@triton.jit
def _event_matvec(y_ptr, wt_ptr, b_ptr, out_ptr, K, N, HAS_BIAS: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = rn < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        y = tl.load(y_ptr + rk, mask=rk < K, other=0.0)
        act = y != 0.0
        if tl.max(act.to(tl.int32), axis=0) > 0:
            w = tl.load(wt_ptr + rk[:, None] * N + rn[None, :], mask=act[:, None] & mn[None, :],
                        other=0.0)
            acc += tl.sum(y[:, None] * w, axis=0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=mn, other=0.0)
    tl.store(out_ptr + rn, acc, mask=mn)


@triton.jit
def _event_matvec_split_k(y_ptr, wt_ptr, out_ptr, K, N, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    # one program per (block of outputs, block of inputs): a block without events returns at
    # once, the others add their partial sums atomically (out holds the bias beforehand)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    y = tl.load(y_ptr + rk, mask=rk < K, other=0.0)
    act = y != 0.0
    if tl.max(act.to(tl.int32), axis=0) > 0:
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < N
        w = tl.load(wt_ptr + rk[:, None] * N + rn[None, :], mask=act[:, None] & mn[None, :],
                    other=0.0)
        tl.atomic_add(out_ptr + rn, tl.sum(y[:, None] * w, axis=0), mask=mn)


@triton.jit
def _egru_event_step(gi_ptr, y_ptr, c_ptr, wt_ptr, b_ptr, theta_ptr, y_out_ptr, c_out_ptr,
                     H, keep_p, HAS_BIAS: tl.constexpr, RESET: tl.constexpr,
                     ZONEOUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = rn < H
    acc_r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        y = tl.load(y_ptr + rk, mask=rk < H, other=0.0)
        act = y != 0.0
        if tl.max(act.to(tl.int32), axis=0) > 0:
            wm = act[:, None] & mn[None, :]
            base = wt_ptr + rk[:, None] * (3 * H) + rn[None, :]
            yc = y[:, None]
            acc_r += tl.sum(yc * tl.load(base, mask=wm, other=0.0), axis=0)
            acc_z += tl.sum(yc * tl.load(base + H, mask=wm, other=0.0), axis=0)
            acc_g += tl.sum(yc * tl.load(base + 2 * H, mask=wm, other=0.0), axis=0)
    if HAS_BIAS:
        acc_r += tl.load(b_ptr + rn, mask=mn, other=0.0)
        acc_z += tl.load(b_ptr + H + rn, mask=mn, other=0.0)
        acc_g += tl.load(b_ptr + 2 * H + rn, mask=mn, other=0.0)
    r = tl.sigmoid(tl.load(gi_ptr + rn, mask=mn, other=0.0) + acc_r)
    z = tl.sigmoid(tl.load(gi_ptr + H + rn, mask=mn, other=0.0) + acc_z)
    g = 2.0 * tl.sigmoid(2.0 * (tl.load(gi_ptr + 2 * H + rn, mask=mn, other=0.0) + r * acc_g))
    g = g - 1.0  # tanh
    c = tl.load(c_ptr + rn, mask=mn, other=0.0)
    ct = z * c + (1.0 - z) * g
    if RESET == 1:
        ct -= tl.load(y_ptr + rn, mask=mn, other=0.0)
    th = tl.load(theta_ptr + rn, mask=mn, other=0.0)
    o = tl.where(ct > th, 1.0, 0.0)
    c_new = ct
    if RESET == 0:
        c_new = ct - o * th
    if ZONEOUT:
        c_new = keep_p * c + (1.0 - keep_p) * c_new
    tl.store(y_out_ptr + rn, o * ct, mask=mn)
    tl.store(c_out_ptr + rn, c_new, mask=mn)


def _check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.float32:
            raise ValueError(f"triton event kernels take float32 tensors, got {t.dtype}")
        if t.device.type != "cuda" and not interpreting():
            raise ValueError(f"triton event kernels need CUDA tensors, got device {t.device} "
                             "(CPU tensors run only under TRITON_INTERPRET=1)")


def event_matvec(y: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None = None,
                 block_n: int = BLOCK_N, block_k: int = BLOCK_K,
                 split_k: bool = False) -> torch.Tensor:
    """``bias + W @ y`` reading only the rows of ``w_t = W^T`` ``(K, N)`` where ``y`` ``(K,)``
    is nonzero. Returns ``(N,)`` float32.

    ``split_k``: one program per ``block_n`` outputs x ``block_k`` inputs, partial sums added
    atomically (more parallelism and a short dependency chain per program, so the time falls
    with the activity; the summation order, and so the last bits, vary between calls). The
    default gives each program all inputs of its ``block_n`` outputs (deterministic)."""
    if y.dim() != 1 or w_t.dim() != 2 or w_t.shape[0] != y.shape[0]:
        raise ValueError(f"y must be (K,) and w_t (K, N), got y {tuple(y.shape)} and w_t "
                         f"{tuple(w_t.shape)}")
    _check_device(y, w_t)
    block_n = check_int("block_n", block_n, low=1)
    block_k = check_int("block_k", block_k, low=1)
    k, n = w_t.shape
    if split_k:
        out = bias.float().clone() if bias is not None else y.new_zeros(n)
        _event_matvec_split_k[(triton.cdiv(n, block_n), triton.cdiv(k, block_k))](
            y.contiguous(), w_t.contiguous(), out, k, n, BLOCK_N=block_n, BLOCK_K=block_k)
        return out
    out = y.new_empty(n)
    _event_matvec[(triton.cdiv(n, block_n),)](
        y.contiguous(), w_t.contiguous(), bias if bias is not None else out, out, k, n,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


def egru_event_step(gi: torch.Tensor, y: torch.Tensor, c: torch.Tensor, w_hh_t: torch.Tensor,
                    b_hh: torch.Tensor | None, theta: torch.Tensor,
                    reset_mode: str = "subtract_threshold", zoneout: float = 0.0,
                    block_n: int = BLOCK_N, block_k: int = BLOCK_K
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch-1 EGRU step. ``gi`` ``(3H,)`` input projection; ``y``, ``c`` ``(H,)``;
    ``w_hh_t`` ``(H, 3H)`` = ``weight_hh.t().contiguous()``; ``b_hh`` ``(3H,)`` or None;
    ``theta`` ``(H,)``; ``zoneout``: eval-mode zoneout probability. Returns ``(y, c)``."""
    h = y.shape[0]
    if tuple(w_hh_t.shape) != (h, 3 * h) or tuple(gi.shape) != (3 * h,):
        raise ValueError(f"w_hh_t must be (H, 3H) and gi (3H,) for y (H,)={h}, got "
                         f"{tuple(w_hh_t.shape)} and {tuple(gi.shape)}")
    if reset_mode not in RESET_CODES:
        raise ValueError(f"reset_mode must be one of {list(RESET_CODES)}, got {reset_mode!r}")
    _check_device(gi, y, c, w_hh_t, theta)
    y_out, c_out = torch.empty_like(y), torch.empty_like(c)
    _egru_event_step[(triton.cdiv(h, block_n),)](
        gi, y, c, w_hh_t, b_hh if b_hh is not None else gi, theta, y_out, c_out, h,
        float(zoneout), HAS_BIAS=b_hh is not None, RESET=RESET_CODES[reset_mode],
        ZONEOUT=zoneout > 0.0, BLOCK_N=check_int("block_n", block_n, low=1),
        BLOCK_K=check_int("block_k", block_k, low=1))
    return y_out, c_out


class TritonEventEGRU:
    """Streams a trained :class:`EGRU` (eval mode, float32) one input vector at a time.

    Layer 0's input projection is a dense cuBLAS matvec (its input is dense, e.g. an
    embedding); the recurrent matvecs and the upper layers' input projections read only the
    columns of units that fired. ``step(x (I,)) -> y (H_last,)``; ``reset()`` zeroes the state.
    """

    def __init__(self, model: EGRU, block_n: int = BLOCK_N, block_k: int = BLOCK_K) -> None:
        if not isinstance(model, EGRU) or not model.events:
            raise ValueError("model must be an EGRU with events=True")
        self.reset_mode, self.zoneout = model.reset_mode, float(model.zoneout)
        self.block_n, self.block_k = block_n, block_k
        with torch.no_grad():
            self.layers = []
            for k in range(model.num_layers):
                w_ih = getattr(model, f"weight_ih_l{k}").detach().float()
                b_ih, b_hh = (getattr(model, f"{n}_l{k}") for n in ("bias_ih", "bias_hh"))
                self.layers.append({
                    "w_ih": w_ih.contiguous(),
                    "w_ih_t": w_ih.t().contiguous(),
                    "b_ih": None if b_ih is None else b_ih.detach().float().contiguous(),
                    "w_hh_t": getattr(model, f"weight_hh_l{k}").detach().float().t()
                    .contiguous(),
                    "b_hh": None if b_hh is None else b_hh.detach().float().contiguous(),
                    "theta": model.threshold(k).detach().float().contiguous(),
                })
        self.reset()

    def reset(self) -> None:
        """Zero every layer's ``(y, c)``."""
        self.state = [(p["theta"].new_zeros(p["theta"].shape[0]),
                       p["theta"].new_zeros(p["theta"].shape[0])) for p in self.layers]

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One input vector ``(I,)`` -> the last layer's output ``(H_last,)``."""
        inp = x.float()
        for k, p in enumerate(self.layers):
            if k == 0:
                gi = torch.addmv(p["b_ih"], p["w_ih"], inp) if p["b_ih"] is not None \
                    else p["w_ih"] @ inp
            else:
                gi = event_matvec(inp, p["w_ih_t"], p["b_ih"], self.block_n, self.block_k)
            y, c = egru_event_step(gi, *self.state[k], p["w_hh_t"], p["b_hh"], p["theta"],
                                   self.reset_mode, self.zoneout, self.block_n, self.block_k)
            self.state[k] = (y, c)
            inp = y
        return inp


__all__ = ["BLOCK_K", "BLOCK_N", "TritonEventEGRU", "egru_event_step", "event_matvec"]
