"""The microcontroller comparison of one trained eGRU and one trained GRU on the same Cortex-M0
image setup (``qemu-system-arm -M microbit``), written to one results JSON.

``python examples/kws_m0.py --egru RUN --gru RUN --out docs/results/kws/m0_random_s0.json``

* deployed 3-bit eGRU: the M0 classifies the whole test split; its logits, states and classes
  must equal the integer reference's (:mod:`dualsparse.embedded.reference`) bit for bit, and the
  M0 accuracy is reported next to the reference's;
* int8/Q15 GRU (:class:`~dualsparse.embedded.gru.IntGRU`, from the float GRU): the same, against
  its integer reference;
* float GRU (float32, soft-float on the M0): a seeded sample of ``--float-clips`` test clips,
  compared with the float model (soft-float inference is slow to emulate);
* for each: flash and RAM of the model (image minus a driver-only image, ``arm-none-eabi-size``),
  its weight bytes (``nm -S``), and for the first ``--profile-clips`` test clips the
  instructions per inference, their mix and a Cortex-M0+ cycle estimate
  (:mod:`dualsparse.embedded.m0_profile`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dualsparse.apps.kws.table import parse_dense_shift, parse_sizes
from dualsparse.atomic import atomic_write_json
from dualsparse.data.audio import FrontEnd, load_fsdd, split_fsdd
from dualsparse.embedded import cortex_m0 as m0
from dualsparse.embedded.emit import CModel
from dualsparse.embedded.gru import FloatGRU, IntGRU
from dualsparse.embedded.m0_profile import M0PLUS_CYCLES, profile_m0
from dualsparse.embedded.quant import to_q15
from dualsparse.embedded.reference import deploy
from dualsparse.models.egru_embedded import KWSNet
from dualsparse.train.checkpoint import load_weights
from dualsparse.validation import check_int
from dualsparse.version import __version__

_SAME = ("split", "seed", "frontend", "test_speakers")


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], KWSNet]:
    """A KWS run's ``config.json`` and its ``best`` model (a run saved before ``--dense``
    existed has no dense layers, one saved before ``--dense-shift`` unshifted ones)."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}: no config.json (not a `dualsparse train --task kws` run)")
    cfg = json.loads((run / "config.json").read_text())
    fe = FrontEnd(**cfg["frontend"])
    hidden = parse_sizes("hidden", cfg["hidden"])
    dense = parse_sizes("dense", cfg.get("dense", ""), allow_empty=True)
    net = KWSNet(cfg["model"], fe.n_features, hidden, 10,
                 quant_bits=cfg["bits"], zero_rule=cfg["zero_rule"],
                 logit_gain=cfg.get("logit_gain", 4.0), dense_sizes=dense,
                 dense_shifts=parse_dense_shift(cfg.get("dense_shift"), cfg["model"], hidden,
                                                dense))
    load_weights(run, "best", net)
    return cfg, net


def _widths(cfg: dict[str, Any]) -> dict[str, list[int]]:
    """Hidden and dense sizes of a run (none dense for runs saved before ``--dense``)."""
    return {"hidden": list(parse_sizes("hidden", cfg["hidden"])),
            "dense": list(parse_sizes("dense", cfg.get("dense", ""), allow_empty=True))}


