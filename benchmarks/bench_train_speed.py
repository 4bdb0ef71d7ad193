"""Training speed of the PTB presets: tokens/s of the whole training step (forward, backward,
clipping, optimiser step) at 1 and 2 threads.

The presets (default ``ptb-small-lstm`` and ``ptb-small-egru``) alternate within one process,
``--repeats`` times per thread count, and the median is reported. Prints the machine and the
load average before and after; refuses to report when the 1-minute load exceeds 1.5 (unless
``--allow-load``, and then marks the figures as taken on a loaded machine).

    python benchmarks/bench_train_speed.py [--steps 60] [--repeats 3] [--threads 1 2]

``--foreach-adamw`` adds, for every AdamW preset, a variant ``<preset>/foreach`` that builds
AdamW without the fused kernel (the Trainer's optimiser before it used ``fused=True``), so
the two are compared in the same process, alternating. ``--step-loop`` adds, for every GRU or
LSTM preset, ``<preset>/step-loop``: the layers with ``fused=False`` (the Python step loop
instead of ATen's recurrence, as before 2026-11-27). Like the command line, the benchmark
keeps freed large blocks in the process (:mod:`dualsparse.malloc`);
``DUALSPARSE_KEEP_FREED_MEMORY=0`` measures glibc's default instead (the JSON records which).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from dualsparse.apps.lm.config import LMConfig
from dualsparse.apps.lm.presets import with_preset
from dualsparse.apps.lm.task import LMTask
from dualsparse.malloc import keep_freed_memory
from dualsparse.models import GRU, LSTM
from dualsparse.train import optim
from dualsparse.train.loop import Trainer, set_seed

MAX_LOAD = 1.5


def load_average() -> float:
    return os.getloadavg()[0]


def one_fit(config: LMConfig, data: tuple, steps: int, fused: bool = True,
            step_loop: bool = False) -> float:
    """Tokens per second of ``steps`` training steps (after one warm-up step); ``fused=False``
    builds AdamW without PyTorch's fused kernel, ``step_loop=True`` runs GRU/LSTM layers
    through their Python step loop."""
    saved = optim.FUSED_DEVICES
    optim.FUSED_DEVICES = saved if fused else ()
    try:
        return _timed_fit(config, data, steps, step_loop)
    finally:
        optim.FUSED_DEVICES = saved


def _timed_fit(config: LMConfig, data: tuple, steps: int, step_loop: bool = False) -> float:
    set_seed(config.run.seed, True)
    corpus, train, valid, test = data
    model = config.model.build(len(corpus.vocab))
    for module in model.modules():
        if isinstance(module, (GRU, LSTM)):
            module.fused = not step_loop
    task = LMTask.from_config(config.run, train, valid, test)
    trainer = Trainer(model, task, config.run.train_config(task.steps_per_epoch,
                                                           fine_tune_steps=steps + 1))
    trainer.train_step()  # warm-up (allocations, first-call overheads)
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(steps):  # the training step alone: no validation, no checkpoint
        tokens += int(trainer.train_step()["tokens"])
    return tokens / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["ptb-small-lstm", "ptb-small-egru"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--allow-load", action="store_true")
    p.add_argument("--foreach-adamw", action="store_true",
                   help="also time each AdamW preset without the fused AdamW kernel")
    p.add_argument("--step-loop", action="store_true",
                   help="also time each GRU/LSTM preset with the Python step loop")
    p.add_argument("--out", default=None, help="JSON file for the results (must not exist)")
    args = p.parse_args(argv)
    if args.out and os.path.exists(args.out):
        p.error(f"--out {args.out} exists; choose another file")
    kept = keep_freed_memory()
    before = load_average()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}; load average before: {before:.2f}; freed memory "
          f"kept: {kept}", flush=True)
    if before > MAX_LOAD and not args.allow_load:
        print(f"load average {before:.2f} > {MAX_LOAD}: not measuring (rerun on an idle "
              "machine, or --allow-load to mark the figures)", file=sys.stderr)
        return 2
    configs = {name: LMConfig.from_dict(with_preset(name, {})) for name in args.presets}
    data = next(iter(configs.values())).data.load()
    variants = {name: (config, True, False) for name, config in configs.items()}
    if args.foreach_adamw:
        for name, config in configs.items():
            if config.run.optimizer == "adamw":
                variants[f"{name}/foreach"] = (config, False, False)
    if args.step_loop:
        for name, config in configs.items():
            if config.model.cell.upper() in ("GRU", "LSTM"):
                variants[f"{name}/step-loop"] = (config, True, True)
    results: dict[str, dict[int, float]] = {name: {} for name in variants}
    for threads in args.threads:
        torch.set_num_threads(threads)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (config, fused, loop) in variants.items():  # alternate the variants
                samples[name].append(one_fit(config, data, args.steps, fused, loop))
        for name in variants:
            results[name][threads] = statistics.median(samples[name])
            print(f"{name:>16}  {threads} thread(s): {results[name][threads]:8.0f} tokens/s "
                  f"(median of {args.repeats}: {', '.join(f'{s:.0f}' for s in samples[name])})",
                  flush=True)
    after = load_average()
    loaded = max(before, after) > MAX_LOAD
    print(f"load average after: {after:.2f}" + ("  (LOADED: not for the record)" if loaded
                                                 else ""))
    if args.out:
        with open(args.out, "x") as f:
            json.dump({"tokens_per_s": results, "load_before": before, "load_after": after,
                       "loaded": loaded, "steps": args.steps, "repeats": args.repeats,
                       "keep_freed_memory": kept}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
