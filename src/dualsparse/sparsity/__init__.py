"""Weight sparsity: masks, magnitude/block scoring, schedules, group lasso, the Pruner."""

from dualsparse.sparsity.group_lasso import block_norms, group_lasso
from dualsparse.sparsity.masks import MaskSet, strip_masks
from dualsparse.sparsity.pruner import Pruner
from dualsparse.sparsity.schedules import (
    AGPSchedule,
    IterativeSchedule,
    NarangSchedule,
    block_theta,
    narang_q,
    narang_theta,
    narang_threshold,
    schedule_from_dict,
)
from dualsparse.sparsity.scoring import STATS, Scoring, block_scores, parse_block
from dualsparse.sparsity.spec import PruningSpec, TensorSpec

__all__ = [
    "Pruner", "PruningSpec", "TensorSpec", "Scoring", "MaskSet", "strip_masks",
    "IterativeSchedule", "AGPSchedule", "NarangSchedule", "schedule_from_dict",
    "narang_theta", "narang_threshold", "narang_q", "block_theta",
    "block_scores", "parse_block", "STATS", "block_norms", "group_lasso",
]
