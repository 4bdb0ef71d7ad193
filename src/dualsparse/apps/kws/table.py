"""The KWS results table: seeds x splits x models, one run folder and one results JSON per run.

``dualsparse train --task kws --seeds 0,1,2 --splits random,speaker --models gru,egru,egru-q
[--model-lr egru-q=2e-2] --out runs/kws_table --results docs/results/kws [other kws flags]``

For every combination it trains (or resumes, or reuses) the run folder
``OUT/{model}_{split}_s{seed}`` and writes ``RESULTS/{model}_{split}_s{seed}.json`` (seed, split,
model, float and deployed test accuracy, bytes, the run's settings and the code version).  A
results file that already exists is never overwritten: its run is skipped, so an interrupted
table is finished by running the same command again.  ``RESULTS/summary.json`` and
``RESULTS/summary.md`` (mean and sample std over seeds per model and split) are rebuilt from all
``*.json`` run files in ``RESULTS`` after every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dualsparse.atomic import atomic_write_json, atomic_write_text
from dualsparse.models.egru_embedded import MAX_DENSE_SHIFT, default_dense_shifts
from dualsparse.validation import check_choice, check_real
from dualsparse.version import __version__

SPLITS = ("random", "speaker")
MODELS = ("gru", "egru", "egru-q")
#: settings copied from a run's metrics/config into its results file
RECORD_KEYS = ("model", "split", "seed", "features", "hidden", "dense", "dense_shift", "epochs",
               "test_acc", "val_acc", "best_epoch", "deployed_test_acc", "deployed_kind",
               "deployed_agreement", "deployed_bytes", "deployed_level_fractions",
               "float_bytes", "params", "bits", "n_train", "n_test", "test_speakers")
SETTING_KEYS = ("lr", "batch_size", "clip", "gain", "logit_gain", "zero_rule", "bits",
                "reset_gate", "max_train", "aug_warp", "aug_stretch", "aug_freq_mask",
                "aug_time_mask")


def parse_list(flag: str, text: str, choices: tuple[str, ...] | None = None) -> list[str]:
    """Comma-separated ``text`` -> non-empty list (each in ``choices`` when given)."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"{flag} must name at least one value, got {text!r}")
    if choices is not None:
        for t in items:
            check_choice(flag, t, choices)
    if len(set(items)) != len(items):
        raise ValueError(f"{flag} repeats a value: {text!r}")
    return items


