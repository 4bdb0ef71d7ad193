"""Figures of weight pruning from run folders or pruned checkpoints (matplotlib, PNG + PDF).

* :func:`sparsity_vs_step`: the sparsity after every mask update, one curve per run (the
  pruner's ``history``); for a sparsity schedule (AGP, iterative) also its planned curve;
* :func:`sparsity_by_gate`: final sparsity of every pruned tensor, one bar per gate;
* :func:`fanout_histograms`: per tensor, how many columns (input neurons) keep how many
  nonzero weights (output connections), the work of one event in the sparse engine.

Each function takes plain data (history lists, :meth:`~dualsparse.sparsity.Pruner.report`
rows), writes ``<path>.png`` and ``<path>.pdf`` and returns what it drew.
:func:`load_pruning` reads that data from a training run folder (checkpoint ``best`` or
``latest``) or from a ``dualsparse prune --save`` folder, and :func:`main` draws all three::

    python -m dualsparse.analysis.pruning_figures RUN [RUN ...] [--tag best] --out DIR
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dualsparse.analysis.figures import save_figure
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.sparsity.report import tensor_report
from dualsparse.sparsity.schedules import SparsitySchedule, schedule_from_dict
from dualsparse.train import checkpoint as ckpt

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure  # matplotlib is heavy: loaded when a figure is drawn

    return Figure(layout="constrained", figsize=figsize)


def planned_curve(schedule: dict[str, Any] | None, final: float) -> list[tuple[int, float]]:
    """``(step, sparsity)`` at every update point of a sparsity schedule dict (AGP,
    iterative) for final target ``final``; ``[]`` for threshold schedules (Narang, GL cut),
    whose sparsity is an outcome, or no schedule."""
    sched = schedule_from_dict(schedule)
    if not isinstance(sched, SparsitySchedule):
        return []
    return [(s, sched.sparsity(s, final)) for s in sched.update_steps()]


def sparsity_vs_step(runs: dict[str, dict[str, Any]], path: str | Path
                     ) -> dict[str, dict[str, list]] | None:
    """One curve per run: ``runs[label] = {"history": [...], "schedule": dict | None,
    "target": float | None}``. Returns ``{label: {"steps", "sparsity", "planned"}}`` (None and
    nothing written if no run has a mask update)."""
    drawn = {}
    for name, run in runs.items():
        hist = [h for h in run.get("history") or [] if h.get("step") is not None]
        if not hist:
            continue
        target = run.get("target")
        planned = planned_curve(run.get("schedule"), target) if target is not None else []
        drawn[name] = {"steps": [h["step"] for h in hist],
                       "sparsity": [h["sparsity"] for h in hist], "planned": planned}
    if not drawn:
        return None
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    for name, d in drawn.items():
        line = ax.step(d["steps"], d["sparsity"], where="post", marker="o", ms=3, label=name)[0]
        if d["planned"]:
            ax.plot(*zip(*d["planned"], strict=True), ls=":", color=line.get_color(),
                    label=f"{name} (planned)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("weight sparsity of the pruned tensors")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize="small")
    save_figure(fig, path)
    return drawn


def sparsity_by_gate(report: Sequence[dict[str, Any]], path: str | Path
                     ) -> dict[str, dict[str, float]] | None:
    """Grouped bars: x = tensor (layer and matrix), one bar per gate. Returns
    ``{tensor: {gate: sparsity}}`` (None for an empty report)."""
    if not report:
        return None
    data = {r["name"]: dict(r["gate_sparsity"]) for r in report}
    gates = list(dict.fromkeys(g for d in data.values() for g in d))
    fig = _new_figure((max(5.0, 1.2 * len(data)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(gates)
    for j, gate in enumerate(gates):
        xs = [i + (j - (len(gates) - 1) / 2) * width for i in range(len(data))]
        ax.bar(xs, [d.get(gate, float("nan")) for d in data.values()], width, label=gate)
    ax.set_xticks(range(len(data)), list(data), rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("sparsity")
    ax.set_ylim(0.0, 1.0)
    ax.legend(title="gate", fontsize="small")
    save_figure(fig, path)
    return data


def fanout_histograms(report: Sequence[dict[str, Any]], path: str | Path
                      ) -> dict[str, dict[str, list]] | None:
    """One panel per tensor: number of columns (input neurons) per bin of fan-out (nonzero
    weights in the column). Returns ``{tensor: {"edges", "counts"}}``."""
    if not report:
        return None
    data = {r["name"]: r["fanout_histogram"] for r in report}
    n = len(data)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig = _new_figure((4.0 * cols, 3.0 * rows))
    for i, (name, h) in enumerate(data.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        edges = h["edges"]
        ax.bar(edges[:-1], h["counts"], [b - a for a, b in zip(edges[:-1], edges[1:],
                                                              strict=True)],
               align="edge", edgecolor="black", linewidth=0.5)
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("output connections per input neuron (fan-out)")
        ax.set_ylabel("neurons")
    save_figure(fig, path)
    return data


def _report_from_weights(model: torch.nn.Module, bins: int) -> list[dict[str, Any]]:
    """Report rows of a finalized (mask-free) model: nonzero pattern of every 2-D recurrent
    weight, gates from the owning layer's ``gate_names``."""
    rows = []
    for module_name, module in model.named_modules():
        names = getattr(module, "gate_names", None)
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() != 2 or not names:
                continue
            size = p.shape[0] // len(names)
            gates = tuple((g, i * size, (i + 1) * size) for i, g in enumerate(names))
            rows.append(tensor_report(f"{module_name}.{pname}", p.detach() != 0, (1, 1),
                                      gates, bins))
    return rows


