"""The engine's product per block shape on Narang et al.'s matrix sizes, against dense PyTorch.

The speed half of Narang et al.'s block-size tables on our CPU engine: one product ``W x``
for each of ``--vectors`` input vectors, ``W`` the 1760 x 1760 recurrent matrix of their
RNN at 90% sparsity and the 7680 x 2560 GRU matrix (3 gates x 2560 rows) at 95%, pruned in
whole ``br x bc`` blocks kept at random (``1x1`` = unstructured, packed as CSC), inputs with
a given fraction of nonzero entries (1.0: an LSTM's dense inputs; 0.25: an EGRU layer's
events). The baseline is dense ``torch.nn.functional.linear`` (BLAS GEMV / GEMM) at the same
shape, the fastest PyTorch path for one product. ``ideal`` = dense MACs / nonzero MACs =
1 / (weight density x input density); the engine's time includes listing the nonzero
inputs and clearing its output.

One thread, this thread's CPU time, ours and the baseline alternating, medians of
``--repeats``; the load average is printed before and after and a run above 1.5 is refused.

    python benchmarks/bench_block_shapes.py --out block_shapes.json      # ~2 min idle
    python benchmarks/bench_block_shapes.py --quick                      # smoke test
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from engine_bench_lib import add_session_args, interleaved, one_thread_session, write_json

from dualsparse.engine import kernels as K
from dualsparse.engine.pack import pack_matrix

#: name: (rows, cols, weight density)
MATRICES = {"1760x1760 90%": (1760, 1760, 0.10), "7680x2560 95%": (7680, 2560, 0.05)}
QUICK_MATRICES = {"96x64 75%": (96, 64, 0.25)}
SHAPES = ["1x1", "4x4", "8x8", "12x2", "16x1", "16x16", "32x32"]


def block_weight(rows: int, cols: int, density: float, block: tuple[int, int],
                 rng: np.random.Generator) -> np.ndarray:
    """Random ``(rows, cols)`` float32 weights in which whole ``block`` tiles are kept with
    probability ``density`` (tiles cut by the matrix edge count as whole)."""
    br, bc = block
    nbr, nbc = -(-rows // br), -(-cols // bc)
    keep = rng.random((nbr, nbc)) < density
    mask = np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)[:rows, :cols]
    w = rng.standard_normal((rows, cols)).astype(np.float32) / np.sqrt(cols)
    return (w * mask).astype(np.float32)


def run_matrix(name: str, rows: int, cols: int, density: float, shapes: list[str],
               vectors: list[int], activities: list[float], repeats: int,
               rng: np.random.Generator) -> list[dict]:
    out_rows = []
    for shape in shapes:
        block = tuple(int(s) for s in shape.split("x"))
        w = block_weight(rows, cols, density, block, rng)
        mat = pack_matrix(w, block)
        wt = torch.from_numpy(w)
        nnz = int(np.count_nonzero(w))
        for n in vectors:
            for act in activities:
                x = (rng.standard_normal((n, cols)) * (rng.random((n, cols)) < act)
                     ).astype(np.float32)
                xt = torch.from_numpy(x)
                idx, cnt = np.zeros(x.shape, np.int32), np.zeros(n, np.int32)
                out = np.zeros((n, mat.rows_padded), np.float32)

                def engine(x=x, idx=idx, cnt=cnt, out=out, mat=mat) -> None:
                    K.active_lists(x, idx, cnt)
                    out.fill(0.0)
                    mat.accumulate(x, idx, cnt, out, threads=1)

                fns = {"dense": partial(F.linear, xt, wt), "engine": engine}
                engine()
                expect = (xt @ wt.T).numpy()
                err = float(np.abs(out[:, :rows] - expect).max())
                if err > 1e-3 * max(1.0, float(np.abs(expect).max())):
                    raise AssertionError(f"{name} {shape}: engine differs from torch by {err}")
                t = interleaved(fns, repeats, "cpu")
                nz_inputs = float((x != 0).sum()) / n
                dense_macs = rows * cols
                eff_macs = nnz / cols * nz_inputs  # expected nonzero MACs per vector
                ideal = dense_macs / eff_macs if eff_macs else float("inf")
                speed = t["dense"] / t["engine"]
                row = {"matrix": name, "shape": shape, "vectors": n, "input_density": act,
                       "weight_density": nnz / (rows * cols),
                       "stored_per_nonzero": mat.stored_values / nnz,
                       "mbytes": mat.nbytes / 1e6, "dense_us": t["dense"] * 1e6,
                       "engine_us": t["engine"] * 1e6, "speedup": speed, "ideal": ideal,
                       "ratio": speed / ideal}
                out_rows.append(row)
                print(f"| {name} | {shape} | {n} | {act:.2f} | {row['weight_density']:.3f} "
                      f"| {row['stored_per_nonzero']:.2f} | {row['dense_us']:.1f} "
                      f"| {row['engine_us']:.1f} | {speed:.2f} | {ideal:.1f} "
                      f"| {row['ratio']:.2f} |", flush=True)
    return out_rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny matrix, 1 repeat")
    p.add_argument("--shapes", nargs="+", default=SHAPES,
                   help=f"block shapes br x bc (default: {' '.join(SHAPES)})")
    p.add_argument("--vectors", nargs="+", type=int, default=[1, 16])
    p.add_argument("--input-density", nargs="+", type=float, default=[1.0, 0.25])
    p.add_argument("--repeats", type=int, default=9)
    add_session_args(p)
    args = p.parse_args(argv)
    for s in args.shapes:
        parts = s.split("x")
        if len(parts) != 2 or not all(q.isdigit() and int(q) >= 1 for q in parts):
            p.error(f"--shapes: {s!r} is not a block shape like 4x4")
    if any(n < 1 for n in args.vectors):
        p.error(f"--vectors must be >= 1, got {args.vectors}")
    if any(not 0.0 < a <= 1.0 for a in args.input_density):
        p.error(f"--input-density must be in (0, 1], got {args.input_density}")
    matrices = QUICK_MATRICES if args.quick else MATRICES
    repeats = 1 if args.quick else args.repeats
    header = ("| matrix | block | vectors | input density | weight density | stored/nonzero "
              "| dense us | engine us | speed-up | ideal | meas/ideal |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    rows = []
    with one_thread_session("bench_block_shapes.py", argv, args.allow_load or args.quick,
                            header) as session:
        for name, (r, c, d) in matrices.items():
            rows += run_matrix(name, r, c, d, args.shapes, args.vectors, args.input_density,
                               repeats, rng)
    payload = session.payload(rows=rows)
    if args.out:
        write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