def parse_sizes(flag: str, text: str | None, allow_empty: bool = False) -> tuple[int, ...]:
    """``--hidden 32,20`` / ``--dense 16`` -> ``(32, 20)`` / ``(16,)``: comma-separated ints
    >= 1 (empty text gives ``()`` where ``allow_empty``)."""
    items = [t.strip() for t in str(text or "").split(",") if t.strip()]
    try:
        sizes = tuple(int(t) for t in items)
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated ints >= 1, got {text!r}") from None
    if any(v < 1 for v in sizes):
        raise ValueError(f"{flag} must be comma-separated ints >= 1, got {text!r}")
    if not sizes and not allow_empty:
        raise ValueError(f"{flag} must name at least one size >= 1, got {text!r}")
    return sizes


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]``."""
    try:
        return [int(s) for s in parse_list("--seeds", text)]
    except ValueError as e:
        if "--seeds" in str(e):
            raise
        raise ValueError(f"--seeds must be comma-separated ints, got {text!r}") from None


def parse_model_lr(text: str | None) -> dict[str, float]:
    """``--model-lr egru-q=2e-2,gru=6e-3`` -> ``{"egru-q": 0.02, "gru": 0.006}``."""
    out: dict[str, float] = {}
    for item in parse_list("--model-lr", text) if text else []:
        name, _, value = item.partition("=")
        check_choice("--model-lr", name.strip(), MODELS)
        try:
            out[name.strip()] = check_real("--model-lr", float(value), low=0.0, low_open=True)
        except ValueError:
            raise ValueError(f"--model-lr needs MODEL=LR items, got {item!r}") from None
    return out


def parse_dense_shift(text: str | None, model: str, hidden: tuple[int, ...],
                      dense: tuple[int, ...]) -> tuple[int, ...]:
    """``--dense-shift``: ``auto`` -> the default shift of each ``egru-q`` dense layer
    (:func:`~dualsparse.models.egru_embedded.default_dense_shifts`: zeros for
    ``gru``/``egru``), else one int >= 0 per dense layer; ``None`` (a run saved before the flag
    existed) -> zeros, the unshifted layer those runs trained."""
    if text is None:
        return (0,) * len(dense)
    if str(text).strip() == "auto":
        return tuple(default_dense_shifts(hidden[-1], dense, model == "egru-q"))
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        shifts = tuple(int(t) for t in items)
    except ValueError:
        raise ValueError(f"--dense-shift must be 'auto' or comma-separated ints >= 0, got "
                         f"{text!r}") from None
    if len(shifts) != len(dense) or any(not 0 <= v <= MAX_DENSE_SHIFT for v in shifts):
        raise ValueError(f"--dense-shift must be 'auto' or one int in [0, {MAX_DENSE_SHIFT}] "
                         f"per --dense layer ({len(dense)}), got {text!r}")
    if model != "egru-q" and any(shifts):
        raise ValueError(f"--dense-shift applies to egru-q only, got {text!r} for {model}")
    return shifts


def shift_text(shifts: tuple[int, ...]) -> str:
    """``(5, 4)`` -> ``"5,4"`` (as stored in ``config.json``)."""
    return ",".join(str(v) for v in shifts)


def run_name(model: str, split: str, seed: int) -> str:
    return f"{model}_{split}_s{seed}"


def record(metrics: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The results-file content of one finished run."""
    rec = {k: metrics.get(k) for k in RECORD_KEYS if k in metrics}
    rec["settings"] = {k: getattr(args, k, None) for k in SETTING_KEYS}
    rec["run_dir"] = str(args.out)
    rec["version"] = __version__
    # the accuracy of the model as it would ship: the integer model for egru-q, else float
    rec["accuracy"] = metrics["deployed_test_acc"] if metrics["model"] == "egru-q" \
        else metrics["test_acc"]
    return rec


