"""Sparse vs dense exact RTRL: counted MACs, wall-clock and the ideal from sparsity.

For each weight sparsity (random fixed masks on ``weight_hh``, as in the reference code's
sweep) and seed, one untrained EGRU cell runs the same batch of spiral-task sequences through
:class:`DenseRTRL` and :class:`SparseRTRL` (loss gradient at the last step). Printed per
sparsity (mean over seeds): active fraction ``lambda_a`` (units with dy/dc~ != 0, the columns
of J that propagate), kept-column fraction ``lambda_w``, the ideal update reduction
``1 / (lambda_a * lambda_w)``, the counted update and total MAC reductions, the influence
memory ratio, and the wall-clock ratio dense / sparse (median of repeats, same process).

Example::

    .venv/bin/python benchmarks/rtrl_speed.py --hidden 16 --seq-len 17 --batch 8 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from dualsparse.models import EGRUCell
from dualsparse.rtrl import DenseRTRL, SparseRTRL
from dualsparse.rtrl.tasks import spiral_task


def run_sequence(engine, xs: torch.Tensor, grad: torch.Tensor) -> float:
    t0 = time.perf_counter()
    engine.reset(xs.size(1))
    for x in xs:
        engine.step(x)
    engine.accumulate(grad)
    return time.perf_counter() - t0


def measure(hidden: int, sparsity: float, seed: int, args) -> dict:
    torch.manual_seed(seed)
    cell = EGRUCell(2, hidden, dtype=torch.float64)
    g = torch.Generator().manual_seed(1000 + seed)
    mask = {"weight_hh": torch.rand(3 * hidden, hidden, generator=g) >= sparsity}
    with torch.no_grad():
        cell.weight_hh.mul_(mask["weight_hh"])
    xs, _ = spiral_task(args.batch, args.seq_len, seed=seed, dtype=torch.float64)
    grad = torch.randn(args.batch, hidden, generator=g, dtype=torch.float64)
    dense = DenseRTRL(cell, mask, measure_density=True)
    sparse = SparseRTRL(cell, mask, measure_density=True, backend=args.backend)
    run_sequence(dense, xs, grad)
    run_sequence(sparse, xs, grad)
    gd, gs = dense.gradients(), sparse.gradients()
    err = max(float((gd[n] - gs[n]).abs().max() / gd[n].abs().max().clamp_min(1e-300))
              for n in gd)
    sd, ss = dense.counter.summary(), sparse.counter.summary()
    # timing without density measurement (it is not part of the algorithm); the untimed run
    # above also compiled the numba kernels
    dense.measure_density = sparse.measure_density = False
    td, ts = [], []
    for _ in range(args.repeats):
        td.append(run_sequence(dense, xs, grad))
        ts.append(run_sequence(sparse, xs, grad))
    lam_a = ss["active_fraction"]
    lam_w = sparse.num_kept / sparse.layout.num_columns
    return {
        "hidden": hidden, "sparsity": sparsity, "seed": seed, "max_rel_diff": err,
        "backend": sparse.backend,
        "active_fraction": lam_a, "kept_fraction": lam_w,
        "ideal_update_reduction": 1.0 / (lam_a * lam_w) if lam_a > 0 else float("inf"),
        "update_reduction": ss["update_reduction"], "total_reduction": ss["reduction"],
        "m_density": ss["m_density"], "memory_ratio": sd["m_bytes"] / ss["m_bytes"],
        "dense_s": statistics.median(td), "sparse_s": statistics.median(ts),
        "speedup": statistics.median(td) / statistics.median(ts),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[16])
    ap.add_argument("--seq-len", type=int, default=17)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sparsities", type=float, nargs="+",
                    default=[round(0.1 * i, 1) for i in range(10)])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", choices=("auto", "numba", "torch"), default="auto",
                    help="SparseRTRL backend (torch = per-sample loop with dense K[:, A])")
    ap.add_argument("--out", default=None, help="write all rows as JSON here (atomically)")
    args = ap.parse_args()
    for s in args.sparsities:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s}")
    torch.set_num_threads(args.threads)
    rows = [measure(h, s, seed, args) for h in args.hidden for s in args.sparsities
            for seed in range(args.seeds)]
    keys = ("active_fraction", "kept_fraction", "ideal_update_reduction", "update_reduction",
            "total_reduction", "m_density", "memory_ratio", "dense_s", "sparse_s", "speedup")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads={args.threads}, T={args.seq_len}, B={args.batch}, seeds={args.seeds}, "
          f"repeats={args.repeats} (median), float64, sparse backend={args.backend}")
    print("| H | w.sparsity | lambda_a | lambda_w | ideal upd. | MAC upd. | MAC total | "
          "M density | mem. ratio | dense s | sparse s | speed-up | max rel diff | backend |")
    print("|---" * 14 + "|")
    for h in args.hidden:
        for s in args.sparsities:
            sel = [r for r in rows if r["hidden"] == h and r["sparsity"] == s]
            m = {k: statistics.mean(r[k] for r in sel) for k in keys}
            err = max(r["max_rel_diff"] for r in sel)
            used = "/".join(sorted({r["backend"] for r in sel}))
            print(f"| {h} | {s:.1f} | {m['active_fraction']:.3f} | {m['kept_fraction']:.3f} | "
                  f"{m['ideal_update_reduction']:.2f} | {m['update_reduction']:.2f} | "
                  f"{m['total_reduction']:.2f} | {m['m_density']:.3f} | "
                  f"{m['memory_ratio']:.2f} | {m['dense_s']:.4f} | {m['sparse_s']:.4f} | "
                  f"{m['speedup']:.2f} | {err:.1e} | {used} |")
    if args.out:
        d = os.path.dirname(os.path.abspath(args.out))
        with tempfile.NamedTemporaryFile("w", dir=d, delete=False, suffix=".tmp") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
        os.replace(f.name, args.out)


if __name__ == "__main__":
    main()
