"""``dualsparse report``: a markdown report with every figure the records support, and tables.

:func:`write_report` writes into ``out_dir``: ``report.md``, ``fig_*.png`` / ``fig_*.pdf``,
and ``summary.json`` (the plotted data and tables, means and stds over seeds). Figures the
records cannot support (e.g. weight decay does not vary) are listed as not drawn, with why.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualsparse.analysis import figures, tables
from dualsparse.analysis.parameter_figures import parameter_distributions
from dualsparse.analysis.records import Keys, as_runs
from dualsparse.atomic import atomic_write_json, atomic_write_text
from dualsparse.serialisation import jsonable

DEFAULT_KEYS = Keys()


def machine_description() -> str:
    """``model name (N CPUs), OS, Python`` of this machine, from /proc/cpuinfo if present."""
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        if names:
            cpu = f"{names[0]} ({len(names)} logical CPUs)"
    except OSError:
        pass
    return f"{cpu}; {platform.system()} {platform.release()}; Python {platform.python_version()}"


#: Why a perplexity-vs-reduction figure is missing: a curve needs one setting at two or more
#: weight-sparsity targets, each run with both metrics.
_NO_CURVE = ("no setting (model and other varied options) has runs at two or more sparsity "
             "targets with both a test perplexity and the reduction")


def _figure_section(name: str, title: str, data: Any, why_missing: str) -> tuple[str, Any]:
    if data is None:
        return f"### {title}\n\nNot drawn: {why_missing}\n", None
    return (f"### {title}\n\n![{title}]({name}.png)\n\n[PDF]({name}.pdf)\n", data)


def write_report(records: Sequence[Any], out_dir: str | Path, title: str = "Sweep report",
                 description: str = "", counts: dict[str, int] | None = None,
                 failed: Sequence[Any] = (), hardware: str | None = None,
                 keys: Keys = DEFAULT_KEYS, notes: str = "") -> Path:
    """Draw all figures and tables for ``records`` into ``out_dir``; returns ``report.md``.

    Args:
        records: run records (finished ones are used; others are ignored).
        counts: runs per status (shown in the header), e.g. ``ResultStore.counts()``.
        failed: failed run records (their first error line is listed).
        hardware: where the numbers were measured (default: this machine).
        notes: extra markdown placed after the header.

    Raises:
        ValueError: if no record has metrics, or none has a test perplexity.
    """
    runs = as_runs(records)
    if not runs:
        raise ValueError("no finished runs to report on")
    if not any(isinstance(r.metrics.get("test_ppl"), (int, float)) for r in runs):
        raise ValueError("no finished run has a 'test_ppl' metric (is this an LM sweep?)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    egru = [r for r in runs if str(r.config.get(keys.model, "")).upper() == "EGRU"]
    summary: dict[str, Any] = {}
    sections = []
    specs = [
        ("fig_ppl_vs_reduction",
         "Test perplexity vs measured effective MAC reduction (fig. 1A/B, 2)",
         lambda p: figures.ppl_vs_reduction(runs, p, keys), _NO_CURVE),
        ("fig_ppl_vs_ideal_reduction",
         "Test perplexity vs lambda_a x lambda_w, the papers' axis (fig. 1A/B)",
         lambda p: figures.ppl_vs_reduction(
             runs, p, keys, reduction="ideal_reduction",
             title="Perplexity vs lambda_a x lambda_w (labels: weight-sparsity target)"),
         _NO_CURVE),
        ("fig_tradeoff_map", "Activity sparsity vs weight sparsity (fig. 1C/D)",
         lambda p: figures.tradeoff_map(runs, p, keys), "no run has the sparsity metrics"),
        ("fig_weight_decay", "Weight decay on weights and on biases (fig. 2 / 4)",
         lambda p: figures.weight_decay_effect(runs, p, keys),
         f"neither {keys.wdecay!r} nor {keys.wdecay_bias!r} varies in this sweep"),
        ("fig_weight_decay_valid",
         "Validation perplexity vs weight decay on weights and on biases (fig. 2 / 4)",
         lambda p: figures.weight_decay_effect(runs, p, keys, metric="val_ppl"),
         f"neither {keys.wdecay!r} nor {keys.wdecay_bias!r} varies among runs with a "
         "validation perplexity"),
        ("fig_parameter_distributions",
         "Weight and bias distributions of the dense models (000 fig. 2C/D, 001 fig. 5)",
         lambda p: parameter_distributions(
             [r for r in runs if not r.config.get(keys.sparsity)], p, keys),
         "no dense run (prune target 0) records parameter histograms"),
        ("fig_activity_hist", "Per-neuron activity per layer, EGRU (fig. 4)",
         lambda p: figures.activity_histograms(egru, p, keys), "no EGRU run in this sweep"),
        ("fig_distance_hist", "Histogram of pre-reset c~ - theta per layer, EGRU (fig. 5)",
         lambda p: figures.distance_histograms(egru, p, keys),
         "no EGRU run with c~ - theta histograms"),
        ("fig_carried_distance_hist",
         "Histogram of carried (post-reset) c - theta per layer, EGRU (fig. 5)",
         lambda p: figures.distance_histograms(egru, p, keys, state="carried"),
         "no EGRU run with carried c - theta histograms"),
        ("fig_ppl_vs_prune_steps", "Perplexity vs number of pruning steps (fig. 3)",
         lambda p: figures.ppl_vs_prune_steps(runs, p, keys),
         f"{keys.steps!r} does not vary among pruned runs in this sweep"),
    ]
    for name, fig_title, draw, why in specs:
        text, data = _figure_section(name, fig_title, draw(out / name), why)
        sections.append(text)
        if data is not None:
            summary[name] = data
    best = tables.best_per_sparsity(runs, keys)
    settings = tables.settings_table(runs, keys)
    summary["best_per_sparsity"] = best
    summary["settings"] = settings
    header = [f"# {title}", ""]
    if description:
        header += [description, ""]
    header += [f"- generated: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
               f"- machine: {hardware or machine_description()}",
               f"- finished runs used: {len(runs)}"]
    if counts:
        header.append("- runs by status: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    durations = [r.metrics.get("train_seconds") for r in runs]
    durations = [d for d in durations if isinstance(d, (int, float))]
    if durations:
        header.append(f"- training time per run: {min(durations):.0f}-{max(durations):.0f} s "
                      f"(sum {sum(durations) / 60:.1f} min)")
    header.append("- numbers: mean ± sample std over seeds; MACs count the recurrent layers "
                  "(per token, measured on the test split); sparsities are measured, the "
                  "target is the pruning goal")
    body = "\n".join(header) + "\n\n"
    if notes:
        body += notes.strip() + "\n\n"
    body += "## Best setting per sparsity level\n\n" + tables.best_table_markdown(best) + "\n\n"
    body += "## Figures\n\n" + "\n".join(sections) + "\n"
    body += "## All settings\n\n" + tables.settings_markdown(settings) + "\n"
    if failed:
        body += "\n## Failed runs\n\n"
        for r in failed:
            first = (r.error or "").strip().splitlines()
            body += f"- `{r.run_id}` (attempts {r.attempts}): {first[-1] if first else '?'}\n"
    atomic_write_json(out / "summary.json", jsonable(_tuples_to_lists(summary)),
                      sort_keys=False, allow_nan=False)
    return atomic_write_text(out / "report.md", body)


def _tuples_to_lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _tuples_to_lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tuples_to_lists(v) for v in obj]
    return obj


def load_summary(out_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` a report wrote."""
    return json.loads((Path(out_dir) / "summary.json").read_text())


__all__ = ["load_summary", "machine_description", "write_report"]
