"""Measured vs ideal speed-up of the engine over dense PyTorch, per mode, over a grid of
activity x weight density; writes a JSON of every cell and a PNG plot (for docs/engine.md).

Each cell is one ``bench_engine.run_scenario`` row (same model construction, calibration,
interleaved timing and per-part breakdown): an EGRU LM of ``--model`` shape whose input and
recurrent weights have density ``d_w`` (16x1 blocks; dense at 1.0), thresholds calibrated to
the activity, in segment / streaming / batch-8 mode.

    python benchmarks/bench_engine_sweep.py --out sweep.json --plot docs/engine_sweep.png
    python benchmarks/bench_engine_sweep.py --quick --out /tmp/s.json --plot /tmp/s.png
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
from bench_engine import run_scenario  # noqa: E402
from engine_bench_lib import (  # noqa: E402
    QUICK_LM,
    one_thread_session,
    write_json,
)

MODELS = {"mid": (10000, 512, (1024, 512)), "paper": (10000, 750, (1350, 1350, 750)),
          "quick": QUICK_LM}
WEIGHT_DENSITIES = (1.0, 0.25, 0.1)
ACTIVITIES = (0.5, 0.25, 0.1)
MODES = ("segment", "streaming", "batch")


def plot(cells: list[dict], path: str) -> None:
    """One panel per mode: measured vs ideal speed-up (log-log), colour = weight density."""
    if os.path.exists(path):
        raise FileExistsError(f"--plot {path} exists; choose a new name")
    fig, axes = plt.subplots(1, len(MODES), figsize=(4.2 * len(MODES), 4), sharey=True)
    densities = sorted({c["d_w"] for c in cells}, reverse=True)
    for ax, mode in zip(axes, MODES, strict=True):
        sub = [c for c in cells if c["mode"] == mode]
        hi = max([c["ideal"] for c in cells] + [2.0]) * 1.3
        ax.plot([1, hi], [1, hi], "k-", lw=0.8, label="ideal")
        ax.plot([1, hi], [0.5, hi / 2], "k--", lw=0.8, label="0.5 x ideal")
        for d_w in densities:
            pts = [c for c in sub if c["d_w"] == d_w]
            ax.scatter([c["ideal"] for c in pts], [c["speedup"] for c in pts],
                       label=f"d_w = {d_w:g}")
            for c in pts:
                ax.annotate(f"{c['activity']:.2f}", (c["ideal"], c["speedup"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{mode}" + (" (8 streams)" if mode == "batch" else ""))
        ax.set_xlabel("ideal speed-up (dense / effective MACs)")
    axes[0].set_ylabel("measured speed-up over dense PyTorch")
    axes[-1].legend(fontsize=7)
    fig.suptitle("engine vs dense PyTorch (labels: activity), 1 thread", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="mid")
    p.add_argument("--weight-densities", type=float, nargs="+", default=list(WEIGHT_DENSITIES))
    p.add_argument("--activities", type=float, nargs="+", default=list(ACTIVITIES))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny model and grid (smoke test)")
    p.add_argument("--allow-load", action="store_true")
    p.add_argument("--out", required=True, help="new JSON file")
    p.add_argument("--plot", default=None, help="new PNG file")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.tokens, args.repeats = "quick", 16, 1
        args.weight_densities, args.activities = [1.0, 0.25], [0.3]
    for path in (args.out, args.plot):
        if path and os.path.exists(path):
            raise FileExistsError(f"{path} exists; choose a new name")
    cells = []
    with one_thread_session("bench_engine_sweep.py", argv,
                            args.allow_load or args.quick) as session:
        for d_w in args.weight_densities:
            pattern = "dense" if d_w >= 1.0 else "16x1"
            for act in args.activities:
                cells += run_scenario(f"{args.model}-{pattern}-dw{d_w:g}-a{act:g}",
                                      (MODELS[args.model], d_w, pattern, act), args.modes,
                                      args.tokens, args.repeats, args.seed)
    payload = session.payload(model=MODELS[args.model], cells=cells)
    write_json(args.out, payload)
    if args.plot:
        plot(cells, args.plot)
    return payload


if __name__ == "__main__":
    main()