def summarise(results: Path) -> dict[str, Any]:
    """Mean and sample std of ``accuracy`` per (model, split) over the run files in ``results``;
    writes ``summary.json`` and ``summary.md`` there and returns the summary."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in sorted(results.glob("*.json")):
        if p.name == "summary.json" or p.name.startswith("m0"):
            continue
        r = json.loads(p.read_text())
        if {"model", "split", "seed", "accuracy"} <= r.keys():
            groups.setdefault((r["model"], r["split"]), []).append(r)
    rows = []
    for (model, split), rs in sorted(groups.items()):
        acc = [r["accuracy"] for r in rs]
        rows.append({"model": model, "split": split, "n": len(acc),
                     "seeds": sorted(r["seed"] for r in rs),
                     "mean": statistics.fmean(acc),
                     "std": statistics.stdev(acc) if len(acc) > 1 else None,
                     "float_mean": statistics.fmean(r["test_acc"] for r in rs),
                     "bytes": rs[0].get("deployed_bytes") if model == "egru-q"
                     else rs[0].get("float_bytes")})
    by = {(r["model"], r["split"]): r for r in rows}
    gaps = [{"split": sp, "gru_minus_egru_q": by["gru", sp]["mean"] - by["egru-q", sp]["mean"],
             "seeds": sorted(set(by["gru", sp]["seeds"]) & set(by["egru-q", sp]["seeds"]))}
            for sp in SPLITS if ("gru", sp) in by and ("egru-q", sp) in by]
    summary = {"rows": rows, "gaps": gaps, "version": __version__,
               "note": "accuracy = deployed integer model for egru-q, float model otherwise; "
                       "gap = difference of the means (points x 0.01)"}
    atomic_write_json(results / "summary.json", summary)
    lines = ["| model | split | seeds | test accuracy (mean ± std) | bytes |",
             "|---|---|---|---:|---:|"]
    for r in rows:
        std = "–" if r["std"] is None else f"{100 * r['std']:.1f}"
        lines.append(f"| {r['model']} | {r['split']} | {','.join(map(str, r['seeds']))} | "
                     f"{100 * r['mean']:.1f} ± {std} | {r['bytes']} |")
    for g in gaps:
        lines.append(f"\nGap {g['split']}: float GRU mean - deployed 3-bit eGRU mean = "
                     f"{100 * g['gru_minus_egru_q']:.1f} points.")
    atomic_write_text(results / "summary.md", "\n".join(lines) + "\n")
    return summary


def _check_same_widths(metrics: dict[str, Any], args: argparse.Namespace, run_dir: Path
                       ) -> None:
    """A finished run is reused only with the widths and dense shifts asked for (runs without
    ``dense`` / ``dense_shift`` in their metrics predate the flags: no dense layers / no
    shifts)."""
    dense = list(metrics.get("dense") or [])
    saved = (list(metrics.get("hidden") or []), dense,
             list(metrics.get("dense_shift") or [0] * len(dense)))
    hidden_now = parse_sizes("--hidden", args.hidden)
    dense_now = parse_sizes("--dense", getattr(args, "dense", ""), allow_empty=True)
    now = (list(hidden_now), list(dense_now),
           list(parse_dense_shift(getattr(args, "dense_shift", "auto"), args.model, hidden_now,
                                  dense_now)))
    if saved != now:
        raise ValueError(f"{run_dir} holds a finished run with --hidden/--dense/--dense-shift "
                         f"{saved}, not {now}: use another --out and --results")


def run_table(args: argparse.Namespace,
              run_one: Callable[[argparse.Namespace], dict[str, Any]]) -> dict[str, Any]:
    """Train/reuse every run of the table and write its results file (see module docstring)."""
    seeds = parse_seeds(args.seeds or str(args.seed))
    splits = parse_list("--splits", args.splits or args.split, SPLITS)
    models = parse_list("--models", args.models or args.model, MODELS)
    model_lr = parse_model_lr(getattr(args, "model_lr", None))
    if not args.out or not args.results:
        raise ValueError("--seeds/--splits/--models need --out (parent of the run folders) "
                         "and --results (folder of the results JSON files)")
    if args.resume:
        raise ValueError("--resume is implied in table mode (unfinished runs are resumed)")
    root, results = Path(args.out), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for split in splits:
            for model in models:
                name = run_name(model, split, seed)
                res_path = results / f"{name}.json"
                if res_path.exists():
                    print(f"[kws-table] {name}: {res_path} exists, skipped", flush=True)
                    continue
                run_dir = root / name
                sub = argparse.Namespace(**{**vars(args), "model": model, "split": split,
                                            "seed": seed, "out": str(run_dir),
                                            "lr": model_lr.get(model, args.lr),
                                            "seeds": None, "splits": None, "models": None,
                                            "model_lr": None})
                done = run_dir / "metrics.json"
                if done.is_file():
                    metrics = json.loads(done.read_text())
                    _check_same_widths(metrics, sub, run_dir)
                else:
                    sub.resume = (run_dir / "latest.json").is_file()
                    metrics = run_one(sub)
                rec = record(metrics, sub)
                if res_path.exists():  # written by someone else meanwhile: keep theirs
                    continue
                atomic_write_json(res_path, rec)
                summarise(results)
    return summarise(results)


__all__ = ["MODELS", "RECORD_KEYS", "SPLITS", "parse_dense_shift", "parse_list",
           "parse_model_lr", "parse_seeds", "parse_sizes", "shift_text",
           "record", "run_name", "run_table", "summarise"]
