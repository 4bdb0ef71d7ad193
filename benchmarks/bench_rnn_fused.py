"""GRU/LSTM layer speed: ATen's fused recurrence (``fused=True``) vs the Python step loop.

One forward + backward pass of a one-layer :class:`~dualsparse.models.LSTM` /
:class:`~dualsparse.models.GRU` per call, ``fused=True`` (``torch._VF.lstm``/``gru``: cuDNN
on CUDA, ATen's C++ loop on CPU) and ``fused=False`` (our Python time loop) alternating in
one process with ``torch.nn.LSTM``/``GRU`` as the reference; medians of ``--repeats``
rounds. Sizes: ``small`` = the ``ptb-small-lstm`` layer (batch 20, 20 steps, 200 units),
``paper`` = batch 64, 70 steps, 1350 units (the ``ptb-egru`` layer size). Run on an idle
machine (the load average is printed before and after)::

    python benchmarks/bench_rnn_fused.py --threads 1 --repeats 7 --out rnn-fused.json
    python benchmarks/bench_rnn_fused.py --device cuda --out rnn-fused-cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from dualsparse.models import GRU, LSTM

SIZES = {"small": (20, 20, 200, 200), "paper": (64, 70, 1350, 1350)}  # B, T, I, H


def _timed(module: torch.nn.Module, x: torch.Tensor, device: torch.device) -> float:
    module.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = module(x)[0]
    out.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(cell: str, size: str, device: torch.device, repeats: int, calls: int
            ) -> dict[str, float]:
    """Median milliseconds per forward + backward call of each variant."""
    batch, steps, inputs, hidden = SIZES[size]
    torch.manual_seed(0)
    ours = (LSTM if cell == "lstm" else GRU)(inputs, hidden, device=device)
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(inputs, hidden, device=device)
    x = torch.randn(steps, batch, inputs, device=device)
    variants = {"fused": (ours, True), "step_loop": (ours, False), "torch_nn": (ref, None)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(repeats + 1):  # round 0 warms up
        for name, (module, fused) in variants.items():
            if fused is not None:
                module.fused = fused
            t = min(_timed(module, x, device) for _ in range(calls))
            if rnd:
                times[name].append(t * 1e3)
    res = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
    res["fused_speedup"] = res["step_loop_ms"] / res["fused_ms"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3, help="calls per round (the fastest counts)")
    ap.add_argument("--sizes", default="small,paper")
    ap.add_argument("--out", default=None, help="JSON file (refused if it exists)")
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    for s in sizes:
        if s not in SIZES:
            raise SystemExit(f"--sizes: unknown size {s!r}; known: {sorted(SIZES)}")
    if args.out and os.path.exists(args.out):
        raise SystemExit(f"--out {args.out} exists; results are never overwritten")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    print(f"load average before: {load0:.2f}", flush=True)
    rows = []
    for size in sizes:
        for cell in ("lstm", "gru"):
            r = {"cell": cell, "size": size, **measure(cell, size, device, args.repeats,
                                                       args.calls)}
            rows.append(r)
            print(f"{cell:4s} {size:5s}  fused {r['fused_ms']:8.2f} ms  step loop "
                  f"{r['step_loop_ms']:8.2f} ms  torch.nn {r['torch_nn_ms']:8.2f} ms  "
                  f"fused speed-up {r['fused_speedup']:.2f}x", flush=True)
    load1 = os.getloadavg()[0]
    print(f"load average after: {load1:.2f}")
    meta = {"device": str(device), "threads": args.threads, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_before": load0, "load_after": load1, "repeats": args.repeats}
    if args.out:
        with open(args.out, "x") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
