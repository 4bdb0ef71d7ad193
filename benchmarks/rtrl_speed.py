"""Sparse vs dense exact RTRL on trained EGRU cells: counted MACs, wall-clock, memory, exactness.

For each hidden size ``H`` and weight sparsity an ``EGRUCell`` is first *trained* (BPTT,
``--train-steps`` Adam steps on the delayed-recall task of :mod:`dualsparse.rtrl.tasks`, with
a fixed random mask on ``W_hh`` and ``W_ih`` at that sparsity and a narrow surrogate, so its
activity is that of a trained network), or loaded from ``--cells-dir`` where an earlier run
saved it (safetensors + JSON; files are only ever created, never overwritten).

Then, on ``--batch`` streams of the same task, :class:`DenseRTRL` (one batched GEMM per step,
preallocated buffers) and :class:`SparseRTRL` run side by side, one step each in turn:
``--warmup`` untimed steps (the influence matrix fills up, numba compiles), then ``--steps``
timed steps, a loss gradient at every step. Reported per configuration:

* ``lambda_a``: mean fraction of units with ``dy/dc~ != 0`` (fired or inside the surrogate's
  support: the Jacobian columns that propagate), ``lambda_w``: kept fraction of the ``p``
  columns of ``M``, ``M density``: nonzeros of ``M`` over ``H p`` after the last step;
* counted MACs (dense / sparse, whole step: Jacobian, immediate terms, update, gradient) and
  the measured speed-up (median dense step time / median sparse step time), and their
  ratio ``measured / counted``;
* the dense engine's throughput in GMAC/s (counted dense MACs / time) next to ``torch.mm``
  at the shape of its GEMM, ``(H, H) x (H, p)``, in the same dtype and thread count;
* memory: bytes each engine allocates for the influence storage;
* exactness: gradients of dense RTRL, sparse RTRL and BPTT (autograd over the whole
  warm-up + timed sequence) agree to ``--tol`` (relative, every parameter; float64). A
  configuration that misses it is reported and makes the script exit with status 1.

Memory is estimated before allocation: an engine that would not fit in ``--max-bytes``
(default: half the machine's memory) is reported as refused, with the engine's message. If
only the dense one is refused, the sparse engine is timed alone and checked against BPTT.
Times are wall-clock (``perf_counter``); the JSON also has the thread CPU time of the same
steps (``*_cpu_s``, ``speedup_cpu``), which a loaded machine disturbs less.

Example (see docs/rtrl.md for the commands behind the tables)::

    .venv/bin/python benchmarks/rtrl_speed.py --hidden 64 128 --sparsities 0.5 0.8 0.9 \\
        --batch 1 8 --cells-dir /tmp/rtrl_cells --out /tmp/rtrl_speed_h64_128.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numba
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dualsparse.atomic import atomic_write_text
from dualsparse.models import EGRUCell
from dualsparse.rtrl import DenseRTRL, SparseRTRL, bptt_gradients
from dualsparse.rtrl.memory import format_bytes
from dualsparse.rtrl.sparse import BACKENDS
from dualsparse.rtrl.tasks import delayed_recall_stream
from dualsparse.validation import check_int, check_real

SYMBOLS = 2


# --- trained cells ---------------------------------------------------------------------------
def make_cell(hidden: int, sparsity: float, seed: int, args) -> tuple[EGRUCell, dict]:
    """A fresh cell (float64) with fixed random masks of ``sparsity`` on W_hh and W_ih."""
    torch.manual_seed(seed)
    cell = EGRUCell(SYMBOLS + 1, hidden, surrogate_width=args.surrogate_width,
                    threshold_mean=args.threshold_mean, dtype=torch.float64)
    g = torch.Generator().manual_seed(10_000 + seed)
    masks = {"weight_hh": torch.rand(3 * hidden, hidden, generator=g) >= sparsity,
             "weight_ih": torch.rand(3 * hidden, SYMBOLS + 1, generator=g) >= sparsity}
    with torch.no_grad():
        for n, m in masks.items():
            getattr(cell, n).mul_(m)
    return cell, masks


def train_cell(cell: EGRUCell, masks: dict, seed: int, args) -> dict:
    """BPTT on ``--train-batch`` recall streams, windows longer than the longest delay."""
    window = 2 * (args.delay_max + 2)
    length = window * args.train_steps
    streams = [delayed_recall_stream(length, args.delay_min, args.delay_max, SYMBOLS,
                                     seed=seed * 1000 + b, dtype=torch.float64)
               for b in range(args.train_batch)]
    xs = torch.cat([s.inputs for s in streams], dim=1)                  # (T, B, S + 1)
    ts = torch.stack([s.targets for s in streams], dim=1)               # (T, B)
    opt = torch.optim.Adam(cell.parameters(), lr=args.train_lr)
    readout = torch.nn.Linear(cell.hidden_size, SYMBOLS, dtype=torch.float64)
    opt.add_param_group({"params": readout.parameters()})
    state, right, total = None, 0, 0
    t0 = time.perf_counter()
    for k in range(args.train_steps):
        losses = []
        for t in range(k * window, (k + 1) * window):
            y, state = cell(xs[t], state)
            q = ts[t] >= 0
            if bool(q.any()):
                logits = readout(y[q])
                losses.append(F.cross_entropy(logits, ts[t][q], reduction="sum"))
                if k >= args.train_steps // 2:
                    right += int((logits.argmax(1) == ts[t][q]).sum())
                    total += int(q.sum())
        opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        torch.nn.utils.clip_grad_norm_(cell.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for n, m in masks.items():
                getattr(cell, n).mul_(m)
        state = type(state)(*(s.detach() for s in state))
    return {"train_seconds": time.perf_counter() - t0,
            "train_acc_second_half": right / total if total else float("nan")}


def trained_cell(hidden: int, sparsity: float, seed: int, args) -> tuple[EGRUCell, dict, dict]:
    """Load the cell from ``--cells-dir`` if saved there with the same settings, else train."""
    cell, masks = make_cell(hidden, sparsity, seed, args)
    cfg = {"hidden": hidden, "sparsity": sparsity, "seed": seed,
           **{k: getattr(args, k) for k in ("train_steps", "train_batch", "train_lr",
                                             "surrogate_width", "threshold_mean", "delay_min",
                                             "delay_max")}}
    meta = weights = None
    if args.cells_dir:
        stem = f"egru_h{hidden}_sparsity{round(100 * sparsity)}_seed{seed}"
        meta = Path(args.cells_dir) / f"{stem}.json"
        weights = Path(args.cells_dir) / f"{stem}.safetensors"
        if meta.exists():
            saved = json.loads(meta.read_text())
            if saved["config"] != cfg:
                raise ValueError(f"--cells-dir {args.cells_dir}: {meta.name} was trained with "
                                 f"other settings ({saved['config']}); use another directory")
            tensors = load_file(str(weights))
            with torch.no_grad():
                for n, v in tensors.items():
                    getattr(cell, n).copy_(v)
            return cell, masks, {**saved["info"], "loaded": True}
    info = train_cell(cell, masks, seed, args) if args.train_steps else {}
    if meta is not None:
        meta.parent.mkdir(parents=True, exist_ok=True)
        if weights.exists():
            raise FileExistsError(f"--cells-dir: {weights} exists without {meta.name}; "
                                  "not overwriting it")
        tensors = {n: p.detach().contiguous() for n, p in cell.named_parameters()}
        save_file(tensors, str(weights))
        atomic_write_text(meta, json.dumps({"config": cfg, "info": info}))
    return cell, masks, {**info, "loaded": False}


# --- measurement -----------------------------------------------------------------------------
def mm_gmacs(h: int, p: int, dtype: torch.dtype, repeats: int) -> float:
    """GMAC/s of ``torch.mm`` at ``(H, H) x (H, p)`` (median of ``repeats``)."""
    a = torch.randn(h, h, dtype=dtype)
    b = torch.randn(h, p, dtype=dtype)
    out = torch.empty(h, p, dtype=dtype)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return h * h * p / statistics.median(times) / 1e9


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def run_engines(engines: list, xs: torch.Tensor, grads: torch.Tensor, warmup: int
                ) -> list[tuple[list[float], list[float]]]:
    """Step the engines side by side; per engine (wall, CPU) seconds of the timed steps."""
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in engines]
    for t in range(xs.size(0)):
        if t == warmup:
            for eng in engines:
                eng.counter.clear()
        for eng, (wall, cpu) in zip(engines, times, strict=True):
            w0, c0 = time.perf_counter(), time.thread_time()
            eng.step(xs[t])
            eng.accumulate(grads[t])
            if t >= warmup:
                wall.append(time.perf_counter() - w0)
                cpu.append(time.thread_time() - c0)
    return times


def try_reset(engine, batch: int) -> str | None:
    """``engine.reset(batch)``; the refusal message if its memory estimate is too large."""
    try:
        engine.reset(batch)
    except ValueError as err:
        return str(err)
    return None


def measure(hidden: int, sparsity: float, batch: int, seed: int, args) -> dict:
    cell, masks, info = trained_cell(hidden, sparsity, seed, args)
    row = {"hidden": hidden, "sparsity": sparsity, "batch": batch, "seed": seed, "train": info}
    sparse = SparseRTRL(cell, masks, backend=args.backend, max_bytes=args.max_bytes)
    dense = DenseRTRL(cell, masks, max_bytes=args.max_bytes)
    row["backend"] = sparse.backend
    row["sparse_refused"] = try_reset(sparse, batch)
    row["dense_refused"] = try_reset(dense, batch) if not row["sparse_refused"] else "skipped"
    if row["sparse_refused"]:
        row["exact"] = True                  # nothing ran, nothing to report
        return row
    engines = [sparse] if row["dense_refused"] else [sparse, dense]
    total_steps = args.warmup + args.steps
    streams = [delayed_recall_stream(total_steps, args.delay_min, args.delay_max, SYMBOLS,
                                     seed=777 + seed * 100 + b, dtype=torch.float64)
               for b in range(batch)]
    xs = torch.cat([s.inputs for s in streams], dim=1)                  # (T, B, S + 1)
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(total_steps, batch, hidden, generator=g, dtype=torch.float64)
    times = run_engines(engines, xs, grads, args.warmup)
    ref = bptt_gradients(cell, xs, grads, sparse.spec.param_names)
    expected = {n: ref[n] * masks[n] if n in masks else ref[n] for n in ref}
    gs = sparse.gradients()
    ss = sparse.counter.summary()
    p = sparse.layout.num_columns
    sparse_s, sparse_cpu = (statistics.median(v) for v in times[0])
    row.update({
        "lambda_a": ss["active_fraction"], "lambda_w": sparse.num_kept / p,
        "m_density": float((sparse.M != 0).sum()) / (batch * hidden * p),
        "counted_saving": ss["reduction"], "counted_update_saving": ss["update_reduction"],
        "sparse_macs_step": ss["macs_total"] / args.steps,
        "dense_macs_step": ss["dense_macs_total"] / args.steps,
        "sparse_step_s": sparse_s, "sparse_cpu_s": sparse_cpu,
        "sparse_bytes": sparse.influence_bytes(batch), "num_columns": p,
        "err_sparse_bptt": max(rel_err(gs[n], expected[n]) for n in expected),
    })
    if not row["dense_refused"]:
        gd = dense.gradients()
        dense_s, dense_cpu = (statistics.median(v) for v in times[1])
        row.update({
            "dense_step_s": dense_s, "dense_cpu_s": dense_cpu,
            "dense_bytes": dense.influence_bytes(batch),
            "err_dense_bptt": max(rel_err(gd[n], expected[n]) for n in expected),
            "err_sparse_dense": max(rel_err(gs[n], gd[n]) for n in expected),
            "speedup": dense_s / sparse_s, "speedup_cpu": dense_cpu / sparse_cpu,
            "dense_gmacs": row["dense_macs_step"] / dense_s / 1e9,
        })
        row["measured_over_counted"] = row["speedup"] / row["counted_saving"]
    del sparse, dense, engines                  # free M before torch.mm's operands
    if not row["dense_refused"]:
        row["mm_gmacs"] = mm_gmacs(hidden, p, torch.float64, args.mm_repeats)
    errs = [row[k] for k in ("err_sparse_bptt", "err_dense_bptt", "err_sparse_dense")
            if k in row]
    row["exact"] = max(errs) < args.tol
    return row


def fmt(row: dict, key: str, spec: str) -> str:
    v = row.get(key)
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict], args) -> None:
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"numba {numba.__version__}, threads={args.threads}, float64, warm-up "
          f"{args.warmup} + {args.steps} timed steps (median step time), trained cells "
          f"({args.train_steps} BPTT steps, surrogate width {args.surrogate_width})")
    print("| H | w.sparsity | B | train acc. | lambda_a | lambda_w | M density | counted saving | "
          "dense ms/step | sparse ms/step | speed-up | measured/counted | dense GMAC/s | "
          "torch.mm GMAC/s | dense mem | sparse mem | max rel. err | backend |")
    print("|---" * 18 + "|")
    for r in rows:
        if r["sparse_refused"]:
            continue
        errs = [r[k] for k in ("err_sparse_bptt", "err_dense_bptt", "err_sparse_dense")
                if k in r]
        dense_mem = "refused" if r["dense_refused"] else format_bytes(r["dense_bytes"])
        dense_ms = 1e3 * r["dense_step_s"] if "dense_step_s" in r else None
        cells = [str(r["hidden"]), f"{r['sparsity']:.2f}", str(r["batch"]),
                 fmt(r["train"], "train_acc_second_half", ".2f"), f"{r['lambda_a']:.3f}",
                 f"{r['lambda_w']:.3f}", f"{r['m_density']:.3f}",
                 f"{r['counted_saving']:.1f}", "-" if dense_ms is None else f"{dense_ms:.2f}",
                 f"{1e3 * r['sparse_step_s']:.2f}", fmt(r, "speedup", ".1f"),
                 fmt(r, "measured_over_counted", ".2f"), fmt(r, "dense_gmacs", ".2f"),
                 fmt(r, "mm_gmacs", ".2f"), dense_mem, format_bytes(r["sparse_bytes"]),
                 f"{max(errs):.1e}", r["backend"]]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        for engine in ("sparse", "dense"):
            why = r[f"{engine}_refused"]
            if why and why != "skipped":
                print(f"# H={r['hidden']} sparsity={r['sparsity']} B={r['batch']}: {engine} "
                      f"refused: {why}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.9])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=40, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--delay-min", type=int, default=8)
    ap.add_argument("--delay-max", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=300,
                    help="BPTT steps training each cell (0: untrained cells)")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-lr", type=float, default=3e-3)
    ap.add_argument("--surrogate-width", type=float, default=0.1,
                    help="half-width of the surrogate's support (narrow: sparse activity)")
    ap.add_argument("--threshold-mean", type=float, default=0.3)
    ap.add_argument("--cells-dir", default=None,
                    help="load trained cells from / save them to this directory")
    ap.add_argument("--backend", choices=BACKENDS, default="auto",
                    help="SparseRTRL backend (auto: numba below H=96 or for a sparse K, else gemm)")
    ap.add_argument("--max-bytes", type=int, default=None,
                    help="memory limit per engine (default: half the machine's memory)")
    ap.add_argument("--mm-repeats", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny run for tests")
    ap.add_argument("--out", default=None,
                    help="write all rows as JSON here (refuses to overwrite an existing file)")
    args = ap.parse_args(argv)
    if args.quick:
        args.hidden, args.sparsities, args.batch = [8], [0.5], [2]
        args.warmup, args.steps, args.train_steps, args.mm_repeats = 6, 4, 3, 2
        args.delay_min, args.delay_max = 2, 4
    for h in args.hidden:
        check_int("--hidden", h, low=1)
    for b in args.batch:
        check_int("--batch", b, low=1)
    for s in args.sparsities:
        check_real("--sparsities", s, low=0.0, high=1.0, high_open=True)
    for name in ("seeds", "steps", "mm_repeats", "train_batch", "threads"):
        check_int(f"--{name.replace('_', '-')}", getattr(args, name), low=1)
    check_int("--warmup", args.warmup, low=0)
    check_int("--train-steps", args.train_steps, low=0)
    check_int("--delay-max", args.delay_max, low=check_int("--delay-min", args.delay_min, low=0))
    if args.out and os.path.exists(args.out):
        raise FileExistsError(f"--out {args.out} exists; not overwriting it")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rows = []
    for h in args.hidden:
        for s in args.sparsities:
            for b in args.batch:
                for seed in range(args.seeds):
                    rows.append(measure(h, s, b, seed, args))
                    r = rows[-1]
                    print(f"# done H={h} sparsity={s} B={b} seed={seed}: "
                          f"speed-up {fmt(r, 'speedup', '.1f')}, counted "
                          f"{fmt(r, 'counted_saving', '.1f')}, exact={r['exact']}", flush=True)
    print_table(rows, args)
    payload = {"args": vars(args), "rows": rows}
    if args.out:
        atomic_write_text(args.out, json.dumps(payload, indent=1))
    bad = [r for r in rows if not r["exact"]]
    if bad:
        print(f"# {len(bad)} configuration(s) missed --tol {args.tol}", file=sys.stderr)
    payload["all_exact"] = not bad
    return payload


if __name__ == "__main__":
    sys.exit(0 if main()["all_exact"] else 1)
