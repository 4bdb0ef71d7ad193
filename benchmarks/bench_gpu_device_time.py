"""GPU time without the host's launch overhead, for the two GPU targets that `bench_gpu.py`
measures as wall time between CUDA events (which includes the Python launch cost of every
kernel, and at these sizes is bound by it).

* ``inference``: batch-1 matvec of the 1350-unit layer (``W`` ``(3H, H)``), cuBLAS ``addmv``
  against the Triton event matvec, each captured 50 times into one CUDA graph and replayed:
  the time per call is device time, launch overhead excluded.
* ``sparse_backward``: the Triton EGRU layer backward (batch 64, bptt 70, hidden 1350) dense
  and sparse, per fraction of silenced units: wall time (as ``bench_gpu.py``) and the summed
  device time of its kernels from ``torch.profiler``; the speed-up of each against the target
  ``0.5 / (1 - backward sparsity)``. Dense: the fused step kernel and ``cublas`` (``torch.mm``
  per step, then the gates kernel); sparse: ``tiles`` (the fused kernel skips tiles without
  needed units) and ``cublas_gather`` (``torch.mm`` over the gathered needed units, forced
  with ``sparse_density`` 1; see ``dualsparse.models.triton_egru``).

    python benchmarks/bench_gpu_device_time.py --out device-time.json [--backward-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from bench_gpu import backward_seconds, backward_sparsity, silenced_layer
from torch.profiler import ProfilerActivity, profile

from dualsparse.models import EGRU
from dualsparse.models.triton_egru import Blocks, triton_egru_sequence

GRAPH_CALLS = 50


def graph_time(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` captured ``GRAPH_CALLS`` times in one CUDA graph (median of
    ``repeats`` replays)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_CALLS):
            fn()
    times = []
    for _ in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / GRAPH_CALLS)
    return statistics.median(times[2:])


def bench_inference(hidden: int, repeats: int, activities: list[float]) -> list[dict[str, Any]]:
    from dualsparse.engine import triton_events

    torch.manual_seed(0)
    m = EGRU(hidden, hidden, threshold_mean=0.3).cuda().eval()
    w = m.weight_hh_l0.detach().contiguous()
    w_t = w.t().contiguous()
    b = m.bias_hh_l0.detach()
    rows = []
    for act in activities:
        y = torch.randn(hidden, device="cuda").abs() * (torch.rand(hidden, device="cuda") < act)
        out = torch.empty(3 * hidden, device="cuda")
        with torch.no_grad():
            row: dict[str, Any] = {"activity": act, "cublas_gemv_s": graph_time(
                lambda y=y, out=out: torch.addmv(b, w, y, out=out), repeats)}
            for bn, bk in ((8, 128), (16, 128), (16, 32), (32, 64)):
                row[f"event_matvec_{bn}x{bk}_s"] = graph_time(
                    lambda y=y, bn=bn, bk=bk: triton_events.event_matvec(y, w_t, b, bn, bk),
                    repeats)
            for bn, bk in ((128, 32), (256, 16), (64, 64), (128, 16), (256, 32)):
                row[f"split_k_{bn}x{bk}_s"] = graph_time(
                    lambda y=y, bn=bn, bk=bk: triton_events.event_matvec(
                        y, w_t, b, bn, bk, split_k=True), repeats)
        best = min(v for k, v in row.items() if k.startswith("event_matvec_"))
        row["split_k_s"] = min(v for k, v in row.items() if k.startswith("split_k_"))
        row["split_k_speedup"] = row["cublas_gemv_s"] / row["split_k_s"]
        row["event_matvec_s"] = best
        row["matvec_speedup"] = row["cublas_gemv_s"] / best
        rows.append(row)
        print(f"[device_time] inference {json.dumps(row)}", flush=True)
    return rows


def kernel_time(fn) -> tuple[float, dict[str, float]]:
    """Summed device time (s) of the CUDA kernels ``fn`` launches, and per kernel name."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    per: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0.0)
        if t:
            per[e.key[:60]] = per.get(e.key[:60], 0.0) + t / 1e6
    return sum(per.values()), per


