"""Training-time augmentation of clip features ``(T, N, F)`` (time-first, values in [0, 1)).

Aimed at speakers the model has not heard: a speaker's vocal tract scales the spectrum's
frequency axis and their pace scales the time axis, so each clip of a batch gets

* a **frequency warp** (vocal-tract-length perturbation, Jaitly & Hinton 2013): the content of
  bin ``f`` moves to ``alpha * f``, ``alpha ~ U(1 - warp, 1 + warp)``;
* a **time stretch** about the clip's last frame (the front end right-aligns clips, zero
  frames first): frame ``T - 1 - k`` moves to ``T - 1 - beta * k``, ``beta ~ U(1 - stretch,
  1 + stretch)``;
* **masks** (SpecAugment, Park et al. 2019): one band of ``U{0..freq_mask}`` bins and one of
  ``U{0..time_mask}`` frames set to 0.

Warps resample with linear interpolation; content moved past the last bin or before the
first frame is dropped and what moves in from there is 0, so values stay in [0, 1) (Q15 for
the integer eGRU). Draws come from the caller's NumPy generator (reproducible, resumable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dualsparse.validation import check_int, check_real

MAX_SCALE = 0.5  # warp and stretch factors stay within [0.5, 1.5]


@dataclass(frozen=True)
class FeatureAugment:
    """Per-clip random warp, stretch and masks of ``(T, N, F)`` features (module docstring).

    Args:
        warp: frequency scale drawn from ``U(1 - warp, 1 + warp)``; 0 = off.
        stretch: time scale drawn from ``U(1 - stretch, 1 + stretch)``; 0 = off.
        freq_mask: widest band of bins set to 0 (bins); 0 = off.
        time_mask: widest band of frames set to 0 (frames); 0 = off.
    """

    warp: float = 0.0
    stretch: float = 0.0
    freq_mask: int = 0
    time_mask: int = 0

    def __post_init__(self) -> None:
        check_real("warp", self.warp, low=0.0, high=MAX_SCALE)
        check_real("stretch", self.stretch, low=0.0, high=MAX_SCALE)
        check_int("freq_mask", self.freq_mask, low=0)
        check_int("time_mask", self.time_mask, low=0)

    @property
    def active(self) -> bool:
        return bool(self.warp or self.stretch or self.freq_mask or self.time_mask)

    def settings(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Augmented copy of ``x`` ``(T, N, F)``; ``x`` itself is not changed."""
        if x.dim() != 3:
            raise ValueError(f"features must be (T, N, F), got shape {tuple(x.shape)}")
        t, n, f = x.shape
        if self.freq_mask > f or self.time_mask > t:
            raise ValueError(f"freq_mask {self.freq_mask} / time_mask {self.time_mask} exceed "
                             f"the features' {f} bins / {t} frames")
        out = x
        if self.warp:
            alpha = torch.from_numpy(rng.uniform(1 - self.warp, 1 + self.warp, n)).to(x)
            src = torch.arange(f, dtype=x.dtype) / alpha[:, None]            # (N, F)
            out = interpolate_last(out, src[None])
        if self.stretch:
            beta = torch.from_numpy(rng.uniform(1 - self.stretch, 1 + self.stretch, n)).to(x)
            back = (t - 1) - torch.arange(t, dtype=x.dtype)                   # frames to the end
            src = (t - 1) - back / beta[:, None]                              # (N, T)
            out = interpolate_last(out.permute(1, 2, 0), src[:, None]).permute(2, 0, 1)
        if self.freq_mask:
            out = out * _band_keep(rng, n, f, self.freq_mask)[None].to(x)    # (1, N, F)
        if self.time_mask:
            out = out * _band_keep(rng, n, t, self.time_mask).T[:, :, None].to(x)  # (T, N, 1)
        return out if out is not x else x.clone()


def interpolate_last(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x[..., pos]`` by linear interpolation along the last axis; positions outside
    ``[0, L - 1]`` give 0. ``pos`` broadcasts to ``x``'s shape."""
    length = x.shape[-1]
    p = pos.expand(x.shape)
    outside = (p < 0) | (p > length - 1)
    p = p.clamp(0, length - 1)
    i0 = p.floor().long()
    w = p - i0
    xp = F.pad(x, (0, 1))  # index L reads 0 (only reached with weight 0)
    v = xp.gather(-1, i0) * (1 - w) + xp.gather(-1, i0 + 1) * w
    return v.masked_fill(outside, 0.0)


def _band_keep(rng: np.random.Generator, n: int, length: int, widest: int) -> torch.Tensor:
    """``(n, length)`` of 0/1: per row one band of ``U{0..widest}`` zeros at a random start."""
    width = rng.integers(0, widest + 1, n)
    start = rng.integers(0, length - width + 1)
    idx = np.arange(length)
    band = (idx >= start[:, None]) & (idx < (start + width)[:, None])
    return torch.from_numpy(~band).float()


__all__ = ["FeatureAugment", "interpolate_last"]
