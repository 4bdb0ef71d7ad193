"""``metrics.csv`` (one row per log/eval event) and optional TensorBoard scalars."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from dualsparse.atomic import atomic_write_bytes

CSV_FIELDS = ("step", "epoch", "split", "loss", "ppl", "lr", "activity", "grad_norm",
              "tokens_per_s", "elapsed_s")
TB_KEYS = ("loss", "ppl", "lr", "activity", "grad_norm", "tokens_per_s")


class MetricsLog:
    """Appends rows to ``out_dir/metrics.csv``; a resumed run first drops the rows a killed
    run wrote after its checkpoint.

    Args:
        out_dir: folder of ``metrics.csv`` (and ``tensorboard/``); None writes nothing.
        tensorboard: also write TensorBoard scalars.
        resume_step: the step training resumes from (None: a fresh run, the file is
            started anew).
        extra_fields: task-specific columns after :data:`CSV_FIELDS` (e.g. ``accuracy``).
    """

    def __init__(self, out_dir: Path | None, tensorboard: bool, resume_step: int | None,
                 extra_fields: tuple[str, ...] = ()) -> None:
        self.fields = CSV_FIELDS + tuple(f for f in extra_fields if f not in CSV_FIELDS)
        self.path = None if out_dir is None else out_dir / "metrics.csv"
        self.writer = None
        if self.path is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            # optional heavy dependency (tensorboard), imported only when asked for
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out_dir / "tensorboard"),
                                        purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` by a run that was killed (they will be redone)."""
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        lines = [",".join(self.fields)] + [",".join(r.get(k, "") or "" for k in self.fields)
                                           for r in rows]
        atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode())

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (missing fields stay empty; floats with 6 significant digits)."""
        if self.path is None:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in self.fields})
        if self.writer is not None:
            for key in TB_KEYS + self.fields[len(CSV_FIELDS):]:
                if row.get(key) is not None:
                    self.writer.add_scalar(f"{row['split']}/{key}", row[key], row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped at ``exp(50)`` so that a diverged run still logs a number."""
    return math.exp(min(loss, 50.0))


__all__ = ["CSV_FIELDS", "MetricsLog", "perplexity"]
