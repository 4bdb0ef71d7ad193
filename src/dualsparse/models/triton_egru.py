"""Triton path of the fused EGRU layer: forward and BPTT with one kernel launch per time step.

:func:`triton_egru_sequence` has the signature and results of
:func:`dualsparse.models.egru_fused.egru_sequence` (the pure-PyTorch reference it is tested
against). Per step, one kernel computes the recurrent matmul ``y_{t-1} @ W_hh^T`` for a tile of
``(batch rows, units)`` and fuses the gates, the event, the reset and zoneout into its
epilogue; the backward step kernel computes ``dy_t = d_gh_{t+1} @ W_hh`` and the gate
derivatives of the same tile. The time loop stays on the host (one launch per step and
direction): a persistent kernel would need a grid-wide barrier between steps, which Triton
does not provide (and its CPU interpreter, which runs programs one after another, could not
test).

Sparse backward: units that did not fire and lie outside the surrogate support need no ``dy``
(see :mod:`dualsparse.models.egru_fused`). ``backward_matmul`` chooses how a BPTT step computes
``dy_t = d_gh_{t+1} @ W_hh``:

* ``"fused"`` (default): in the step kernel, which then computes the gate derivatives of its
  tile; sparse, a tile whose units no batch row needs skips its matmul.
* ``"cublas"``: ``torch.mm`` per step, then the step kernel for the gates. Sparse, it first
  finds the units that some step needs (one device sync per backward); where they are at most
  ``sparse_density`` of all, it gathers their columns of ``W_hh`` once and multiplies only
  those in every step (a unit needed in one step is computed in all: the union over time).
  Its kernels take less device time than ``"fused"`` (dense: 4.5 vs 6.1 ms at the paper size
  on an H100), but its per-step host work (more launches from Python) makes the wall time
  longer (docs/gpu.md): it is a measured option, not the default; capturing the step loop in
  a CUDA graph would turn its device time into wall time.

The weight gradient (cuBLAS) multiplies only the columns of units that fired at least once
when they are at most ``sparse_density`` of all. ``sparse_backward=False`` runs everything
dense (for measurements).

The kernels need CUDA tensors, or CPU tensors in a process started with
``TRITON_INTERPRET=1`` (Triton's interpreter, slow: for tests at small sizes). triton is an
optional dependency (``pip install dualsparse[gpu]``); :func:`available` says whether it is
importable. Matmuls use IEEE fp32 unless
``torch.backends.cuda.matmul.allow_tf32`` is set (then TF32); float64 is supported, half
inputs (autocast) are computed in float32.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from dualsparse.models import _triton_egru_kernels
from dualsparse.models.surrogate import Surrogate, needed_units
from dualsparse.validation import check_choice, check_int, check_real

RESET_CODES = {"subtract_threshold": 0, "subtract_output": 1, "none": 2}
SHAPE_CODES = {"triangle": 0, "rectangle": 1, "fast_sigmoid": 2}

BACKWARD_MATMULS = ("fused", "cublas")
"""How the BPTT step computes ``dy_t = d_gh_{t+1} @ W_hh`` (see :func:`triton_egru_sequence`)."""

SPARSE_DENSITY = 0.5
"""Default ``sparse_density`` of the Triton backward: ``backward_matmul="cublas"`` gathers the
needed units when at most this fraction of units is needed in some step, and the weight
gradient gathers columns when at most this fraction of units fired."""


@dataclass(frozen=True)
class Blocks:
    """Tile sizes (each a power of two >= 16, as ``tl.dot`` needs) and warps per program.

    ``batch`` x ``hidden`` is the tile of one step program; ``k`` the reduction chunk;
    ``num_warps`` the warps of the step kernels. Defaults are untuned (no GPU was lent when they
    were chosen); ``benchmarks/bench_gpu.py`` compares a few.
    """

    batch: int = 16
    hidden: int = 32
    k: int = 32
    num_warps: int = 4

    def __post_init__(self) -> None:
        for name in ("batch", "hidden", "k"):
            v = check_int(f"Blocks.{name}", getattr(self, name), low=16)
            if v & (v - 1):
                raise ValueError(f"Blocks.{name} must be a power of two, got {v}")
        check_int("Blocks.num_warps", self.num_warps, low=1, high=32)


def available() -> bool:
    """True when triton is importable (the ``gpu`` extra is installed)."""
    return importlib.util.find_spec("triton") is not None


def _kernel_module() -> SimpleNamespace:
    if not available():
        raise ValueError("backend 'triton' needs the triton package: pip install 'dualsparse[gpu]'")
    return _triton_egru_kernels.load()


def interpreting() -> bool:
    """True when this process runs Triton kernels in the CPU interpreter (``TRITON_INTERPRET=1``
    was set when triton was first imported; the mode is fixed per process)."""
    return _kernel_module().INTERPRETED


def _kernels(device: torch.device) -> SimpleNamespace:
    """The kernels, after checking that they can run on ``device``."""
    mod = _kernel_module()
    if device.type != "cuda" and not mod.INTERPRETED:
        raise ValueError(f"backend 'triton' needs CUDA tensors, got device {device} (CPU tensors "
                         "run only under Triton's interpreter: TRITON_INTERPRET=1)")
    return mod


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class TritonEGRUSequenceFn(torch.autograd.Function):
    """``(gi, y0, c0, w_hh, b_hh, theta, keep) -> (ys, events, c_tildes, c_last)``; shapes as
    :class:`dualsparse.models.egru_fused.EGRUSequenceFn`. If a dict ``stats`` is given, the
    backward stores in it ``path`` (``"dense"``, ``"tiles"``, ``"cublas_dense"`` or
    ``"cublas_gather"``),
    ``needed_fraction`` (of (step, unit) pairs, steps ``0 .. T-2``) and ``dy_columns`` (the
    fraction of units whose ``dy`` is computed; both ``"cublas"``, sparse),
    ``skipped_tiles`` (the fraction of step tiles whose matmul was skipped; ``"tiles"``, a
    device sync) and ``weight_columns`` (the fraction of ``W_hh`` columns computed)."""

    @staticmethod
    def forward(ctx, gi, y0, c0, w_hh, b_hh, theta, keep, surrogate: Surrogate,
                reset_mode: str, sparse_backward: bool = True, blocks: Blocks | None = None,
                stats: dict | None = None, sparse_density: float = SPARSE_DENSITY,
                backward_matmul: str = "fused"):  # type: ignore[override]
        blocks = blocks or Blocks()
        dt = _compute_dtype(gi, y0, c0, w_hh, theta)
        in_dtypes = (gi.dtype, y0.dtype, c0.dtype, w_hh.dtype,
                     None if b_hh is None else b_hh.dtype, theta.dtype)
        gi = gi.detach().to(dt).contiguous()
        w = w_hh.detach().to(dt).contiguous()
        w_t = w.t().contiguous()
        bias = b_hh.detach().to(dt).contiguous() if b_hh is not None else w.new_zeros(1)
        th = theta.detach().to(dt).contiguous()
        steps, batch, three_h = gi.shape
        h = three_h // 3
        keep_t = keep.detach().to(dt).contiguous() if isinstance(keep, torch.Tensor) else None
        keep_code = 1 if keep_t is not None else (2 if isinstance(keep, float) else 0)
        keep_p = float(keep) if isinstance(keep, float) else 0.0
        ys = gi.new_empty(steps, batch, h)
        events, c_tildes = torch.empty_like(ys), torch.empty_like(ys)
        rs, zs, gs, ghg = (torch.empty_like(ys) for _ in range(4))
        cs = gi.new_empty(steps + 1, batch, h)
        cs[0] = c0.detach().to(dt)
        y0d = y0.detach().to(dt).contiguous()
        k = _kernels(gi.device)
        grid = (triton_cdiv(batch, blocks.batch), triton_cdiv(h, blocks.hidden))
        prec = _precision(dt)
        for t in range(steps):
            y_prev = y0d if t == 0 else ys[t - 1]
            k.egru_fwd_step[grid](
                gi[t], y_prev, cs[t], w_t, bias, th, keep_t[t] if keep_t is not None else th,
                ys[t], cs[t + 1], events[t], c_tildes[t], rs[t], zs[t], gs[t], ghg[t],
                batch, h, keep_p,
                HAS_BIAS=b_hh is not None, KEEP=keep_code, RESET=RESET_CODES[reset_mode],
                PRECISION=prec, BLOCK_B=blocks.batch, BLOCK_H=blocks.hidden, BLOCK_K=blocks.k,
                num_warps=blocks.num_warps)
        ctx.save_for_backward(y0d, w, th, ys, events, c_tildes, cs, rs, zs, gs, ghg, keep_t)
        ctx.keep_code, ctx.keep_p, ctx.has_bias = keep_code, keep_p, b_hh is not None
        ctx.surrogate, ctx.reset_mode = surrogate, reset_mode
        ctx.sparse, ctx.blocks, ctx.in_dtypes = bool(sparse_backward), blocks, in_dtypes
        ctx.stats, ctx.sparse_density = stats, float(sparse_density)
        ctx.backward_matmul = backward_matmul
        out_dt = gi.dtype if gi.dtype == torch.float64 else torch.float32
        return (ys.to(out_dt), events.to(out_dt), c_tildes.to(out_dt),
                cs[steps].clone().to(out_dt))

    @staticmethod
    def backward(ctx, d_ys, d_events, d_ctildes, d_clast):  # type: ignore[override]
        (y0, w, th, ys, events, c_tildes, cs, rs, zs, gs, ghg, keep) = ctx.saved_tensors
        steps, batch, h = ys.shape
        dt, blocks, sur = ys.dtype, ctx.blocks, ctx.surrogate
        stats = ctx.stats if ctx.stats is not None else {}

        def prep(x):
            return None if x is None else x.to(dt).contiguous()

        d_ys, d_events, d_ctildes = prep(d_ys), prep(d_events), prep(d_ctildes)
        d_gi = ys.new_empty(steps, batch, 3 * h)
        d_ghg = torch.empty_like(ys)
        d_th = torch.empty_like(ys)
        dc = d_clast.to(dt).clone().contiguous() if d_clast is not None else ys.new_zeros(batch, h)
        d_ct = ys.new_zeros(batch, h)
        grid = (triton_cdiv(batch, blocks.batch), triton_cdiv(h, blocks.hidden))
        skipped = torch.zeros(steps, grid[0] * grid[1], dtype=torch.int32, device=ys.device)
        k = _kernels(ys.device)
        prec = _precision(dt)
        path = "tiles" if ctx.sparse else "dense"
        dyg = pos = w_sub = None
        if ctx.backward_matmul == "cublas":  # dy of step t goes to dyg, read by the kernel
            cols = None
            if ctx.sparse and steps > 1:
                cols = _needed_columns(events, c_tildes, th, sur, ctx.sparse_density, stats)
            path = "cublas_gather" if cols is not None else "cublas_dense"
            if cols is None:
                w_sub, pos = w, torch.arange(h, dtype=torch.int32, device=ys.device)
            else:  # the columns of W_hh of the units needed in some step, gathered once
                w_sub = w.index_select(1, cols)
                pos = torch.full((h,), -1, dtype=torch.int32, device=ys.device)
                pos[cols] = torch.arange(cols.numel(), dtype=torch.int32, device=ys.device)
            dyg = ys.new_empty(batch, max(w_sub.shape[1], 1))  # no unit needed: never read
        stats["path"] = path
        for t in range(steps - 1, -1, -1):
            nxt = min(t + 1, steps - 1)
            has_next = t < steps - 1
            given = has_next and dyg is not None
            if given and w_sub.shape[1] > 0:  # dy (B, n) = d_gh_{t+1} @ W_hh[:, units]
                torch.mm(d_gi[nxt, :, :2 * h], w_sub[:2 * h], out=dyg)
                dyg.addmm_(d_ghg[nxt], w_sub[2 * h:])
            k.egru_bwd_step[grid](
                d_gi[nxt], d_ghg[nxt], w, d_ys[t] if d_ys is not None else dc, d_ct, dc,
                events[t], c_tildes[t], cs[t], rs[t], zs[t], gs[t], ghg[t], th,
                keep[t] if keep is not None else th,
                d_events[t] if d_events is not None else dc,
                d_ctildes[t] if d_ctildes is not None else dc,
                d_gi[t], d_ghg[t], d_th[t], skipped[t], dyg if given else dc,
                pos if given else dc, batch, h, dyg.shape[1] if given else h, ctx.keep_p,
                float(sur.gamma), float(sur.width),
                HAS_NEXT=has_next, HAS_DYS=d_ys is not None, HAS_DEV=d_events is not None,
                HAS_DCTL=d_ctildes is not None, SPARSE=ctx.sparse, GIVEN_DY=given,
                SHAPE=SHAPE_CODES[sur.shape], KEEP=ctx.keep_code,
                RESET=RESET_CODES[ctx.reset_mode], PRECISION=prec, BLOCK_B=blocks.batch,
                BLOCK_H=blocks.hidden, BLOCK_K=blocks.k, num_warps=blocks.num_warps)
        if ctx.stats is not None and path == "tiles":
            stats["skipped_tiles"] = skipped[:-1].float().mean().item() if steps > 1 else 0.0
        d_gh0 = torch.cat([d_gi[0, :, :2 * h], d_ghg[0]], dim=1)
        dy0 = d_gh0 @ w
        if ctx.reset_mode == "subtract_output":
            dy0 = dy0 - d_ct
        y_prev_all = torch.cat([y0.unsqueeze(0), ys[:-1]], 0).reshape(steps * batch, h)
        d_w = _recurrent_weight_grad(d_gi.view(steps * batch, 3 * h)[:, :2 * h],
                                     d_ghg.view(steps * batch, h), y_prev_all,
                                     ctx.sparse_density if ctx.sparse else 0.0, stats)
        d_b = None
        if ctx.has_bias:
            d_b = torch.cat([d_gi[:, :, :2 * h].sum((0, 1)), d_ghg.sum((0, 1))])
        dtypes = ctx.in_dtypes

        def cast(x, i):
            return None if x is None or dtypes[i] is None else x.to(dtypes[i])

        return (cast(d_gi, 0), cast(dy0, 1), cast(dc, 2), cast(d_w, 3), cast(d_b, 4),
                cast(d_th.sum((0, 1)), 5), None, None, None, None, None, None, None, None)


def _needed_columns(events: torch.Tensor, c_tildes: torch.Tensor, theta: torch.Tensor,
                    surrogate: Surrogate, sparse_density: float, stats: dict
                    ) -> torch.Tensor | None:
    """The units some backward step ``0 .. T-2`` needs (int64, ascending), or None when they
    are more than ``sparse_density`` of all (one device sync). Stores ``needed_fraction`` (of
    (step, unit) pairs) and ``dy_columns`` (the fraction of units returned) in ``stats``."""
    need = needed_units(events[:-1], c_tildes[:-1], theta, surrogate).any(1)  # (T-1, H)
    union = need.any(0)
    cols = union.nonzero().squeeze(1)
    stats["needed_fraction"] = need.float().mean().item()
    stats["dy_columns"] = cols.numel() / max(union.numel(), 1)
    return cols if stats["dy_columns"] <= sparse_density else None


def _recurrent_weight_grad(d_rz: torch.Tensor, d_hg: torch.Tensor, y_prev: torch.Tensor,
                           sparse_density: float, stats: dict) -> torch.Tensor:
    """``dW_hh`` ``(3H, H) = [d_rz, d_hg]^T @ y_prev`` (cuBLAS) with ``d_rz`` ``(N, 2H)`` (a
    strided view), ``d_hg`` ``(N, H)``, ``y_prev`` ``(N, H)``. Only the columns of units that
    fired at least once are computed when they are at most ``sparse_density`` of all (the
    others are zero)."""
    n, h = y_prev.shape
    cols = None
    if sparse_density > 0.0:
        cols = y_prev.ne(0).any(0).nonzero().squeeze(1)
        if cols.numel() > sparse_density * h:
            cols = None
    y = y_prev if cols is None else y_prev.index_select(1, cols)
    stats["weight_columns"] = y.shape[1] / max(h, 1)
    part = y.new_empty(3 * h, y.shape[1])
    torch.mm(d_rz.t(), y, out=part[:2 * h])
    torch.mm(d_hg.t(), y, out=part[2 * h:])
    if cols is None:
        return part
    return part.new_zeros(3 * h, h).index_copy_(1, cols, part)


def triton_cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for the launch grids."""
    return -(-a // b)


def triton_egru_sequence(gi: torch.Tensor, y0: torch.Tensor, c0: torch.Tensor,
                         w_hh: torch.Tensor, b_hh: torch.Tensor | None, theta: torch.Tensor,
                         keep: torch.Tensor | float | None, surrogate: Surrogate,
                         reset_mode: str, sparse_backward: bool = True,
                         blocks: Blocks | None = None, stats: dict | None = None,
                         sparse_density: float = SPARSE_DENSITY, backward_matmul: str = "fused"
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton counterpart of :func:`dualsparse.models.egru_fused.egru_sequence`.

    Shapes: ``gi`` ``(T, B, 3H)``; ``y0``, ``c0`` ``(B, H)``; ``w_hh`` ``(3H, H)``; ``b_hh``
    ``(3H,)`` or None; ``theta`` ``(H,)``; ``keep`` ``(T, B, H)``, a float or None. Returns
    ``(ys, events, c_tildes, c_last)`` (float32, or float64 for float64 inputs).
    ``sparse_backward``: skip backward work of units outside the surrogate support;
    ``backward_matmul``: how each BPTT step computes ``dy_t = d_gh_{t+1} @ W_hh``, one of
    :data:`BACKWARD_MATMULS`: ``"fused"`` in the step kernel (sparse: tiles without needed
    units skip it), ``"cublas"`` ``torch.mm`` (sparse: over the gathered needed units);
    ``sparse_density`` in ``[0, 1]``: ``"cublas"`` (and the weight gradient's column gather)
    runs sparse when at most this fraction is needed (see the module docstring); ``blocks``:
    tile sizes; ``stats``: see :class:`TritonEGRUSequenceFn`.
    """
    sparse_density = check_real("sparse_density", sparse_density, low=0.0, high=1.0)
    backward_matmul = check_choice("backward_matmul", backward_matmul, BACKWARD_MATMULS)
    if reset_mode not in RESET_CODES:
        raise ValueError(f"reset_mode must be one of {list(RESET_CODES)}, got {reset_mode!r}")
    if gi.dim() != 3 or gi.shape[2] % 3 or tuple(w_hh.shape) != (gi.shape[2], gi.shape[2] // 3):
        raise ValueError(f"gi must be (T, B, 3H) and w_hh (3H, H), got gi {tuple(gi.shape)} "
                         f"and w_hh {tuple(w_hh.shape)}")
    args = (gi, y0, c0, w_hh, b_hh, theta, keep, surrogate, reset_mode, sparse_backward,
            blocks, stats, sparse_density, backward_matmul)
    if torch.is_autocast_enabled(gi.device.type):  # AMP: the kernels compute in float32
        with torch.autocast(gi.device.type, enabled=False):
            return TritonEGRUSequenceFn.apply(*args)
    return TritonEGRUSequenceFn.apply(*args)


__all__ = ["BACKWARD_MATMULS", "SPARSE_DENSITY", "Blocks", "TritonEGRUSequenceFn", "available",
           "interpreting", "triton_egru_sequence"]
