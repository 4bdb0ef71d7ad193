"""CPU: backward time of the fused EGRU layer against backward sparsity, sparse vs dense BPTT.

Backward sparsity is controlled by silencing a fraction of the units (their c~ held at -1,
outside the surrogate support for any threshold in (0, 1)); the remaining units run freely.
For each fraction the script prints the measured backward sparsity (elementwise and as the
fraction of units unneeded by the whole batch), the median backward time of the dense fused
BPTT (``sparse_density=0``) and of the sparse one (``sparse_density=1``: columns skipped in
every step), the speed-up and the target ``0.5 / (1 - sparsity)`` of issue 17. The load
average is printed before and after: run it on an idle machine.

    python benchmarks/bench_sparse_backward.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dualsparse.models import EGRU
from dualsparse.models.egru_fused import egru_sequence, needed_units


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def silence(m: EGRU, fraction: float) -> None:
    """Hold the first ``fraction`` of units at c~ = -1 (z ~ 0, g ~ -1)."""
    h = m.hidden_size
    n = int(round(fraction * h))
    with torch.no_grad():
        m.bias_ih_l0[h:h + n] = -40.0
        m.bias_ih_l0[2 * h:2 * h + n] = -40.0


def backward_seconds(m: EGRU, x: torch.Tensor, density: float, repeats: int) -> float:
    """Median seconds of one backward pass of the layer (forward not timed)."""
    gi = torch.nn.functional.linear(x, m.weight_ih_l0, m.bias_ih_l0).detach()
    gi.requires_grad_(True)
    z = x.new_zeros(x.shape[1], m.hidden_size)
    times = []
    for i in range(repeats + 2):
        ys, _, _, c_last = egru_sequence(gi, z, z, m.weight_hh_l0, m.bias_hh_l0,
                                         m.threshold(0), None, m.surrogate, m.reset_mode,
                                         sparse_density=density)
        loss = ys.sum() + c_last.sum()
        t0 = time.perf_counter()
        loss.backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Print the table; return its rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bptt", type=int, default=70)
    p.add_argument("--hidden", type=int, default=1350)
    p.add_argument("--input", type=int, default=400)
    p.add_argument("--fractions", default="0,0.25,0.5,0.75,0.9,0.95")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{load()}; torch {torch.__version__}; threads={args.threads}; "
          f"B={args.batch} T={args.bptt} H={args.hidden} I={args.input}")
    head = (f"{'silenced':>8} {'bwd sp.':>8} {'unit sp.':>8} | {'dense ms':>9} {'sparse ms':>9} "
            f"{'speed-up':>8} {'target':>7}")
    print(head)
    print("-" * len(head))
    rows = []
    for frac in (float(f) for f in args.fractions.split(",")):
        torch.manual_seed(0)
        m = EGRU(args.input, args.hidden, threshold_mean=0.3)
        silence(m, frac)
        x = torch.randn(args.bptt, args.batch, args.input)
        with torch.no_grad():
            seq = m(x, return_sequences=True)[2][0]
            need = needed_units(seq.events, seq.internal, m.threshold(0), m.surrogate)
        sp = 1.0 - need.double().mean().item()
        unit_sp = 1.0 - need.any(1).double().mean().item()
        for param in m.parameters():
            param.requires_grad_(True)
        dense = backward_seconds(m, x, 0.0, args.repeats)
        sparse = backward_seconds(m, x, 1.0, args.repeats)
        target = 0.5 / max(1.0 - sp, 1e-9)
        print(f"{frac:>8.2f} {sp:>8.3f} {unit_sp:>8.3f} | {dense * 1e3:>9.1f} "
              f"{sparse * 1e3:>9.1f} {dense / sparse:>8.2f} {target:>7.2f}")
        rows.append({"silenced": frac, "backward_sparsity": sp, "unit_sparsity": unit_sp,
                     "dense_s": dense, "sparse_s": sparse})
    print(load())
    return rows


if __name__ == "__main__":
    main()