def _tool_version(tool: str) -> str:
    tools = m0.m0_tools()
    assert tools is not None
    out = subprocess.run([tools[tool], "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "?"


def measure(model: CModel, prefix: str, x: np.ndarray, x_profile: np.ndarray, work: Path,
            opt: str) -> tuple[dict[str, Any], tuple[np.ndarray, list[np.ndarray], np.ndarray]]:
    """Sizes, the M0 outputs on ``x`` and the profile on ``x_profile`` of one model."""
    elf = m0.build_m0(model, work / prefix, prefix, opt=opt, max_t=x.shape[1])
    empty = m0.build_m0(model, work / f"{prefix}_empty", prefix, with_model=False, opt=opt,
                        max_t=x.shape[1])
    s_full, s_empty = m0.m0_size(elf), m0.m0_size(empty)
    weights = sum(v for k, v in m0.symbol_sizes(elf, prefix).items()
                  if k.startswith((f"{prefix}_w", f"{prefix}_b", f"{prefix}_readout",
                                   f"{prefix}_dense_w", f"{prefix}_dense_b")))
    out = m0.run_m0(elf, model, x, timeout=3600)
    prof = profile_m0(elf, model, x_profile, timeout=3600)
    res = {"image": s_full, "driver_only_image": s_empty,
           "model_flash": s_full["flash"] - s_empty["flash"],
           "model_ram": s_full["ram"] - s_empty["ram"], "weight_bytes": weights,
           "model_bytes": model.model_bytes(), "profile": prof,
           "instructions": float(np.mean([p["instructions"] for p in prof])),
           "cycles_m0plus": float(np.mean([p["cycles_m0plus"] for p in prof]))}
    return res, out


def _exact(out, ref) -> bool:
    logits, hs, _ = out
    return bool(np.array_equal(logits, ref[0])
                and all(np.array_equal(a, b) for a, b in zip(hs, ref[1], strict=True)))


def report(egru_run: str, gru_run: str, opt: str = "-Os", profile_clips: int = 1,
           float_clips: int = 30, sample_seed: int = 0) -> dict[str, Any]:
    """Run the comparison (see the module docstring) and return the results dict."""
    check_int("--profile-clips", profile_clips, low=1)
    check_int("--float-clips", float_clips, low=1)
    cfg_e, net_e = load_run(egru_run)
    cfg_g, net_g = load_run(gru_run)
    if cfg_e["model"] not in ("egru", "egru-q") or cfg_g["model"] != "gru":
        raise ValueError(f"--egru must be an egru/egru-q run and --gru a gru run, got "
                         f"{cfg_e['model']!r} and {cfg_g['model']!r}")
    diff = [k for k in _SAME if cfg_e.get(k) != cfg_g.get(k)]
    widths_e, widths_g = _widths(cfg_e), _widths(cfg_g)
    diff += [k for k in widths_e if widths_e[k] != widths_g[k]]
    if diff:
        raise ValueError(f"--egru and --gru runs differ in {diff}")
    fe = FrontEnd(**cfg_e["frontend"])
    data = load_fsdd(fe, data_dir=cfg_e.get("data"))
    spk = tuple(s for s in cfg_e["test_speakers"].split(",") if s)
    test = split_fsdd(data, cfg_e["split"], test_speakers=spk)["test"]
    x, y = to_q15(data.x[test]), data.y[test]
    xp = x[:profile_clips]
    egru, qgru, fgru = deploy(net_e, bits=cfg_e["bits"]), IntGRU.from_net(net_g), \
        FloatGRU.from_net(net_g)
    sample = np.sort(np.random.default_rng(sample_seed).choice(len(test), min(float_clips,
                                                                             len(test)), False))
    res: dict[str, Any] = {"split": cfg_e["split"], "seed": cfg_e["seed"], "n_test": len(test),
                           "egru_run": str(egru_run), "gru_run": str(gru_run), "opt": opt,
                           "profile_clips": profile_clips, "version": __version__,
                           **widths_e,
                           "cycle_table_m0plus": M0PLUS_CYCLES,
                           "gcc": _tool_version("gcc"), "qemu": _tool_version("qemu")}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for name, model, prefix, xs in (("egru_3bit", egru, "egru", x), ("gru_int8", qgru,
                                        "qgru", x), ("gru_float", fgru, "fgru", x[sample])):
            r, out = measure(model, prefix, xs, xp, work, opt)
            ref = model.run(xs)
            ys = y if xs is x else y[sample]
            ref_acc = float((np.argmax(ref[0], axis=1) == ys).mean())
            r.update(n_m0=len(xs), accuracy_reference=ref_acc,
                     accuracy_m0=float((out[2] == ys).mean()))
            if getattr(model, "is_float", False):
                r["max_abs_logit_diff_vs_torch"] = float(np.abs(out[0] - ref[0]).max())
                r["m0_class_equals_torch"] = bool(np.array_equal(out[2], np.argmax(ref[0], 1)))
                r["sample_seed"] = sample_seed
            else:
                r["m0_bit_exact"] = _exact(out, ref)
            res[name] = r
            print(f"[kws-m0] {name}: acc ref {ref_acc:.4f} m0 {r['accuracy_m0']:.4f} "
                  f"({len(xs)} clips) instr {r['instructions']:.0f} flash {r['model_flash']}",
                  flush=True)
    e, gi, gf = res["egru_3bit"], res["gru_int8"], res["gru_float"]
    res["ratios"] = {
        "gru_float_over_egru_instructions": gf["instructions"] / e["instructions"],
        "gru_float_over_egru_cycles": gf["cycles_m0plus"] / e["cycles_m0plus"],
        "gru_int8_over_egru_cycles": gi["cycles_m0plus"] / e["cycles_m0plus"],
        "gru_float_over_egru_model_flash": gf["model_flash"] / e["model_flash"],
        "gru_float_over_egru_weight_bytes": gf["weight_bytes"] / e["weight_bytes"],
        "gru_int8_over_egru_weight_bytes": gi["weight_bytes"] / e["weight_bytes"]}
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--egru", required=True, help="egru-q run folder (dualsparse train --task kws)")
    p.add_argument("--gru", required=True, help="gru run folder of the same split and seed")
    p.add_argument("--out", required=True, help="results JSON to write (must not exist)")
    p.add_argument("--opt", default="-Os", choices=("-Os", "-O2"))
    p.add_argument("--profile-clips", type=int, default=1)
    p.add_argument("--float-clips", type=int, default=30)
    p.add_argument("--sample-seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        raise ValueError(f"--out {out} exists; results are never overwritten")
    res = report(a.egru, a.gru, a.opt, a.profile_clips, a.float_clips, a.sample_seed)
    atomic_write_json(out, res)
    print(json.dumps(res["ratios"], indent=2))
    return res


__all__ = ["load_run", "main", "measure", "report"]
