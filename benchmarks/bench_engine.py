"""Event-driven sparse engine vs dense PyTorch, scipy CSR and torch.sparse_csr, in one run.

Part 1 (matrix-vector products ``y = W x``, the recurrent/input projection of a step): for
each activity density ``d_a`` (fraction of nonzero inputs, a *fresh random* active set at every
one of ``--steps`` time steps) and weight density ``d_w`` (unstructured magnitude-style mask, and
row blocks of 16 (``16x1``) as block pruning leaves them), the median time per vector of

* dense PyTorch (``torch.mv`` / ``W @ X``, oneDNN/MKL),
* scipy CSR (``W_csr @ x``, single-threaded),
* ``torch.sparse_csr`` (``W_csr @ x``),
* the engine (``pack_matrix(block="auto")`` + active-column kernels; union of active columns at
  batch > 1; row-split threads at 2 threads), bias/accumulator reset included;

timed with this thread's CPU time at 1 thread (the development machine is shared, and wall time
there mostly measures how often the process was descheduled) and wall time at 2 threads;

and the ideal speed-up ``1/(d_a d_w)``, the measured speed-up over dense PyTorch and their
ratio. Matrices: the recurrent matrix of an EGRU-1350 layer (PTB recipe, ``3*1350 x 1350``),
Narang et al.'s ``1760x1760`` (at 90% sparsity) and ``7680x2560`` (at 95%).

Part 2 (whole layer steps, batch 1, 1 thread): ``SparseRuntime`` on an EGRU 1350->1350 layer
whose thresholds are calibrated to a target activity, with sparse inputs of the same density,
vs ``torch.nn.GRU`` of the same size (per token, streaming one step per call and over a whole
sequence); and an LSTM (dense activity) vs ``torch.nn.LSTM``.

    python benchmarks/bench_engine.py --out docs/engine_results.json      # full (minutes)
    python benchmarks/bench_engine.py --quick                             # smoke test
    python benchmarks/bench_engine.py --skip-matrices --skip-layers --lm  # demo-sized LM
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import numba
import numpy as np
import scipy
import scipy.sparse as sp
import torch

from dualsparse.engine import kernels as K
from dualsparse.engine.pack import pack_matrix
from dualsparse.engine.runtime import SparseRuntime, accumulate
from dualsparse.models import EGRU, LSTM

FULL_MATRICES = {  # name: (rows, cols, weight densities)
    "egru1350_hh": (3 * 1350, 1350, (1.0, 0.5, 0.25, 0.1, 0.05)),
    "narang1760": (1760, 1760, (0.1,)),
    "narang7680x2560": (7680, 2560, (0.05,)),
}
QUICK_MATRICES = {"quick96x64": (96, 64, (1.0, 0.25, 0.05))}
ACTIVITY = (1.0, 0.5, 0.2, 0.1)


def machine() -> str:
    """CPU model, cores, load and library versions."""
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                      if ln.startswith("Model name")), platform.processor())
    except OSError:
        model = platform.processor()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}; {os.cpu_count()} logical CPUs; load average {load:.1f} (shared machine); "
            f"torch {torch.__version__}, numba {numba.__version__}, scipy {scipy.__version__}, "
            f"numpy {np.__version__}")


#: Clock of single-threaded timings: "cpu" = this thread's CPU time (``time.thread_time``),
#: immune to being descheduled on a shared machine; multi-threaded timings use wall time.
CLOCK = {"cpu": time.thread_time, "wall": time.perf_counter}


def median_time(fn: Callable[[], None], repeats: int, warmup: int = 1,
                clock: str = "wall") -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    now = CLOCK[clock]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append(now() - t0)
    return statistics.median(times)


def make_weight(rows: int, cols: int, density: float, pattern: str,
                rng: np.random.Generator) -> np.ndarray:
    """Random float32 matrix with ``density`` nonzeros: ``"unstructured"`` (smallest
    magnitudes zeroed) or ``"16x1"`` (whole 16-row blocks of a column zeroed)."""
    w = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
    if density >= 1.0:
        return w
    if pattern == "unstructured":
        cut = np.quantile(np.abs(w), 1.0 - density)
        w[np.abs(w) < cut] = 0.0
        return w
    nbr = -(-rows // 16)
    keep = rng.random((nbr, cols)) < density
    return w * np.repeat(keep, 16, axis=0)[:rows]


def make_inputs(cols: int, batch: int, steps: int, density: float,
                rng: np.random.Generator) -> np.ndarray:
    """``(steps, cols, batch)`` inputs; each step and sequence has a fresh random active set
    of ``round(density * cols)`` columns (never the same set repeated)."""
    x = np.zeros((steps, cols, batch), dtype=np.float32)
    k = max(1, round(density * cols))
    for t in range(steps):
        for b in range(batch):
            idx = rng.choice(cols, size=k, replace=False)
            x[t, idx, b] = rng.standard_normal(k).astype(np.float32)
    return x


def time_matvecs(w: np.ndarray, xs: np.ndarray, threads: int, repeats: int
                 ) -> dict[str, float]:
    """Median seconds per step (all ``B`` vectors) of each method over the steps ``xs``."""
    steps, cols, batch = xs.shape
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    wt = torch.from_numpy(w)
    xt = torch.from_numpy(np.ascontiguousarray(xs.transpose(0, 2, 1)))  # (T, B, C)
    xcols = [torch.from_numpy(xs[t]) for t in range(steps)]  # (C, B)
    csr = sp.csr_matrix(w)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        tcsr = wt.to_sparse_csr()
    packed = pack_matrix(w, block="auto", nparts=threads)
    out = np.zeros((packed.rows_padded, batch), dtype=np.float32)
    active = np.zeros(cols, dtype=np.int32)
    xs_np = [np.ascontiguousarray(xs[t]) for t in range(steps)]

    def dense() -> None:
        for t in range(steps):
            if batch == 1:
                torch.mv(wt, xt[t, 0])
            else:
                torch.mm(wt, xcols[t])

    def scipy_csr() -> None:
        for t in range(steps):
            csr @ (xs_np[t][:, 0] if batch == 1 else xs_np[t])

    def torch_csr() -> None:
        for t in range(steps):
            if batch == 1:
                tcsr @ xt[t, 0]
            else:
                tcsr @ xcols[t]

    def engine() -> None:
        for t in range(steps):
            out.fill(0.0)
            n = K.active_columns(xs_np[t], active)
            accumulate(packed, xs_np[t], active, n, out, threads)

    # correctness check of the engine on the first step
    engine()
    ref = w.astype(np.float64) @ xs[-1].astype(np.float64)
    if not np.allclose(out[: w.shape[0]], ref, rtol=1e-4, atol=1e-4):
        raise RuntimeError("engine result differs from the dense product")
    res = {}
    clock = "cpu" if threads == 1 else "wall"
    for name, fn in (("dense", dense), ("scipy_csr", scipy_csr), ("torch_csr", torch_csr),
                     ("engine", engine)):
        res[name] = median_time(fn, repeats, clock=clock) / steps
    res["clock"] = clock
    res["block"] = "x".join(map(str, packed.block))
    res["packed_bytes"] = packed.nbytes
    res["dense_bytes"] = packed.dense_nbytes
    return res


def run_matrices(matrices: dict, batches: list[int], threads_list: list[int], steps: int,
                 repeats: int, patterns: list[str], seed: int,
                 activity: tuple[float, ...] = ACTIVITY) -> list[dict]:
    rows_out = []
    for name, (rows, cols, wdens) in matrices.items():
        for d_w in wdens:
            for pattern in patterns if d_w < 1.0 else ["dense"]:
                rng = np.random.default_rng(seed)
                w = make_weight(rows, cols, d_w, pattern, rng)
                real_dw = np.count_nonzero(w) / w.size
                for batch in batches:
                    for d_a in activity:
                        xs = make_inputs(cols, batch, steps, d_a, rng)
                        union = float((xs != 0).any(axis=2).mean())
                        for threads in threads_list:
                            r = time_matvecs(w, xs, threads, repeats)
                            ideal = 1.0 / (d_a * real_dw)
                            speed = r["dense"] / r["engine"]
                            rows_out.append({
                                "matrix": name, "shape": [rows, cols], "pattern": pattern,
                                "d_w": real_dw, "d_a": d_a, "union_d_a": union, "batch": batch,
                                "threads": threads, "ideal": ideal, "speedup": speed,
                                "ratio": speed / ideal,
                                "vs_scipy": r["scipy_csr"] / r["engine"],
                                "vs_torch_csr": r["torch_csr"] / r["engine"],
                                **{f"t_{k}_us": r[k] * 1e6 for k in
                                   ("dense", "scipy_csr", "torch_csr", "engine")},
                                "format": r["block"], "clock": r["clock"],
                                "packed_bytes": r["packed_bytes"],
                                "dense_bytes": r["dense_bytes"],
                            })
                            print(_row_line(rows_out[-1]), flush=True)
    return rows_out


def _row_line(r: dict) -> str:
    return (f"| {r['matrix']} | {r['pattern']} | {r['d_w']:.2f} | {r['d_a']:.2f} | {r['batch']} "
            f"| {r['threads']} | {r['format']} | {r['ideal']:.1f} | {r['speedup']:.2f} "
            f"| {r['ratio']:.2f} | {r['vs_scipy']:.2f} | {r['vs_torch_csr']:.2f} "
            f"| {r['t_dense_us']:.0f} | {r['t_engine_us']:.0f} |")


MATRIX_HEADER = ("| matrix | pattern | d_w | d_a | B | threads | format | ideal | measured "
                 "| meas/ideal | vs scipy CSR | vs torch CSR | dense us | engine us |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def calibrate_thresholds(model: EGRU, xs: torch.Tensor, target: float, rounds: int = 3) -> float:
    """Set per-unit thresholds so that about ``target`` of the units fire; returns the
    measured activity of the last round."""
    for _ in range(rounds):
        with torch.no_grad():
            _, _, seqs = model(xs, return_sequences=True)
        internal = seqs[0].internal.reshape(-1, model.hidden_sizes[0])
        q = torch.quantile(internal, 1.0 - target, dim=0).clamp(0.02, 0.98)
        model.set_threshold(0, q)
    with torch.no_grad():
        _, _, seqs = model(xs, return_sequences=True)
    return float(seqs[0].events.mean())


def run_layers(hidden: int, steps: int, repeats: int, seed: int) -> list[dict]:
    """Whole-layer steps at batch 1, 1 thread (see the module docstring)."""
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    rng = np.random.default_rng(seed)
    results = []
    gru = torch.nn.GRU(hidden, hidden).eval()
    lstm_ref = torch.nn.LSTM(hidden, hidden).eval()

    def torch_times(module: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
        def streaming() -> None:
            state = None
            with torch.no_grad():
                for t in range(x.shape[0]):
                    _, state = module(x[t:t + 1], state)

        def sequence() -> None:
            with torch.no_grad():
                module(x)
        return (median_time(streaming, repeats, clock="cpu") / x.shape[0],
                median_time(sequence, repeats, clock="cpu") / x.shape[0])

    for d_a in (0.5, 0.2, 0.1):
        xs = torch.from_numpy(make_inputs(hidden, 1, steps, d_a, rng)[:, :, 0][:, None, :]
                              .copy())
        t_stream, t_seq = torch_times(gru, xs)
        for d_w, pattern in ((1.0, "dense"), (0.25, "16x1"), (0.1, "unstructured")):
            torch.manual_seed(seed)
            m = EGRU(hidden, hidden).eval()
            with torch.no_grad():
                for k in ("weight_ih_l0", "weight_hh_l0"):
                    p = getattr(m, k)
                    p.copy_(torch.from_numpy(make_weight(*p.shape, d_w, pattern, rng)))
            act = calibrate_thresholds(m, xs, d_a)
            rt = SparseRuntime.from_model(m)
            rt.run(xs)
            rt.reset_stats()
            t_rt = median_time(lambda rt=rt, xs=xs: rt.run(xs), repeats, clock="cpu") / steps
            dens = (rt.stats.input_density(0), rt.stats.recurrent_density(0))
            real_dw = float((m.weight_hh_l0 != 0).float().mean())
            mean_a = (dens[0] + dens[1]) / 2
            ideal = 1.0 / (mean_a * real_dw)
            results.append({
                "layer": f"EGRU {hidden}->{hidden}", "pattern": pattern, "d_w": real_dw,
                "input_d_a": dens[0], "recurrent_d_a": dens[1], "torch_activity": act,
                "ideal": ideal, "t_engine_us": t_rt * 1e6,
                "t_torch_stream_us": t_stream * 1e6, "t_torch_seq_us": t_seq * 1e6,
                "speedup_stream": t_stream / t_rt, "speedup_seq": t_seq / t_rt,
                "ratio_seq": t_seq / t_rt / ideal,
                "packed_bytes": rt.packed.nbytes, "dense_bytes": rt.packed.dense_nbytes})
            print(_layer_line(results[-1]), flush=True)
    # LSTM: dense activity, weight sparsity only
    x = torch.randn(steps, 1, hidden)
    t_stream, t_seq = torch_times(lstm_ref, x)
    for d_w, pattern in ((1.0, "dense"), (0.1, "16x1"), (0.1, "unstructured")):
        m = LSTM(hidden, hidden).eval()
        with torch.no_grad():
            for k in ("weight_ih_l0", "weight_hh_l0"):
                p = getattr(m, k)
                p.copy_(torch.from_numpy(make_weight(*p.shape, d_w, pattern, rng)))
        rt = SparseRuntime.from_model(m)
        rt.run(x)
        t_rt = median_time(lambda rt=rt: rt.run(x), repeats, clock="cpu") / steps
        real_dw = float((m.weight_hh_l0 != 0).float().mean())
        results.append({
            "layer": f"LSTM {hidden}->{hidden}", "pattern": pattern, "d_w": real_dw,
            "input_d_a": 1.0, "recurrent_d_a": 1.0, "torch_activity": 1.0,
            "ideal": 1.0 / real_dw, "t_engine_us": t_rt * 1e6,
            "t_torch_stream_us": t_stream * 1e6, "t_torch_seq_us": t_seq * 1e6,
            "speedup_stream": t_stream / t_rt, "speedup_seq": t_seq / t_rt,
            "ratio_seq": t_seq / t_rt * real_dw,
            "packed_bytes": rt.packed.nbytes, "dense_bytes": rt.packed.dense_nbytes})
        print(_layer_line(results[-1]), flush=True)
    return results



def run_lm(vocab: int, emb: int, hidden: list[int], d_w: float, tokens: int, repeats: int,
           seed: int) -> dict:
    """A random EGRU language model of the demo's shape (tied decoder), its recurrent and
    input weights pruned to ``d_w`` in 16x1 blocks, through
    :func:`dualsparse.engine.lm.compare_with_torch` on random tokens (batch 1, 1 thread)."""
    from dualsparse.apps.lm.compare import compare_with_torch
    from dualsparse.models.lm import RNNLanguageModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lm = RNNLanguageModel(vocab, emb, hidden, cell="egru", tie_weights=True,
                          cell_options={"threshold_mean": 0.05}).eval()
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if ".weight_ih_l" in name or ".weight_hh_l" in name:
                p.copy_(torch.from_numpy(make_weight(*p.shape, d_w, "16x1", rng)))
    ids = torch.from_numpy(rng.integers(0, vocab, tokens))
    r = compare_with_torch(lm, ids, timing_tokens=tokens, repeats=repeats)
    r.update({"vocab": vocab, "emb": emb, "hidden": hidden, "d_w_rnn": d_w})
    print(f"| EGRU LM {emb}-{'-'.join(map(str, hidden))}, V={vocab} | {d_w:.2f} | "
          f"{r['activity_density']:.2f} | {r['ideal_speedup']:.2f} | "
          f"{r['engine_us_per_token']:.0f} | {r['dense_stream_us_per_token']:.0f} | "
          f"{r['dense_seq_us_per_token']:.0f} | {r['speedup_seq']:.2f} | "
          f"{r['ppl_rel_diff']:.1e} |", flush=True)
    return r


LM_HEADER = ("| model | d_w (recurrent) | d_a | ideal | engine us/token | torch stream us "
             "| torch seq us | speed-up seq | ppl rel. diff |\n"
             "|---|---|---|---|---|---|---|---|---|")


LAYER_HEADER = ("| layer | pattern | d_w | d_a in / rec | ideal | engine us/token "
                "| torch stream us | torch seq us | speed-up stream | speed-up seq "
                "| seq/ideal | packed/dense bytes |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


def _layer_line(r: dict) -> str:
    return (f"| {r['layer']} | {r['pattern']} | {r['d_w']:.2f} | {r['input_d_a']:.2f} / "
            f"{r['recurrent_d_a']:.2f} | {r['ideal']:.1f} | {r['t_engine_us']:.0f} "
            f"| {r['t_torch_stream_us']:.0f} | {r['t_torch_seq_us']:.0f} "
            f"| {r['speedup_stream']:.2f} | {r['speedup_seq']:.2f} | {r['ratio_seq']:.2f} "
            f"| {r['packed_bytes'] / r['dense_bytes']:.2f} |")


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` atomically (temporary file + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    p.add_argument("--steps", type=int, default=16, help="distinct input vectors per timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--matrices", nargs="+", default=None, choices=sorted(FULL_MATRICES),
                   help="subset of the matrices (default: all)")
    p.add_argument("--activity", type=float, nargs="+", default=None,
                   help=f"activity densities (default {ACTIVITY})")
    p.add_argument("--weight-densities", type=float, nargs="+", default=None,
                   help="weight densities for every matrix (default: per matrix)")
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--skip-matrices", action="store_true")
    p.add_argument("--layer-size", type=int, default=1350)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm", action="store_true",
                   help="also time a demo-sized EGRU language model (V=10000, 128-256-128, "
                        "80%% 16x1-pruned) with compare_with_torch")
    p.add_argument("--lm-tokens", type=int, default=2000)
    p.add_argument("--out", default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    matrices = {k: v for k, v in FULL_MATRICES.items() if args.matrices is None
                or k in args.matrices}
    if args.weight_densities:
        matrices = {k: (r, c, tuple(args.weight_densities)) for k, (r, c, _) in matrices.items()}
    activity = tuple(args.activity) if args.activity else ACTIVITY
    if args.quick:
        matrices, args.steps, args.repeats, args.layer_size = QUICK_MATRICES, 3, 1, 48
        activity = (1.0, 0.1)
        lm_shape, args.lm_tokens = (500, 16, [24, 16]), min(args.lm_tokens, 100)
    else:
        lm_shape = (10000, 128, [256, 128])
    print(f"# {' '.join(sys.argv)}\n# {machine()}\n", flush=True)
    rows = []
    if not args.skip_matrices:
        print(MATRIX_HEADER, flush=True)
        rows = run_matrices(matrices, args.batches, args.threads, args.steps, args.repeats,
                            ["unstructured", "16x1"], args.seed, activity)
    layers = []
    if not args.skip_layers:
        print("\n" + LAYER_HEADER, flush=True)
        layers = run_layers(args.layer_size, args.steps * 4, args.repeats, args.seed)
    lm_rows = []
    if args.lm:
        print("\n" + LM_HEADER, flush=True)
        lm_rows.append(run_lm(*lm_shape, 0.2, args.lm_tokens, args.repeats, args.seed))
    payload = {"command": " ".join(["python", "benchmarks/bench_engine.py", *(argv or
                                                                              sys.argv[1:])]),
               "machine": machine(), "matrices": rows, "layers": layers, "lm": lm_rows}
    if args.out:
        write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
