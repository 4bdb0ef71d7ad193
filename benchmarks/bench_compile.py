"""Compile and run times: eager vs ``torch.compile(model)`` vs ``compile_steps(model)``.

For EGRU, GRU and LSTM (2 layers) and two sequence lengths ``T1`` then ``T2``, one forward +
backward pass per call:

* ``eager``: the module as it is (EGRU: fused layer with hand-written BPTT);
* ``whole``: ``torch.compile(module)``: the time loop is unrolled into the graph, so the
  first call at ``T1`` compiles and the first call at ``T2`` compiles again;
* ``steps``: :func:`dualsparse.models.compile_steps`: one compiled step per layer, the loop
  stays in Python, so ``T2`` reuses what ``T1`` compiled.

Columns: ``first T1`` / ``first T2`` = seconds of the first call at that length (compile +
run), ``run T1`` / ``run T2`` = median seconds of later calls. Run on an idle machine::

    python benchmarks/bench_compile.py --threads 1 --repeats 5
    python benchmarks/bench_compile.py --quick --backend aot_eager      # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from dualsparse.models import EGRU, GRU, LSTM, compile_steps

MODELS: dict[str, Callable[..., torch.nn.Module]] = {"egru": EGRU, "gru": GRU, "lstm": LSTM}


def _call(module: torch.nn.Module, x: torch.Tensor) -> float:
    module.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    module(x)[0].sum().backward()
    return time.perf_counter() - t0


def measure(make: Callable[[], torch.nn.Module], how: str, sizes: tuple[int, int, int],
            lengths: tuple[int, int], repeats: int, backend: str) -> dict[str, float]:
    """``first``/``run`` seconds at each length for one way of running (see module doc)."""
    torch._dynamo.reset()
    module = make()
    if how == "whole":
        module = torch.compile(module, backend=backend)
    elif how == "steps":
        compile_steps(module, backend=backend)
    inp, batch, _ = sizes
    out = {}
    for name, steps in zip(("T1", "T2"), lengths, strict=True):
        x = torch.randn(steps, batch, inp)
        out[f"first {name}"] = _call(module, x)
        out[f"run {name}"] = statistics.median(_call(module, x) for _ in range(repeats))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", default="64:16:256", help="input:batch:hidden")
    p.add_argument("--lengths", default="35:50", help="T1:T2")
    p.add_argument("--models", default="egru,gru,lstm")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (smoke run)")
    p.add_argument("--json", default=None, help="also write the rows here (must not exist)")
    args = p.parse_args(argv)
    if args.json and os.path.exists(args.json):
        raise ValueError(f"--json {args.json!r} exists; choose a new file")
    inp, batch, hidden = (int(v) for v in args.size.split(":"))
    lengths = tuple(int(v) for v in args.lengths.split(":"))
    repeats = args.repeats
    if args.quick:
        inp, batch, hidden, lengths, repeats = 3, 2, 4, (3, 5), 1
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}; {os.cpu_count()} CPUs; torch "
          f"{torch.__version__}; threads={args.threads}; backend={args.backend}; I={inp} "
          f"B={batch} H={hidden}; T1={lengths[0]} T2={lengths[1]}; fwd+bwd seconds")
    head = f"{'model':>5} {'how':>6} {'first T1':>9} {'run T1':>9} {'first T2':>9} {'run T2':>9}"
    print(head)
    print("-" * len(head))
    rows = []
    for name in models:
        def make(name: str = name) -> torch.nn.Module:
            torch.manual_seed(0)
            return MODELS[name](inp, hidden, num_layers=2)

        for how in ("eager", "whole", "steps"):
            r = measure(make, how, (inp, batch, hidden), lengths, repeats, args.backend)
            rows.append({"model": name, "how": how, **r})
            print(f"{name:>5} {how:>6} {r['first T1']:>9.3f} {r['run T1']:>9.4f} "
                  f"{r['first T2']:>9.3f} {r['run T2']:>9.4f}", flush=True)
    if args.json:
        with open(args.json, "x") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