def load_pruning(folder: str | os.PathLike[str], tag: str = "best", bins: int = 20
                 ) -> dict[str, Any]:
    """``{"history", "schedule", "target", "report"}`` of the LM checkpoint ``tag`` in
    ``folder`` (a training run, or ``dualsparse prune --save`` output). A finalized or dense
    model has no history; its report is computed from the zero pattern of its weights."""
    meta = ckpt.read_checkpoint_meta(folder, tag)
    model = RNNLanguageModel.from_config(meta["model_config"])
    state = meta.get("pruner")
    pruner = ckpt.load_model(folder, model, tag)
    if pruner is None:
        return {"history": [], "schedule": None, "target": None,
                "report": _report_from_weights(model, bins)}
    return {"history": state.get("history") or [], "schedule": state.get("schedule"),
            "target": state["spec"].get("sparsity"), "report": pruner.report(bins)}


def draw_all(folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
             tag: str = "best") -> dict[str, Any]:
    """The three figures into ``out``: ``sparsity_vs_step`` over all ``folders``; per folder
    ``<name>_sparsity_by_gate`` and ``<name>_fanout``. Returns what was drawn."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = {Path(f).name or str(f): load_pruning(f, tag) for f in folders}
    drawn: dict[str, Any] = {"sparsity_vs_step": sparsity_vs_step(loaded,
                                                                  out / "sparsity_vs_step")}
    for name, d in loaded.items():
        drawn[f"{name}_sparsity_by_gate"] = sparsity_by_gate(d["report"],
                                                             out / f"{name}_sparsity_by_gate")
        drawn[f"{name}_fanout"] = fanout_histograms(d["report"], out / f"{name}_fanout")
    return drawn


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dualsparse.analysis.pruning_figures RUN [RUN ...] --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m dualsparse.analysis.pruning_figures",
                                     description="pruning figures from run folders")
    parser.add_argument("folders", nargs="+", help="run folders or pruned checkpoints")
    parser.add_argument("--tag", default="best", help="checkpoint tag (default best)")
    parser.add_argument("--out", required=True, help="folder for the PNG and PDF files")
    args = parser.parse_args(argv)
    drawn = draw_all(args.folders, args.out, args.tag)
    for name, value in drawn.items():
        print(f"{name}: {'written' if value is not None else 'nothing to draw'}")


if __name__ == "__main__":
    main()


__all__ = ["draw_all", "fanout_histograms", "load_pruning", "main", "planned_curve",
           "sparsity_by_gate", "sparsity_vs_step"]
