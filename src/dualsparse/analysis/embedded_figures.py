"""Embedded eGRU figure: accuracy vs model bytes and vs weight bit width, from KWS results.

Input: the ``metrics.json`` files that ``dualsparse train --task kws --out DIR`` writes
(``model``, ``test_acc``, ``float_bytes``, ``hidden``, ``seed``; eGRU runs also ``bits``,
``deployed_test_acc``, ``deployed_bytes``). Every run gives one float point (its float32
model) and, when deployed, one integer point (the packed power-of-two weights)::

    results = load_kws_results(["runs/kws"])          # folders are searched recursively
    data = accuracy_vs_size(results, "figs/kws_size")  # writes kws_size.png / .pdf
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dualsparse.analysis.figures import save_figure

REQUIRED = ("model", "test_acc", "float_bytes")


def load_kws_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read KWS ``metrics.json`` files: each path is such a file or a folder searched for them.

    Each result gets ``"path"`` (its file). Raises ValueError for a missing path, a folder
    without results, or a file that is not a KWS result (names the file and the key).
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(p.rglob("metrics.json"))
            if not found:
                raise ValueError(f"no metrics.json under {str(p)!r}")
            files.extend(found)
        else:
            raise ValueError(f"results path {str(p)!r} does not exist")
    results = []
    for f in files:
        try:
            r = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(f)!r} is not valid JSON: {exc}") from None
        missing = [k for k in REQUIRED if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(f"{str(f)!r} is not a KWS result: no {missing[0]!r}")
        results.append({**r, "path": str(f)})
    return results


def _hidden(r: dict[str, Any]) -> str:
    """Series label of the widths: ``"32,20"``, or ``"30,20+16 ReLU"`` with dense layers."""
    h = r.get("hidden", [])
    text = ",".join(str(v) for v in h) if isinstance(h, list) else str(h)
    dense = r.get("dense") or []
    return text + (f"+{','.join(str(v) for v in dense)} ReLU" if dense else "")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var)


def size_points(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Series of the accuracy-vs-bytes panel, means and std over seeds.

    Keys ``"<model> float32 (<hidden>)"`` (``egru-q``: ``"egru-q float32, QAT <b>-bit
    (<hidden>)"``, trained for that bit width) and ``"<model> <b>-bit deployed (<hidden>)"``;
    values ``{"bytes", "acc", "acc_std", "n"}`` lists (one point per series).
    """
    groups: dict[str, dict[str, list[float]]] = {}
    for r in results:
        qat = f", QAT {r.get('bits')}-bit" if r["model"] == "egru-q" else ""
        entries = [(f"{r['model']} float32{qat} ({_hidden(r)})", r["float_bytes"],
                    r["test_acc"])]
        if r.get("deployed_bytes") is not None and r.get("deployed_test_acc") is not None:
            entries.append((f"{r['model']} {r.get('bits')}-bit deployed ({_hidden(r)})",
                            r["deployed_bytes"], r["deployed_test_acc"]))
        for name, size, acc in entries:
            g = groups.setdefault(name, {"bytes": [], "acc": []})
            g["bytes"].append(float(size))
            g["acc"].append(float(acc))
    out = {}
    for name, g in sorted(groups.items()):
        acc, std = _mean_std(g["acc"])
        out[name] = {"bytes": [_mean_std(g["bytes"])[0]], "acc": [acc], "acc_std": [std],
                     "n": [len(g["acc"])]}
    return out


def bits_curves(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Deployed accuracy vs weight bits, one curve per model and hidden sizes.

    Values ``{"bits", "acc", "acc_std", "bytes", "n"}``, sorted by bits.
    """
    groups: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in results:
        if r.get("deployed_test_acc") is None or r.get("bits") is None:
            continue
        name = f"{r['model']} ({_hidden(r)})"
        groups.setdefault(name, {}).setdefault(int(r["bits"]), []).append(r)
    out = {}
    for name, by_bits in sorted(groups.items()):
        c: dict[str, list[float]] = {"bits": [], "acc": [], "acc_std": [], "bytes": [], "n": []}
        for b in sorted(by_bits):
            acc, std = _mean_std([r["deployed_test_acc"] for r in by_bits[b]])
            c["bits"].append(b)
            c["acc"].append(acc)
            c["acc_std"].append(std)
            c["bytes"].append(_mean_std([r["deployed_bytes"] for r in by_bits[b]])[0])
            c["n"].append(len(by_bits[b]))
        out[name] = c
    return out


def accuracy_vs_size(results: Sequence[dict[str, Any]], path: str | Path
                     ) -> dict[str, Any] | None:
    """Two panels: test accuracy vs model bytes (log scale; float32 and deployed models) and
    deployed accuracy vs weight bit width. Writes ``path.png``/``path.pdf``; returns the
    plotted data (``{"size": size_points(...), "bits": bits_curves(...)}``), or None for
    no results."""
    if not results:
        return None
    from matplotlib.figure import Figure  # matplotlib is heavy: loaded when a figure is drawn
    from matplotlib.ticker import FuncFormatter, LogLocator  # heavy, as above

    size, bits = size_points(results), bits_curves(results)
    fig = Figure(layout="constrained", figsize=(11.0, 4.2))
    ax_size, ax_bits = fig.subplots(1, 2)
    for name, s in size.items():
        ax_size.errorbar(s["bytes"], s["acc"], yerr=s["acc_std"], marker="s" if "float32"
                         in name else "o", capsize=3, linestyle="none", label=name)
    ax_size.set_xscale("log")
    ax_size.minorticks_off()
    ax_size.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_size.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax_size.set_xlabel("model bytes (log scale)")
    ax_size.set_ylabel("test accuracy")
    ax_size.legend(fontsize="small")
    ax_size.grid(alpha=0.3)
    for name, c in bits.items():
        ax_bits.errorbar(c["bits"], c["acc"], yerr=c["acc_std"], marker="o", capsize=3,
                         label=name)
        for b, a, nbytes in zip(c["bits"], c["acc"], c["bytes"], strict=True):
            ax_bits.annotate(f"{nbytes:,.0f} B", (b, a), textcoords="offset points",
                             xytext=(4, -12), fontsize="x-small")
    ax_bits.set_xlabel("weight bits (deployed)")
    ax_bits.set_ylabel("deployed test accuracy")
    if bits:
        ax_bits.set_xticks(sorted({b for c in bits.values() for b in c["bits"]}))
        ax_bits.legend(fontsize="small")
    ax_bits.grid(alpha=0.3)
    save_figure(fig, path)
    return {"size": size, "bits": bits}


__all__ = ["accuracy_vs_size", "bits_curves", "load_kws_results", "size_points"]