SPARSE_PATHS = {"dense": {"sparse_backward": False},
                "cublas_dense": {"sparse_backward": False, "backward_matmul": "cublas"},
                "tiles": {},
                "cublas_gather": {"sparse_density": 1.0, "backward_matmul": "cublas"}}
"""Keyword arguments of ``triton_egru_sequence`` for each backward path measured."""


def bench_sparse_backward(repeats: int, fractions: list[float], blocks: Blocks
                          ) -> list[dict[str, Any]]:
    batch, steps, hidden, inp = 64, 70, 1350, 750
    rows = []
    for frac in fractions:
        call = silenced_layer(frac, batch, steps, hidden, inp)
        row: dict[str, Any] = {"silenced": frac}
        row["backward_sparsity"] = backward_sparsity(call, blocks=blocks)
        for name, extra in SPARSE_PATHS.items():
            kw = {"blocks": blocks, **extra}
            stats: dict = {}
            triton_egru_sequence(*call, stats=stats, **kw)[0].sum().backward()
            row[f"{name}_stats"] = stats
            walls = backward_seconds(call, repeats, **kw)
            devs = []
            for _ in range(3):
                loss = triton_egru_sequence(*call, **kw)[0].sum()
                torch.cuda.synchronize()
                total, per = kernel_time(loss.backward)
                devs.append(total)
            row[f"{name}_wall_s"] = walls
            row[f"{name}_device_s"] = statistics.median(devs)
            row[f"{name}_kernels"] = dict(sorted(per.items(), key=lambda kv: -kv[1])[:6])
        best_dense = min(row["dense_device_s"], row["cublas_dense_device_s"])
        for name in ("tiles", "cublas_gather"):
            row[f"{name}_wall_speedup"] = row["dense_wall_s"] / row[f"{name}_wall_s"]
            row[f"{name}_device_speedup"] = row["dense_device_s"] / row[f"{name}_device_s"]
            row[f"{name}_vs_best_dense"] = best_dense / row[f"{name}_device_s"]
        s = row["backward_sparsity"]
        row["target_speedup"] = 0.5 / max(1.0 - s, 1e-9) if s >= 0.5 else None
        rows.append(row)
        print(f"[device_time] sparse_backward {json.dumps(row)}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON report path (must not exist)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--block", default="16,64,32,4",
                   help="Triton EGRU tiles batch,hidden,k,num_warps (bench_gpu.py's best)")
    p.add_argument("--inference-only", action="store_true", help="skip the backward sections")
    p.add_argument("--backward-only", action="store_true", help="skip the inference section")
    p.add_argument("--fractions", default="0.0,0.5,0.75,0.9,0.95",
                   help="fractions of silenced units in the backward section")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out {out} exists; refusing to overwrite a result")
    if not torch.cuda.is_available():
        raise ValueError("bench_gpu_device_time.py needs CUDA (no GPU visible)")
    torch.backends.cuda.matmul.allow_tf32 = False
    blocks = Blocks(*(int(v) for v in args.block.split(",")))
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "graph_calls": GRAPH_CALLS, "blocks": vars(blocks)}
    if args.inference_only and args.backward_only:
        raise ValueError("--inference-only and --backward-only exclude each other")
    fractions = [float(v) for v in args.fractions.split(",")]
    sections = {
        "inference": lambda: bench_inference(1350, args.repeats, [0.05, 0.1, 0.2, 0.5, 1.0]),
        "sparse_backward": lambda: bench_sparse_backward(args.repeats, fractions, blocks)}
    if args.inference_only:
        sections = {"inference": sections["inference"]}
    if args.backward_only:
        del sections["inference"]
    for name, fn in sections.items():
        try:
            report[name] = fn()
        except Exception as exc:  # one broken section must not lose the other
            report[name] = {"error": repr(exc)[:500]}
            print(f"[device_time] {name} failed: {exc!r}", flush=True)
        out.write_text(json.dumps(report, indent=2))
    print(f"[device_time] report written to {out}")


if __name__ == "__main__":
    main()
