"""``make demo``: the thesis end to end on Penn Treebank.

1. Train the ``ptb-demo`` EGRU language model (2 x 200 units, 3000 steps), evaluate it on
   the test set at batch 1 and
   print test perplexity, activity sparsity per layer, dense vs effective MACs per token.
2. Prune its recurrent weights (16x1 blocks, or 8x1 where 16 does not divide the layer sizes
   as for ptb-demo's 200 units; iterative, 2 rounds to 80%) with brief
   fine-tuning after each round (``dualsparse prune``).
3. Run the pruned model through the event-driven CPU engine and print perplexity on both
   paths (equal), activity and weight density, the ideal speed-up from the measured MACs and
   the measured speed-up over dense PyTorch (``torch.nn.GRU`` of the same sizes).

Usage::

    python examples/demo.py [--preset ptb-demo] [--out DIR] [--quick] [train flags...]

``--quick`` trains 40 steps and tests on the first 5,000 test tokens (a smoke run of about
a minute); without it the full preset runs (training, then the whole test set; the timings
of a run on 2 idle cores are in ``docs/lm.md``). ``--preset cpu-small`` runs the earlier,
smaller demo (600 steps). Needs PTB under ``$DUALSPARSE_DATA`` (``make demo`` sets it) or in
the download cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dualsparse.apps.lm import commands
from dualsparse.apps.lm.config import LMConfig, PruneConfig
from dualsparse.apps.lm.flags import add_prune_command_flags, config_from
from dualsparse.apps.lm.prune import PruneRunConfig, prune_hooks, prune_trained
from dualsparse.cli import build_train_parser

QUICK = ["--max-steps", "40", "--eval-interval", "20", "--valid-tokens", "5000",
         "--test-tokens", "5000"]
PRUNE = ["--prune-method", "block", "--prune-target", "0.8",
         "--prune-rounds", "2", "--finalize"]


def report(result: dict) -> str:
    """The demo's summary table from a ``dualsparse train`` result dict."""
    test = result["test"]
    acc = test["accounting"]
    lines = [
        f"test perplexity: {test['ppl']:.2f}  (batch {test['batch_size']}, {test['tokens']:,} "
        f"tokens, weights: {test['weights']})",
        "",
        f"{'layer':<8}{'units':>6}{'activity sparsity':>19}{'dense MAC/token':>17}"
        f"{'effective MAC/token':>21}{'reduction':>11}",
    ]
    for r in acc["layers"]:
        lines.append(f"{r['layer']:<8}{r['hidden_size']:>6}{r['activity_sparsity']:>19.3f}"
                     f"{r['dense_macs']:>17,.0f}{r['effective_macs']:>21,.0f}"
                     f"{r['reduction']:>10.2f}x")
    lines.append(f"{'RNN':<8}{'':>6}{acc['mean_activity_sparsity']:>19.3f}"
                 f"{acc['rnn_dense_macs']:>17,.0f}{acc['rnn_effective_macs']:>21,.0f}"
                 f"{acc['rnn_reduction']:>10.2f}x")
    d = acc.get("decoder")
    if d:
        lines.append(f"{'decoder':<8}{d['output_size']:>6}{'':>19}{d['dense_macs']:>17,.0f}"
                     f"{d['effective_macs']:>21,.0f}{d['reduction']:>10.2f}x")
    lines.append("")
    lines.append("activity sparsity: fraction of zero outputs; effective MACs count only the "
                 "weight columns of nonzero inputs (event-driven cost).")
    return "\n".join(lines)


def prune_block(hidden_sizes: list[int]) -> str:
    """The tallest column block (16x1, 8x1, 4x1 or 1x1) that tiles every gate of every layer."""
    rows = next(r for r in (16, 8, 4, 1) if all(h % r == 0 for h in hidden_sizes))
    return f"{rows}x1"


