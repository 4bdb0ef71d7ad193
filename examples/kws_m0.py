"""Deploy a trained eGRU KWS model to a Cortex-M0 image (qemu -M microbit) and measure it.

Usage: python examples/kws_m0.py RUN_DIR [N_SEQ] [-Os|-O2]
(RUN_DIR from ``dualsparse train --task kws --out RUN_DIR``; its ``best`` checkpoint is used)

Prints: bit-exactness of the M0 outputs vs the integer reference on N_SEQ test clips, flash/RAM
(arm-none-eabi-size, with and without the model), the model's symbol sizes, and instructions
per inference (qemu -singlestep -d exec,nochain, counted between marker calls).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from dualsparse.data.audio import FrontEnd, load_fsdd, split_fsdd
from dualsparse.embedded import cortex_m0 as m0
from dualsparse.embedded.quant import to_q15
from dualsparse.embedded.reference import deploy
from dualsparse.models.egru_embedded import KWSNet
from dualsparse.train.checkpoint import load_weights


def main(run_dir: str, n_seq: int = 3, opt: str = "-Os") -> dict:
    run = Path(run_dir)
    cfg = json.loads((run / "config.json").read_text())
    fe = FrontEnd(**cfg["frontend"])
    net = KWSNet(cfg["model"], fe.n_features, [int(h) for h in cfg["hidden"].split(",")], 10,
                 quant_bits=cfg["bits"], zero_rule=cfg["zero_rule"])
    load_weights(run, "best", net)
    model = deploy(net, bits=cfg["bits"])
    data = load_fsdd(fe, data_dir=cfg.get("data"))
    test = split_fsdd(data, cfg["split"])["test"][:n_seq]
    x = to_q15(data.x[test])
    with tempfile.TemporaryDirectory() as d:
        elf = m0.build_m0(model, x, Path(d) / "m", opt=opt)
        empty = m0.build_m0(model, x, Path(d) / "e", with_model=False, opt=opt)
        logits, hs, cls = m0.run_m0(elf, model, timeout=300)
        ref, ref_hs = model.run(x)
        exact = bool(np.array_equal(logits, ref)
                     and all(np.array_equal(a, b) for a, b in zip(hs, ref_hs, strict=True)))
        s_full, s_empty = m0.m0_size(elf), m0.m0_size(empty)
        syms = m0.symbol_sizes(elf)
        counts = m0.count_instructions_m0(elf)
    res = {
        "bit_exact": exact, "opt": opt, "n_seq": len(test), "T": int(x.shape[1]),
        "size_full": s_full, "size_driver_only": s_empty,
        "model_flash": s_full["flash"] - s_empty["flash"],
        "model_ram": s_full["ram"] - s_empty["ram"],
        "weights_bytes": sum(v for k, v in syms.items() if k.startswith("egru_w")
                             or k.startswith("egru_b") or k.startswith("egru_readout")),
        "deployed_bytes": model.model_bytes(), "instructions_per_inference": counts,
        "labels": data.y[test].tolist(), "m0_classes": cls.tolist(),
    }
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3,
         sys.argv[3] if len(sys.argv) > 3 else "-Os")
