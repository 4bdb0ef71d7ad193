"""The result types of :mod:`dualsparse.accounting`: per-layer, decoder and whole-model
reports of measured activity and MACs (per token), with totals, a JSON form and a table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class LayerReport:
    """Measured statistics of one recurrent layer (MACs are per token)."""

    layer: int
    input_size: int
    hidden_size: int
    num_gates: int
    tokens: int
    activity: float
    activity_sparsity: float
    input_density: float
    weight_density_ih: float
    weight_density_hh: float
    dense_macs: float
    effective_macs: float
    reduction: float
    backward_sparsity: float | None = None
    per_neuron_activity: list[float] = field(default_factory=list)
    activity_histogram: dict = field(default_factory=dict)
    distance_histogram: dict | None = None
    carried_distance_histogram: dict | None = None


@dataclass
class DecoderReport:
    """Measured MACs of the output projection (per token)."""

    input_size: int
    output_size: int
    tokens: int
    input_density: float
    weight_density: float
    dense_macs: float
    effective_macs: float
    reduction: float


@dataclass
class AccountingReport:
    """Per-layer reports plus totals. ``rnn_*`` totals exclude the decoder."""

    layers: list[LayerReport]
    decoder: DecoderReport | None = None

    @property
    def rnn_dense_macs(self) -> float:
        return sum(r.dense_macs for r in self.layers)

    @property
    def rnn_effective_macs(self) -> float:
        return sum(r.effective_macs for r in self.layers)

    @property
    def rnn_reduction(self) -> float:
        return ratio(self.rnn_dense_macs, self.rnn_effective_macs)

    @property
    def total_dense_macs(self) -> float:
        return self.rnn_dense_macs + (self.decoder.dense_macs if self.decoder else 0.0)

    @property
    def total_effective_macs(self) -> float:
        return self.rnn_effective_macs + (self.decoder.effective_macs if self.decoder else 0.0)

    @property
    def mean_activity_sparsity(self) -> float:
        """Activity sparsity over all units of all layers (weighted by layer size)."""
        units = sum(r.hidden_size for r in self.layers)
        return sum(r.activity_sparsity * r.hidden_size for r in self.layers) / units

    def to_dict(self) -> dict:
        return {
            "layers": [asdict(r) for r in self.layers],
            "decoder": asdict(self.decoder) if self.decoder else None,
            "rnn_dense_macs": self.rnn_dense_macs,
            "rnn_effective_macs": self.rnn_effective_macs,
            "rnn_reduction": self.rnn_reduction,
            "mean_activity_sparsity": self.mean_activity_sparsity,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        """A plain-text table: one row per layer, then the decoder and the RNN total."""
        head = (f"{'layer':>7} {'in x hid':>11} {'act.sp.':>8} {'bwd.sp.':>8} {'w.dens':>7} "
                f"{'dense MAC/tok':>14} {'eff. MAC/tok':>13} {'reduction':>9}")
        rows = [head, "-" * len(head)]
        for r in self.layers:
            wd = _weight_density(r)
            bwd = "-" if r.backward_sparsity is None else f"{r.backward_sparsity:.3f}"
            rows.append(f"{r.layer:>7} {f'{r.input_size}x{r.hidden_size}':>11} "
                        f"{r.activity_sparsity:>8.3f} {bwd:>8} {wd:>7.3f} {r.dense_macs:>14,.0f} "
                        f"{r.effective_macs:>13,.0f} {r.reduction:>8.2f}x")
        rows.append(f"{'rnn':>7} {'':>11} {self.mean_activity_sparsity:>8.3f} {'':>8} {'':>7} "
                    f"{self.rnn_dense_macs:>14,.0f} {self.rnn_effective_macs:>13,.0f} "
                    f"{self.rnn_reduction:>8.2f}x")
        if self.decoder:
            d = self.decoder
            rows.append(f"{'decoder':>7} {f'{d.input_size}x{d.output_size}':>11} {'':>8} "
                        f"{'':>8} {d.weight_density:>7.3f} {d.dense_macs:>14,.0f} "
                        f"{d.effective_macs:>13,.0f} {d.reduction:>8.2f}x")
        return "\n".join(rows)


def ratio(dense: float, effective: float) -> float:
    return float("inf") if effective == 0 else dense / effective


def _weight_density(r: LayerReport) -> float:
    i, h = r.input_size, r.hidden_size
    return (r.weight_density_ih * i + r.weight_density_hh * h) / (i + h)


__all__ = ["AccountingReport", "DecoderReport", "LayerReport", "ratio"]
