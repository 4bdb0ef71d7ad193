"""Pruner: a spec, a schedule and a scoring rule applied to a model's weights.

Trainer contract (all a trainer needs)::

    pruner = Pruner(model, spec, schedule, scoring)        # or Pruner.from_config(model, cfg)
    pruner.attach_optimizer(optimizer)
    for global_step in range(n):                           # any increasing step counter
        loss = task_loss
        penalty = pruner.penalty()                         # group lasso, or None
        if penalty is not None:
            loss = loss + penalty
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        pruner.step(global_step)                           # True if the masks changed
    checkpoint = {"model": model.state_dict(), "pruner": pruner.state_dict()}

``global_step`` is the trainer's counter for the optimiser step just taken (the dualsparse
``Trainer`` passes its 0-based index; a count from 1 works the same way): the masks of a
schedule update point ``u`` are computed by the first call with ``global_step >= u``.

``state_dict()`` is JSON-able (spec, schedule, scoring, schedule position, Narang's q); the
masks themselves are buffers in ``model.state_dict()``. To resume or load a pruned
checkpoint: build the fresh model, ``Pruner.from_config(model, checkpoint["pruner"])`` (this
adds the mask buffers), then ``model.load_state_dict(checkpoint["model"])``.

Masks only ever shrink: a pruned weight or block stays pruned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dualsparse.sparsity.group_lasso import group_lasso
from dualsparse.sparsity.masks import MaskSet
from dualsparse.sparsity.report import format_report, tensor_report
from dualsparse.sparsity.schedules import (
    NarangSchedule,
    Schedule,
    SparsitySchedule,
    narang_q,
    schedule_from_dict,
)
from dualsparse.sparsity.scoring import (
    Scoring,
    block_scores,
    blocks_alive,
    expand_blocks,
    select_lowest,
)
from dualsparse.sparsity.spec import PruningSpec, ResolvedTensor
from dualsparse.validation import check_int, check_real

FORMAT = "dualsparse-pruner/1"

# (tensor, first row, stop row) pieces ranked together against one final target
_Unit = tuple[list[tuple[ResolvedTensor, int, int]], float]


class Pruner:
    """Prune the tensors named by ``spec`` following ``schedule``, ranking with ``scoring``.

    Args:
        model: the module to prune (mask buffers and hooks are added to it).
        spec: :class:`PruningSpec` (or its dict form).
        schedule: when and how far to prune; None means masks change only through
            :meth:`update_masks`/:meth:`prune_to` (e.g. fine-tuning a pruned checkpoint).
        scoring: block statistic and scope (default: max, layer-wise).
        group_lasso: strength ``lambda`` of the group lasso penalty over the same blocks
            (0 = none).
        q_percentile: percentile of block scores used as Narang's ``q`` for tensors whose
            spec entry gives none (taken from the weights at construction).
    """

    def __init__(self, model: nn.Module, spec: PruningSpec | dict,
                 schedule: Schedule | None = None, scoring: Scoring | None = None,
                 group_lasso: float = 0.0, q_percentile: float = 90.0) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        self.spec = spec if isinstance(spec, PruningSpec) else PruningSpec.from_dict(spec)
        if schedule is not None and not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule or None, got {type(schedule).__name__}")
        self.schedule = schedule
        self.scoring = scoring or Scoring()
        self.group_lasso = check_real("group_lasso", group_lasso, low=0.0)
        self.q_percentile = check_real("q_percentile", q_percentile, low=0.0, high=100.0,
                                       low_open=True)
        self.model = model
        self.tensors = self.spec.resolve(model)
        if self.scoring.scope == "global":
            own = [t.name for t in self.tensors if t.explicit_sparsity]
            if own:
                raise ValueError(f"global scope ranks all tensors against the spec's one "
                                 f"sparsity; entries {own} set their own sparsity")
        self.masks = MaskSet(model)
        try:
            for t in self.tensors:
                self.masks.add(t.name)
        except Exception:
            self.masks.remove()
            raise
        self.q: dict[str, float] = {}
        if isinstance(schedule, NarangSchedule):
            for t in self.tensors:
                q = t.q if t.q is not None else narang_q(self.masks.weight(t.name),
                                                          self.q_percentile, t.block,
                                                          self.scoring.stat)
                if not q > 0:
                    self.masks.remove()
                    raise ValueError(f"Narang's q of {t.name!r} is {q}; give a positive q in the "
                                     f"spec (are its weights all zero?)")
                self.q[t.name] = float(q)
        self.last_update: int | None = None
        self._frozen = False
        self._finalized = False

    # ------------------------------------------------------------------ trainer contract
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero this optimiser's moments of pruned entries on every :meth:`step`."""
        self._check_live()
        self.masks.attach_optimizer(optimizer)

    def step(self, global_step: int) -> bool:
        """Call after every ``optimizer.step()``; ``global_step``: the trainer's step counter.

        Re-applies the masks in place, zeroes the attached optimisers' state of pruned
        entries, and updates the masks when the schedule has an update point in
        ``(last update, global_step]``. Returns True if a mask changed.
        """
        self._check_live()
        check_int("global_step", global_step, low=0)
        self.masks.apply()
        if self.schedule is None or self._frozen:
            return False
        point = self.schedule.last_update_step(global_step)
        if point is None or (self.last_update is not None and point <= self.last_update):
            return False
        return self.update_masks(point)

    def penalty(self) -> torch.Tensor | None:
        """Group lasso term to add to the loss (a 0-d tensor), or None when not used."""
        self._check_live()
        if self.group_lasso == 0.0:
            return None
        return group_lasso(((self.masks.weight(t.name), t.block) for t in self.tensors),
                           self.group_lasso)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able config and position (the masks live in the model's state_dict)."""
        return {**self.config(), "last_update": self.last_update, "q": dict(self.q)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule position (and Narang's q) from :meth:`state_dict`; the config
        must match this pruner's."""
        self._check_live()
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"not a pruner state (expected format {FORMAT!r}, got "
                             f"{state.get('format') if isinstance(state, dict) else state!r})")
        mine = self.config()
        for key in ("spec", "schedule", "scoring", "group_lasso", "q_percentile"):
            if state.get(key) != mine[key]:
                raise ValueError(f"pruner checkpoint does not match this pruner: {key} is "
                                 f"{state.get(key)!r} in the checkpoint, {mine[key]!r} here")
        last = state.get("last_update")
        if last is not None:
            check_int("last_update in the pruner checkpoint", last)
        q = state.get("q") or {}
        if set(q) - {t.name for t in self.tensors}:
            raise ValueError(f"pruner checkpoint has q for unknown tensors "
                             f"{sorted(set(q) - {t.name for t in self.tensors})}")
        self.last_update = last
        self.q.update({k: float(v) for k, v in q.items()})

    @classmethod
    def from_config(cls, model: nn.Module, config: dict[str, Any]) -> Pruner:
        """Build a pruner from :meth:`config` or :meth:`state_dict` output (then the schedule
        position is restored too)."""
        if not isinstance(config, dict) or "spec" not in config:
            raise ValueError("a pruner config needs at least a 'spec'")
        pruner = cls(model, PruningSpec.from_dict(config["spec"]),
                     schedule_from_dict(config.get("schedule")),
                     Scoring.from_dict(config.get("scoring", {})),
                     config.get("group_lasso", 0.0), config.get("q_percentile", 90.0))
        if "last_update" in config:
            pruner.load_state_dict({"format": FORMAT, **config})
        return pruner

    def report(self, bins: int = 10) -> list[dict[str, Any]]:
        """Per tensor: sparsity, per-gate sparsity, nonzero blocks, fan-out histogram, target."""
        self._check_live()
        rows = []
        for t in self.tensors:
            row = tensor_report(t.name, self.masks.mask(t.name), t.block, t.gates, bins)
            row["target"] = dict(t.sparsity) if isinstance(t.sparsity, dict) else t.sparsity
            rows.append(row)
        return rows

    def format_report(self) -> str:
        return format_report(self.report())

    # ------------------------------------------------------------------ other API
    def config(self) -> dict[str, Any]:
        """JSON-able construction arguments."""
        return {"format": FORMAT, "spec": self.spec.to_dict(),
                "schedule": None if self.schedule is None else self.schedule.to_dict(),
                "scoring": self.scoring.to_dict(), "group_lasso": self.group_lasso,
                "q_percentile": self.q_percentile}

    def sparsity(self) -> float:
        """Fraction of pruned weights over all pruned tensors."""
        self._check_live()
        kept = sum(int(self.masks.mask(t.name).sum()) for t in self.tensors)
        return 1.0 - kept / sum(t.numel for t in self.tensors)

    @contextmanager
    def frozen(self) -> Iterator[Pruner]:
        """Within this block :meth:`step` keeps masks applied but never updates them (for
        fine-tuning between explicit pruning rounds)."""
        old, self._frozen = self._frozen, True
        try:
            yield self
        finally:
            self._frozen = old

    def update_masks(self, step: int) -> bool:
        """Recompute the masks as the schedule prescribes at ``step`` (masks only shrink);
        records ``step`` as the last update. Returns True if a mask changed."""
        self._check_live()
        if self.schedule is None:
            raise ValueError("this pruner has no schedule; use prune_to(sparsity)")
        if isinstance(self.schedule, SparsitySchedule):
            changed = self._prune_units(lambda final: self.schedule.sparsity(step, final))
        else:
            frac = self.schedule.threshold_fraction(step)
            changed = self._prune_threshold({n: q * frac for n, q in self.q.items()})
        self.last_update = step
        self.masks.zero_optimizer_state()
        return changed

    def prune_to(self, fraction: float = 1.0) -> bool:
        """Prune every unit to ``fraction`` of its final target now (1.0 = the spec's
        targets). Returns True if a mask changed."""
        self._check_live()
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
        changed = self._prune_units(lambda final: final * fraction)
        self.masks.zero_optimizer_state()
        return changed

    def finalize(self) -> dict[str, torch.Tensor]:
        """Make the zeros permanent; remove mask buffers and hooks. The model is then a plain
        model (its state_dict has a fresh model's keys). Returns ``{name: weight}``, dense with
        zeros. The pruner cannot be used afterwards."""
        self._check_live()
        weights = self.masks.remove()
        self._finalized = True
        return weights

    # ------------------------------------------------------------------ internals
    def _check_live(self) -> None:
        if self._finalized:
            raise RuntimeError("this pruner was finalized; its masks are gone")

    def _units(self) -> list[_Unit]:
        if self.scoring.scope == "global":
            return [([(t, 0, t.shape[0]) for t in self.tensors], self.spec.sparsity)]
        units: list[_Unit] = []
        for t in self.tensors:
            if isinstance(t.sparsity, dict):
                units.extend(([(t, a, b)], t.sparsity[g]) for g, a, b in t.gates)
            else:
                units.append(([(t, 0, t.shape[0])], t.sparsity))
        return units

    @torch.no_grad()
    def _prune_units(self, target_of) -> bool:
        new = {t.name: self.masks.mask(t.name).clone() for t in self.tensors}
        for pieces, final in self._units():
            s = float(target_of(final))
            scores, sizes, shapes = [], [], []
            for t, a, b in pieces:
                sc = block_scores(self.masks.weight(t.name)[a:b], t.block, self.scoring.stat)
                alive = blocks_alive(new[t.name][a:b], t.block)
                sc = sc.to(torch.float64).masked_fill(~alive, -math.inf)
                scores.append(sc.flatten())
                sizes.append(torch.full((sc.numel(),), t.block[0] * t.block[1],
                                        dtype=torch.float64, device=sc.device))
                shapes.append(sc.shape)
            total = float(sum(int(z.sum()) for z in sizes))
            prune = select_lowest(torch.cat(scores), torch.cat(sizes), s * total)
            for (t, a, b), part, shape in zip(pieces, prune.split([x.numel() for x in scores]),
                                              shapes, strict=True):
                new[t.name][a:b] = expand_blocks(~part.view(shape), t.block)
        changed = False
        for name, keep in new.items():
            changed |= self.masks.set_mask(name, keep)
        return changed

    @torch.no_grad()
    def _prune_threshold(self, thresholds: dict[str, float]) -> bool:
        changed = False
        for t in self.tensors:
            sc = block_scores(self.masks.weight(t.name), t.block, self.scoring.stat)
            alive = blocks_alive(self.masks.mask(t.name), t.block) & (sc >= thresholds[t.name])
            changed |= self.masks.set_mask(t.name, expand_blocks(alive, t.block))
        return changed
