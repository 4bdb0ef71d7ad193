"""Per-tensor sparsity report: sparsity, per-gate sparsity, nonzero blocks, fan-out histogram.

"Output connections" of a neuron are the nonzero weights in its *column* of a ``(out, in)``
matrix (its fan-out): an event of input unit ``j`` costs one multiply-accumulate per nonzero
in column ``j``, which is the work of an event-driven, weight-sparse kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from dualsparse.sparsity.scoring import blocks_alive
from dualsparse.validation import check_int


def fanout_histogram(mask: torch.Tensor, bins: int = 10) -> dict[str, list]:
    """Histogram of nonzero entries per column of a ``(out, in)`` mask.

    Returns ``{"edges": [bins + 1 ints], "counts": [bins ints]}``: ``counts[i]`` columns have
    a fan-out in ``[edges[i], edges[i+1])`` (the last bin includes ``out``).
    """
    if mask.dim() != 2:
        raise ValueError(f"fan-out needs a 2-D mask, got shape {tuple(mask.shape)}")
    bins = check_int("bins", bins, low=1)
    out_dim = mask.size(0)
    fan = mask.sum(0).to(torch.float64).cpu()
    bins = min(bins, max(out_dim, 1))  # bins at least one fan-out value wide
    edges = torch.linspace(0, out_dim, bins + 1, dtype=torch.float64).round()
    idx = torch.bucketize(fan, edges[1:-1], right=True)
    counts = torch.bincount(idx, minlength=bins)
    return {"edges": [int(e) for e in edges], "counts": [int(c) for c in counts]}


def tensor_report(name: str, mask: torch.Tensor, block: tuple[int, int],
                  gates: tuple[tuple[str, int, int], ...], bins: int = 10) -> dict[str, Any]:
    """Report of one pruned tensor from its mask ``(out, in)`` (True = kept).

    Keys: ``name``, ``shape``, ``block``, ``numel``, ``nonzero``, ``sparsity``,
    ``gate_sparsity`` (gate -> sparsity), ``blocks``, ``nonzero_blocks``, ``fanout``
    (min/mean/max nonzeros per column) and ``fanout_histogram`` (:func:`fanout_histogram`).
    """
    mask = mask.detach().bool()
    numel = mask.numel()
    nonzero = int(mask.sum())
    alive = blocks_alive(mask, block)
    fan = mask.sum(0).to(torch.float64)
    return {
        "name": name,
        "shape": list(mask.shape),
        "block": list(block),
        "numel": numel,
        "nonzero": nonzero,
        "sparsity": 1.0 - nonzero / numel,
        "gate_sparsity": {g: 1.0 - float(mask[a:b].float().mean()) for g, a, b in gates},
        "blocks": alive.numel(),
        "nonzero_blocks": int(alive.sum()),
        "fanout": {"min": int(fan.min()), "mean": float(fan.mean()), "max": int(fan.max())},
        "fanout_histogram": fanout_histogram(mask, bins),
    }


def format_report(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`tensor_report` rows."""
    head = f"{'tensor':<28} {'shape':>12} {'block':>6} {'sparsity':>8} {'nz blocks':>12} " \
           f"{'fan-out min/mean/max':>22}"
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"])
        block = "x".join(str(s) for s in r["block"])
        f = r["fanout"]
        lines.append(f"{r['name']:<28} {shape:>12} {block:>6} {r['sparsity']:>8.3f} "
                     f"{r['nonzero_blocks']:>5}/{r['blocks']:<6} "
                     f"{f['min']:>6}/{f['mean']:>7.1f}/{f['max']:<6}")
    return "\n".join(lines)
