"""One vector through a dense matrix: the engine's two paths (register panels, column-major
copy) over matrix sizes, and the choice the engine makes for each size.

The single-vector product of a dense ``DenseMatrix`` (a streaming decoder, dense recurrent
weights) can read its active columns from the 64-row panels or from a column-major copy.
Which is faster depends on the caches (docs/engine.md, "DenseMatrix"): this script times
both on the same inputs, ``--tokens`` different vectors at ``--activity`` per repeat (so the
matrix is read as a stream of tokens reads it, not from a cache one repeated vector warms),
the two paths alternating, medians of ``--repeats``, wall time at one thread; and prints the
path ``DenseMatrix.single_by_columns`` picks for the size (timed once for 1-8 MB). Beside
them, one all-active vector (a dense embedding into the first layer) through the panels and
through PyTorch's product over the panels (``torch.matmul``, the path ``DenseMatrix`` took
for fewer than ``GEMM_MIN_VECTORS`` vectors until 2026-11-27).

    python benchmarks/bench_single_vector.py --out single_vector.json     # ~1 min idle
    python benchmarks/bench_single_vector.py --quick                      # smoke test
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from engine_bench_lib import add_session_args, interleaved, one_thread_session, write_json

from dualsparse.engine import kernels as K
from dualsparse.engine.pack import pack_dense

#: (rows, cols): the demo and paper decoders, an LSTM/GRU's stacked gate matrices
SHAPES = [(768, 256), (1024, 512), (10000, 128), (3072, 1024), (4050, 1350), (10000, 750)]
QUICK_SHAPES = [(200, 40)]


def run_shape(rows: int, cols: int, activity: float, tokens: int, repeats: int,
              seed: int) -> dict:
    rng = np.random.default_rng(seed)
    p = pack_dense(rng.standard_normal((rows, cols)).astype(np.float32))
    x = (rng.standard_normal((tokens, 1, cols))
         * (rng.random((tokens, 1, cols)) < activity)).astype(np.float32)
    idx, cnt = np.zeros((tokens, 1, cols), np.int32), np.zeros((tokens, 1), np.int32)
    for t in range(tokens):
        K.active_lists(x[t], idx[t], cnt[t])
    out = np.zeros((1, p.rows_padded), np.float32)
    panels, columns, group = p.data, p.columns(), p.column_group()

    def by_panels() -> None:
        for t in range(tokens):
            K.accumulate_dense(panels, p.rows_padded, x[t], idx[t], cnt[t], out)

    def by_columns() -> None:
        for t in range(tokens):
            K.accumulate_dense_columns(columns, p.rows_padded, group, x[t], idx[t], cnt[t], out)

    dense_x = np.ascontiguousarray(rng.standard_normal((1, cols)), dtype=np.float32)
    d_idx, d_cnt = np.zeros((1, cols), np.int32), np.zeros(1, np.int32)
    K.active_lists(dense_x, d_idx, d_cnt)
    torch_panels = torch.from_numpy(panels).view(-1, cols, 64)

    def all_active_panels() -> None:
        K.accumulate_dense(panels, p.rows_padded, dense_x, d_idx, d_cnt, out)

    def all_active_torch() -> None:  # the GEMV path DenseMatrix took before 2026-11-27
        torch.matmul(torch.from_numpy(dense_x), torch_panels)

    t = interleaved({"panels": by_panels, "columns": by_columns}, repeats, "wall")
    t.update(interleaved({"dense_panels": all_active_panels, "dense_torch": all_active_torch},
                         repeats * tokens, "wall"))
    values = float(cnt.sum()) * p.rows_padded
    chosen = p.single_by_columns()  # after the timings: it may drop the column copy
    row = {"rows": rows, "cols": cols, "mbytes": p.data.nbytes / 1e6, "activity": activity,
           "panels_us": t["panels"] / tokens * 1e6, "columns_us": t["columns"] / tokens * 1e6,
           "panels_ns_per_value": t["panels"] / values * 1e9,
           "columns_ns_per_value": t["columns"] / values * 1e9,
           "engine_path": "columns" if chosen else "panels",
           "all_active_panels_us": t["dense_panels"] * 1e6,
           "all_active_torch_us": t["dense_torch"] * 1e6}
    faster = "columns" if row["columns_us"] < row["panels_us"] else "panels"
    print(f"| {rows} x {cols} | {row['mbytes']:.1f} | {row['panels_us']:.1f} "
          f"| {row['columns_us']:.1f} | {row['panels_us'] / row['columns_us']:.2f} | {faster} "
          f"| {row['engine_path']} | {row['all_active_panels_us']:.1f} "
          f"| {row['all_active_torch_us']:.1f} |", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activity", type=float, default=0.26)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="one tiny matrix (smoke test)")
    add_session_args(p)
    args = p.parse_args(argv)
    if not 0.0 < args.activity <= 1.0:
        p.error(f"--activity must be in (0, 1], got {args.activity}")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    header = ("| matrix | MB | panels us | columns us | panels / columns | faster | engine "
              "picks | all active: panels us | all active: torch us |\n"
              "|---|---|---|---|---|---|---|---|---|")
    with one_thread_session("bench_single_vector.py", argv, args.allow_load or args.quick,
                            header) as session:
        rows = [run_shape(r, c, args.activity, 4 if args.quick else args.tokens,
                          1 if args.quick else args.repeats, args.seed) for r, c in shapes]
    payload = session.payload(shapes=rows)
    if args.out:
        write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
