"""Cost of the NaN/inf checks of the recurrent forward (input, state and weights) on CPU.

Times forward + backward of ``EGRU`` and ``GRU`` with ``check_finite=True`` (the default) and
``False``, median of repeats, and prints the relative overhead per configuration
(``input:batch:T:hidden``, one layer).

    python benchmarks/bench_finite_check.py --threads 1 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dualsparse.models import EGRU, GRU


def median_seconds(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward pass (two warm-up passes first)."""
    times = []
    for i in range(repeats + 2):
        module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        module(x)[0].sum().backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--configs", default="64:16:35:256,400:20:70:1150",
                   help="comma-separated input:batch:T:hidden")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'layer':5s} {'config':>16s} {'checked ms':>11s} {'unchecked ms':>13s} overhead")
    for spec in args.configs.split(","):
        i, b, t, h = (int(v) for v in spec.split(":"))
        x = torch.randn(t, b, i)
        for cls in (EGRU, GRU):
            rnn = cls(i, h)
            rnn.check_finite = True
            on = median_seconds(rnn, x, args.repeats)
            rnn.check_finite = False
            off = median_seconds(rnn, x, args.repeats)
            print(f"{cls.__name__:5s} {spec:>16s} {1e3 * on:11.2f} {1e3 * off:13.2f} "
                  f"{100 * (on / off - 1):+7.1f}%")


if __name__ == "__main__":
    main()
