"""Per-step work and memory counters of the RTRL engines.

Every count is taken where the operation runs, from the sizes of the tensors the code really
multiplies (a multiply or a multiply-add both count as one MAC). Each record also carries what
the dense reference (:class:`~dualsparse.rtrl.dense.DenseRTRL`) does on a step of the same
shape, so ``reduction = dense / actual`` compares the two on identical inputs.

Categories (MACs per step, summed over the batch):
    jacobian:  entries of ``K = dc~_t/dy_{t-1}`` and of ``J_t`` that were formed;
    immediate: entries of the immediate influence ``Mbar_t``;
    update:    ``J_t M_{t-1}`` (diagonal and off-diagonal parts) and the addition of ``Mbar_t``;
    gradient:  the contraction ``dL/dy_t . dy_t/dp`` for steps with a loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

CATEGORIES = ("jacobian", "immediate", "update", "gradient")


@dataclass
class StepRecord:
    """Counts of one step (batch summed). ``m_density`` is None unless measured."""

    macs: dict[str, int]
    dense_macs: dict[str, int]
    active_fraction: float      # mean fraction of units with dy/dc~ != 0 at t-1
    j_density: float            # mean fraction of J_t entries formed (nonzero structure)
    m_bytes: int                # bytes of the influence storage
    m_density: float | None = None  # nonzero entries of M_t / (H * p), batch mean

    @property
    def total(self) -> int:
        return sum(self.macs.values())

    @property
    def dense_total(self) -> int:
        return sum(self.dense_macs.values())


@dataclass
class RTRLCounter:
    """Collects one :class:`StepRecord` per step; gradient MACs attach to the latest step."""

    records: list[StepRecord] = field(default_factory=list)

    def record(self, rec: StepRecord) -> None:
        self.records.append(rec)

    def add_gradient(self, macs: int, dense_macs: int) -> None:
        if not self.records:
            raise ValueError("gradient contraction before any step")
        self.records[-1].macs["gradient"] += macs
        self.records[-1].dense_macs["gradient"] += dense_macs

    def clear(self) -> None:
        self.records.clear()

    def summary(self) -> dict[str, float]:
        """Totals over all recorded steps, the overall reduction and mean densities."""
        if not self.records:
            raise ValueError("no steps recorded")
        out: dict[str, float] = {"steps": len(self.records)}
        for cat in CATEGORIES:
            out[f"macs_{cat}"] = sum(r.macs[cat] for r in self.records)
            out[f"dense_macs_{cat}"] = sum(r.dense_macs[cat] for r in self.records)
        out["macs_total"] = sum(r.total for r in self.records)
        out["dense_macs_total"] = sum(r.dense_total for r in self.records)
        out["reduction"] = (out["dense_macs_total"] / out["macs_total"]
                            if out["macs_total"] else math.inf)
        out["update_reduction"] = (out["dense_macs_update"] / out["macs_update"]
                                   if out["macs_update"] else math.inf)
        n = len(self.records)
        out["active_fraction"] = sum(r.active_fraction for r in self.records) / n
        out["j_density"] = sum(r.j_density for r in self.records) / n
        out["m_bytes"] = max(r.m_bytes for r in self.records)
        dens = [r.m_density for r in self.records if r.m_density is not None]
        out["m_density"] = sum(dens) / len(dens) if dens else float("nan")
        return out

    def to_list(self) -> list[dict]:
        return [asdict(r) for r in self.records]


def zero_macs() -> dict[str, int]:
    return dict.fromkeys(CATEGORIES, 0)


def dense_step_macs(hidden: int, num_columns: int, num_plain_columns: int,
                    num_threshold_columns: int, batch: int) -> dict[str, int]:
    """MACs of one :class:`DenseRTRL` step (gradient excluded), batch ``batch``.

    ``num_columns`` = ``p``; plain columns have a one-row immediate term, threshold columns a
    full ``(H,)`` column.
    """
    h = hidden
    return {
        "jacobian": batch * (3 * h * h + h * h + h),
        "immediate": batch * (num_plain_columns + num_threshold_columns * (h + 1)),
        "update": batch * (h * h * num_columns + h * num_columns),
        "gradient": 0,
    }


def dense_gradient_macs(hidden: int, num_columns: int, num_threshold_columns: int,
                        batch: int) -> int:
    """MACs of one dense gradient contraction: ``(g * a) @ M`` plus the threshold term."""
    return batch * (hidden + hidden * num_columns + 2 * num_threshold_columns)
