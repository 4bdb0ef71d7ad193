"""Group lasso over weight blocks (Narang et al., "Block-Sparse RNNs", 2017).

``penalty = lambda * sum_tensors sum_blocks ||w_block||_2``, with the same ``(r, c)`` blocks
as block pruning, so the penalty pushes whole blocks towards zero. GL is this penalty alone
(then one pruning cut); GLP is this penalty together with gradual block pruning. The
gradient of ``||w_b||_2`` is ``w_b / ||w_b||_2``, and 0 for an all-zero (pruned) block.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dualsparse.validation import check_block, check_real


def block_norms(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """L2 norm of every ``(r, c)`` block of ``weight`` ``(R, C)``: ``(R/r, C/c)``, with grad."""
    if weight.dim() != 2:
        raise ValueError(f"group lasso needs 2-D weights, got shape {tuple(weight.shape)}")
    r, c = check_block("block shape", block)
    rows, cols = weight.shape
    if rows % r or cols % c:
        raise ValueError(f"block shape {r}x{c} does not tile a {rows}x{cols} matrix")
    return torch.linalg.vector_norm(weight.reshape(rows // r, r, cols // c, c), dim=(1, 3))


def group_lasso(weights: Iterable[tuple[torch.Tensor, tuple[int, int]]],
                strength: float) -> torch.Tensor:
    """``strength * sum ||w_block||_2`` over ``(weight, block)`` pairs (a 0-d tensor)."""
    check_real("group lasso strength", strength, low=0.0)
    total: torch.Tensor | None = None
    for w, block in weights:
        s = block_norms(w, block).sum()
        total = s if total is None else total + s
    if total is None:
        raise ValueError("group lasso needs at least one weight")
    return strength * total
