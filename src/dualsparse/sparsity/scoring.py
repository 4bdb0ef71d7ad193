"""Magnitude scores of weights and weight blocks, and the choice of what to prune.

A weight matrix ``(R, C)`` is tiled into blocks ``(r, c)`` (``r`` divides ``R``, ``c`` divides
``C``); block ``(i, j)`` holds rows ``i*r:(i+1)*r`` and columns ``j*c:(j+1)*c``. A block's
score is one statistic of the magnitudes ``|w|`` of its ``r*c`` weights:

* ``max``: the largest ``|w|`` (Narang et al. 2017, "Block-Sparse RNNs");
* ``mean``: the mean ``|w|`` (L1 norm / ``r*c``);
* ``rms``: ``sqrt(mean(w^2))`` (L2 norm / ``sqrt(r*c)``, the group lasso norm up to a scale);
* ``geomean``: ``exp(mean(log|w|))`` (0 as soon as one weight is exactly 0);
* ``median``: the median ``|w|`` (mean of the two middle values for an even count).

Unstructured magnitude pruning is the block shape ``(1, 1)``, where every statistic is ``|w|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dualsparse.validation import check_block

STATS = ("max", "mean", "rms", "geomean", "median")
SCOPES = ("layer", "global")


def parse_block(text: str) -> tuple[int, int]:
    """``"4x4"`` -> ``(4, 4)``; ``"16x1"`` -> ``(16, 1)`` (rows x cols); an argparse ``type``."""
    return check_block("block shape", text)


def to_blocks(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``(R, C)`` -> ``(R/r, C/c, r*c)``: the entries of each block along the last dim."""
    if weight.dim() != 2:
        raise ValueError(f"block tiling needs a 2-D tensor, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    r, c = block
    if rows % r or cols % c:
        raise ValueError(f"block shape {r}x{c} does not tile a {rows}x{cols} matrix")
    return weight.reshape(rows // r, r, cols // c, c).permute(0, 2, 1, 3).reshape(
        rows // r, cols // c, r * c)


def block_scores(weight: torch.Tensor, block: tuple[int, int] = (1, 1),
                 stat: str = "max") -> torch.Tensor:
    """Score of every block of ``weight`` ``(R, C)``: ``(R/r, C/c)`` (float32 or wider).

    Args:
        weight: the matrix (its magnitudes are scored; no gradient flows).
        block: ``(r, c)``.
        stat: one of :data:`STATS`.
    """
    if stat not in STATS:
        raise ValueError(f"unknown block score {stat!r}; expected one of {STATS}")
    w = weight.detach()
    if not w.is_floating_point():
        raise ValueError(f"weights must be floating point, got {w.dtype}")
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    a = to_blocks(w.abs(), block)
    if stat == "max":
        return a.amax(-1)
    if stat == "mean":
        return a.mean(-1)
    if stat == "rms":
        return a.square().mean(-1).sqrt()
    if stat == "geomean":
        return torch.log(a).mean(-1).exp()  # log(0) = -inf -> score 0, never NaN
    s = a.sort(-1).values
    n = a.size(-1)
    return 0.5 * (s[..., (n - 1) // 2] + s[..., n // 2])


def expand_blocks(block_mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Block mask ``(R/r, C/c)`` -> element mask ``(R, C)``."""
    r, c = block
    return block_mask.repeat_interleave(r, 0).repeat_interleave(c, 1)


def blocks_alive(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``(R/r, C/c)`` bool: blocks of an element mask ``(R, C)`` with any kept entry."""
    return to_blocks(mask, block).any(-1)


def select_lowest(scores: torch.Tensor, sizes: torch.Tensor, target: float) -> torch.Tensor:
    """Blocks to prune so that about ``target`` weights are pruned, lowest scores first.

    Args:
        scores: ``(N,)`` block scores; ``-inf`` marks blocks already pruned (always kept pruned).
        sizes: ``(N,)`` weights per block.
        target: number of weights to prune (a float; e.g. ``sparsity * numel``).

    Returns ``(N,)`` bool. A block is pruned when the weights pruned before it plus half its own
    size do not exceed ``target`` (round half up to whole blocks); ties in score are broken by
    position (stable sort), so the count is exact and deterministic.
    """
    if scores.shape != sizes.shape or scores.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)} and sizes {tuple(sizes.shape)} must be "
                         f"equal 1-D shapes")
    if math.isnan(target):
        raise ValueError("target number of pruned weights is NaN")
    if torch.isnan(scores).any():
        raise ValueError("block scores contain NaN (are the weights finite?)")
    order = torch.argsort(scores, stable=True)
    s = sizes[order].to(torch.float64)
    before = torch.cumsum(s, 0) - s
    chosen = (before + 0.5 * s <= target) | torch.isneginf(scores[order])
    out = torch.zeros_like(chosen)
    out[order] = chosen
    return out


@dataclass(frozen=True)
class Scoring:
    """How blocks are ranked.

    Attributes:
        stat: block statistic, one of :data:`STATS` (default ``"max"``, the paper's).
        scope: ``"layer"`` ranks each tensor (or each gate, for per-gate targets) on its own;
            ``"global"`` ranks the blocks of all pruned tensors together against one target.
    """

    stat: str = "max"
    scope: str = "layer"

    def __post_init__(self) -> None:
        if self.stat not in STATS:
            raise ValueError(f"unknown block score {self.stat!r}; expected one of {STATS}")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown pruning scope {self.scope!r}; expected one of {SCOPES}")

    def to_dict(self) -> dict[str, str]:
        return {"stat": self.stat, "scope": self.scope}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scoring:
        unknown = set(d) - {"stat", "scope"}
        if unknown:
            raise ValueError(f"unknown scoring keys {sorted(unknown)}")
        return cls(**d)