def prune_and_run_engine(out: str, data_dir: str | None, fine_tune_steps: int,
                         test_tokens: int | None, block: str) -> str:
    """Steps 2 and 3 of the demo; returns the printed report."""
    from dualsparse.apps.lm.compare import compare_with_torch
    from dualsparse.data.corpora import load_corpus

    model, fine_tune, evaluate = prune_hooks(out, "best", data_dir)
    parser = argparse.ArgumentParser(prog="demo prune")
    add_prune_command_flags(parser)
    pargs = parser.parse_args(["--checkpoint", out, *PRUNE, "--prune-block", block,
                               "--fine-tune-steps",
                               str(fine_tune_steps), "--output", f"{out}/prune.json"])
    pruned = prune_trained(model, config_from(PruneConfig, pargs),
                           config_from(PruneRunConfig, pargs), fine_tune, evaluate)
    test = load_corpus("ptb", data_dir).test
    if test_tokens is not None:
        test = test[:test_tokens]
    cmp = compare_with_torch(model.eval(), test, batch_size=1)
    lines = ["validation perplexity: dense {:.2f}".format(pruned["dense"])]
    for r in pruned["rounds"]:
        lines.append(f"  round {r['round']}: weight sparsity {r['sparsity']:.3f}, pruned "
                     f"{r['metric_pruned']:.2f}, fine-tuned {r.get('metric_fine_tuned', 0):.2f}")
    lines += [
        "",
        f"test perplexity of the pruned model ({cmp['tokens']:,} tokens, batch 1): "
        f"PyTorch {cmp['ppl_torch']:.3f}, engine {cmp['ppl_engine']:.3f} "
        f"(relative difference {cmp['ppl_rel_diff']:.1e})",
        f"activity density {cmp['activity_density']:.3f} (sparsity "
        f"{1 - cmp['activity_density']:.3f}), weight density {cmp['weight_density']:.3f} "
        f"(recurrent + decoder weights)",
        f"ideal speed-up (dense / effective MACs per token, measured): "
        f"{cmp['ideal_speedup']:.2f}x with the decoder, {cmp['ideal_speedup_rnn']:.2f}x "
        f"recurrent layers only",
        f"engine: {cmp['engine_us_per_token']:.0f} us/token; dense PyTorch: "
        f"{cmp['dense_stream_us_per_token']:.0f} us/token one token per call, "
        f"{cmp['dense_seq_us_per_token']:.0f} us/token in segments "
        f"({cmp['clock']} time, {cmp['threads']} thread)",
        f"measured speed-up over dense PyTorch: {cmp['speedup_stream']:.2f}x streaming, "
        f"{cmp['speedup_seq']:.2f}x against segment-wise PyTorch "
        f"(measured/ideal {cmp['ratio_seq']:.2f})",
        f"model bytes: packed {cmp['packed_bytes']:,} vs dense {cmp['dense_bytes']:,}",
    ]
    return "\n".join(lines)


def free_folder(base: Path) -> str:
    """``base`` if it does not exist yet, else the first free ``base-2``, ``base-3``, ...:
    running the demo again never touches an earlier run."""
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--out", default=None,
                     help="run folder (default: runs/demo, or runs/demo-2, -3, ... if taken)")
    pre.add_argument("--preset", default="ptb-demo")
    pre.add_argument("--quick", action="store_true")
    known, extra = pre.parse_known_args(argv)
    if known.out is None:
        known.out = free_folder(Path("runs") / "demo")
    train_argv = ["--preset", known.preset, "--save", known.out,
                  *(QUICK if known.quick else []), *extra]
    config = LMConfig.from_namespace(build_train_parser(train_argv).parse_args(train_argv))
    print(f"dualsparse demo: EGRU language model on Penn Treebank (preset {known.preset}"
          f"{', quick' if known.quick else ''}), output in {known.out}", flush=True)
    t0 = time.perf_counter()
    result = commands.train(config)
    wall = time.perf_counter() - t0
    print("\n=== report ===")
    print(report(result))
    print(f"wall time: {wall:.0f} s (training {result['train']['train_seconds']:.0f} s, "
          f"test {result['test']['seconds']:.0f} s); {result['parameters']:,} parameters")
    block = prune_block(config.model.hidden_sizes)
    print(f"\n=== pruning ({block} blocks, 2 rounds to 80%) and the event-driven engine ===",
          flush=True)
    t0 = time.perf_counter()
    text = prune_and_run_engine(known.out, config.data.data_dir, 10 if known.quick else 100,
                                5000 if known.quick else None, block)
    print(text)
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
