"""EGRU forward+backward throughput against torch.nn.GRU on CPU, side by side in one run.

Prints tokens/s (median of repeats) for ``torch.nn.GRU`` (oneDNN/MKL fused kernels),
our ``dualsparse.models.GRU`` (Python time loop under autograd), ``EGRU(fused=False)`` (the
autograd reference) and ``EGRU`` (default: fused layer with hand-written BPTT), and the
ratios to ``torch.nn.GRU``.

    python benchmarks/bench_egru_speed.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from dualsparse.models import EGRU, GRU


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__}"


def time_fwd_bwd(module: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int = 2
                 ) -> float:
    """Median seconds of one forward + backward pass."""
    times = []
    for i in range(warmup + repeats):
        module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = module(x)[0]
        out.sum().backward()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--configs", default="64:16:35:256,64:64:35:512,400:20:70:1150",
                   help="comma list of input:batch:seq_len:hidden")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {machine()}; threads={args.threads}; repeats={args.repeats} (median)")
    head = (f"{'I':>5} {'B':>4} {'T':>4} {'H':>5} | {'nn.GRU tok/s':>13} {'our GRU':>9} "
            f"{'EGRU ref':>9} {'EGRU':>9} | {'GRU/nn':>7} {'ref/nn':>7} {'EGRU/nn':>8}")
    print(head)
    print("-" * len(head))
    for cfg in args.configs.split(","):
        i, b, t, h = (int(v) for v in cfg.split(":"))
        x = torch.randn(t, b, i, requires_grad=False)
        tokens = t * b
        ref = torch.nn.GRU(i, h)
        ours = GRU(i, h)
        egru_ref = EGRU(i, h, threshold_mean=0.3, fused=False)
        egru = EGRU(i, h, threshold_mean=0.3)
        speeds = [tokens / time_fwd_bwd(m, x, args.repeats)
                  for m in (ref, ours, egru_ref, egru)]
        print(f"{i:>5} {b:>4} {t:>4} {h:>5} | {speeds[0]:>13,.0f} {speeds[1]:>9,.0f} "
              f"{speeds[2]:>9,.0f} {speeds[3]:>9,.0f} | {speeds[1] / speeds[0]:>7.2f} "
              f"{speeds[2] / speeds[0]:>7.2f} {speeds[3] / speeds[0]:>8.2f}")


if __name__ == "__main__":
    main()
