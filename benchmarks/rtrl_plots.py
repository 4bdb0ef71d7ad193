"""Figures from ``benchmarks/rtrl_speed.py`` results: cost and wall time vs H and vs sparsity.

Reads one or more JSON files written by ``rtrl_speed.py --out`` and writes three PNGs into
``--out-dir`` (existing files are never overwritten; the script refuses instead):

* ``rtrl_cost_vs_h.png``: counted MACs per step (dense, sparse) against ``H``, one line per
  weight sparsity (log-log);
* ``rtrl_time_vs_h.png``: measured time per step (dense, sparse) against ``H``;
* ``rtrl_speedup_vs_sparsity.png``: measured speed-up and counted saving against weight
  sparsity, one colour per ``H`` (solid: measured, dashed: counted).

Only rows of batch ``--batch`` are drawn (a figure per batch size: run it once per size).
Example::

    .venv/bin/python benchmarks/rtrl_plots.py /tmp/rtrl_speed_*.json --batch 1 --out-dir /tmp/fig
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

NAMES = ("rtrl_cost_vs_h.png", "rtrl_time_vs_h.png", "rtrl_speedup_vs_sparsity.png")


def load_rows(paths: list[str], batch: int) -> list[dict]:
    """Rows of all files with ``batch`` (mean over seeds per ``(H, sparsity)``)."""
    groups: dict[tuple[int, float], list[dict]] = defaultdict(list)
    for p in paths:
        for r in json.loads(Path(p).read_text())["rows"]:
            if r["batch"] == batch and not r.get("sparse_refused"):
                groups[(r["hidden"], r["sparsity"])].append(r)
    rows = []
    for (h, s), sel in sorted(groups.items()):
        row = {"hidden": h, "sparsity": s}
        for key in ("dense_macs_step", "sparse_macs_step", "dense_step_s", "sparse_step_s",
                    "speedup", "counted_saving"):
            vals = [r[key] for r in sel if r.get(key) is not None]
            row[key] = sum(vals) / len(vals) if vals else None
        rows.append(row)
    if not rows:
        raise ValueError(f"--batch {batch}: no rows with this batch size in {paths}")
    return rows


def _by(rows: list[dict], key: str) -> dict:
    out: dict = defaultdict(list)
    for r in rows:
        out[r[key]].append(r)
    return out


def plot_vs_h(rows: list[dict], what: str, ylabel: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (s, sel) in enumerate(sorted(_by(rows, "sparsity").items())):
        sel = sorted(sel, key=lambda r: r["hidden"])
        colour = f"C{i}"
        for engine, style in (("dense", "--"), ("sparse", "-")):
            pts = [(r["hidden"], r[f"{engine}_{what}"]) for r in sel
                   if r[f"{engine}_{what}"] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", color=colour,
                        label=f"{engine}, sparsity {s:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden units H")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_sparsity(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (h, sel) in enumerate(sorted(_by(rows, "hidden").items())):
        sel = sorted(sel, key=lambda r: r["sparsity"])
        xs = [r["sparsity"] for r in sel]
        ax.plot(xs, [r["counted_saving"] for r in sel], "--", marker="s", color=f"C{i}",
                label=f"H={h} counted")
        pts = [(r["sparsity"], r["speedup"]) for r in sel if r["speedup"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "-", marker="o", color=f"C{i}",
                    label=f"H={h} measured")
    ax.set_yscale("log")
    ax.set_xlabel("weight sparsity (W_hh and W_ih)")
    ax.set_ylabel("dense / sparse")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="JSON files from rtrl_speed.py --out")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    paths = [out / n for n in NAMES]
    for p in paths:
        if p.exists():
            raise FileExistsError(f"--out-dir {out}: {p.name} exists; not overwriting it")
    rows = load_rows(args.inputs, args.batch)
    out.mkdir(parents=True, exist_ok=True)
    plot_vs_h(rows, "macs_step", "counted MACs per step", paths[0])
    plot_vs_h(rows, "step_s", "seconds per step (median)", paths[1])
    plot_vs_sparsity(rows, paths[2])
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main()
