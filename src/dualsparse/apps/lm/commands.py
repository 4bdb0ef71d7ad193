"""The LM app's commands on configs: ``dualsparse train --task lm``, ``dualsparse eval`` and
``dualsparse prune`` (the flags that fill the configs are in :mod:`dualsparse.apps.lm.flags`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dualsparse.accounting import ActivityMeter
from dualsparse.apps.lm.config import LMConfig, PruneConfig, limit_tokens
from dualsparse.apps.lm.evaluate import evaluate_lm, test_report
from dualsparse.apps.lm.memory import check_training_memory
from dualsparse.apps.lm.prune import PruneRunConfig, prune_hooks, prune_trained, pruner_for_training
from dualsparse.apps.lm.runs import load_best_weights, load_model, pruned_run_saver, run_config
from dualsparse.apps.lm.task import LMTask
from dualsparse.data.corpora import load_corpus
from dualsparse.engine.lm import evaluate_lm_sparse
from dualsparse.models.lm import count_parameters
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.device import resolve_device
from dualsparse.train.distributed import DistInfo, cleanup, init_distributed
from dualsparse.train.loop import Trainer, set_seed
from dualsparse.train.run_dir import RunLock, check_output_file, clear_run, prepare_run_dir


@dataclass
class EvalConfig:
    """``dualsparse eval``: checkpoint ``tag`` of run folder ``checkpoint`` on ``split`` at
    ``batch_size`` (first ``tokens`` tokens; ``data_dir`` overrides the run's), written to
    ``out`` (default ``<checkpoint>/eval-<tag>-<split>.json``, ``...-sparse.json`` for the
    sparse engine; an existing ``out`` is refused unless ``overwrite``); ``engine``
    ``"torch"`` (with accounting) or ``"sparse"`` (the event-driven CPU engine); ``device``
    of the torch engine (``"cpu"``, ``"cuda"``, ``"cuda:N"``; None: CUDA when available)."""

    checkpoint: str
    tag: str = "best"
    split: str = "test"
    batch_size: int = 1
    data_dir: str | None = None
    tokens: int | None = None
    threads: int | None = None
    out: str | None = None
    engine: str = "torch"
    overwrite: bool = False
    device: str | None = None

    def torch_device(self) -> torch.device:
        """The device the torch engine evaluates on (checked: ``--device``)."""
        if self.engine == "sparse":
            if self.device not in (None, "cpu"):
                raise ValueError(f"--device {self.device}: the sparse engine runs on the CPU "
                                 "(leave --device out, or use --engine torch)")
            return torch.device("cpu")
        return resolve_device(self.device)

    def out_path(self) -> Path:
        """Where the result goes: ``out``, or a name of tag, split and engine in the run."""
        if self.out:
            return Path(self.out)
        engine = "" if self.engine == "torch" else f"-{self.engine}"
        return Path(self.checkpoint) / f"eval-{self.tag}-{self.split}{engine}.json"


def set_threads(threads: int | None) -> None:
    """``--threads``: torch CPU threads (None or 0 leaves torch's default)."""
    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be >= 1 (or 0 for torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def build_trainer(config: LMConfig, dist: DistInfo | None = None) -> Trainer:
    """Corpus, task, model, pruner, optimiser and trainer of ``config`` (resumed from the
    run folder with ``config.run.resume``)."""
    dist = dist or DistInfo()
    run = config.run
    set_threads(run.threads)
    set_seed(run.seed, run.deterministic)
    corpus, train, valid, test = config.data.load()
    m, columns = config.model, run.batch_size * dist.world_size
    check_training_memory(  # before the model or any segment is allocated
        len(corpus.vocab), m.emb_size, m.hidden_sizes, m.cell, run.batch_size,
        run.bptt * (2 if run.random_bptt else 1), train.numel() // columns,
        run.eval_batch_size, run.eval_bptt or run.bptt, valid.numel() // run.eval_batch_size)
    task = LMTask.from_config(run, train, valid, test, rank=dist.rank,
                              world_size=dist.world_size, device=dist.device)
    model = config.model.build(len(corpus.vocab)).to(dist.device)
    if dist.enabled:  # same initial weights everywhere (DDP broadcasts them), own dropout
        torch.manual_seed(run.seed + 1 + dist.rank)
    pruner = pruner_for_training(model, config.prune)
    cfg = run.train_config(task.steps_per_epoch)
    trainer = Trainer(model, task, cfg, pruner=pruner, dist=dist, run_config=config.to_dict())
    if run.resume:
        if not run.save:
            raise ValueError("--resume needs --save pointing at the run folder")
        trainer.resume(run.save)
        if dist.enabled and dist.rank > 0:
            # the checkpoint holds rank 0's RNG and carried state: give the other ranks
            # their own dropout stream and a fresh state (DDP resume is not bitwise)
            torch.manual_seed(run.seed + 1 + dist.rank + 1_000_003 * trainer.step)
            trainer.task.state = None
    return trainer


def train(config: LMConfig) -> dict[str, Any]:
    """``dualsparse train --task lm``: train, then test the best checkpoint at
    ``test_batch_size``; with ``run.save`` also writes ``results.json`` there."""
    run = config.run
    dist = init_distributed(run.device)
    lock = None
    try:
        if run.save and dist.is_main:  # checked before any work, held until the end
            prepare_run_dir(run.save, resume=run.resume, overwrite=run.overwrite)
            lock = RunLock(run.save).acquire()
            if run.overwrite:
                clear_run(run.save)
        trainer = build_trainer(config, dist)
        model = trainer.model
        if dist.is_main:
            m = config.model
            print(f"model: {m.cell} emb {m.emb_size} hidden {m.hidden_sizes}, "
                  f"{count_parameters(model):,} parameters "
                  f"({count_parameters(model, exclude_embedding=True):,} in the RNN); "
                  f"{trainer.cfg.max_steps} steps, {trainer.task.steps_per_epoch} per epoch",
                  flush=True)
        summary = trainer.fit()
        result: dict[str, Any] = {"train": summary, "parameters": count_parameters(model),
                                  "rnn_parameters": count_parameters(model, True)}
        if summary["finished"] and dist.is_main:
            used = load_best_weights(model, run.save) if run.save else "final"
            t0 = time.perf_counter()
            test = test_report(model, trainer.task)
            result["test"] = {k: v for k, v in test.items() if k != "table"}
            result["test"].update(weights=used, batch_size=run.test_batch_size,
                                  seconds=time.perf_counter() - t0)
            print(f"test ({used}, batch {run.test_batch_size}): loss {test['loss']:.4f} "
                  f"ppl {test['ppl']:.2f}\n{test['table']}", flush=True)
        if run.save and dist.is_main:
            ckpt.atomic_write_json(Path(run.save) / "results.json",
                                   {"config": trainer.run_config, **result})
        return result
    finally:
        if lock is not None:
            lock.release()
        cleanup(dist)


def evaluate_checkpoint(ev: EvalConfig) -> dict[str, Any]:
    """``dualsparse eval``: perplexity and accounting of a saved model on valid or test."""
    set_threads(ev.threads)
    device = ev.torch_device()
    path = ev.out_path()
    check_output_file(path, "--out", overwrite=ev.overwrite or not ev.out)
    model, meta = load_model(ev.checkpoint, ev.tag)
    config = run_config(meta)
    if ev.data_dir:
        config.data.data_dir = ev.data_dir
    corpus = load_corpus(config.data.corpus, config.data.data_dir)
    if len(corpus.vocab) != model.vocab_size:
        raise ValueError(f"the checkpoint's vocabulary has {model.vocab_size} words, corpus "
                         f"{config.data.corpus!r} has {len(corpus.vocab)}")
    data = limit_tokens(corpus.valid if ev.split == "valid" else corpus.test, ev.tokens,
                        "--tokens")
    head = {"checkpoint": str(ev.checkpoint), "tag": ev.tag, "step": meta["step"],
            "split": ev.split, "batch_size": ev.batch_size}
    if ev.engine == "sparse":
        return _evaluate_sparse(ev, model, config, data, path, head)
    model.to(device)
    meter = ActivityMeter(None, decoder=model.decoder)
    bptt = config.run.eval_bptt or config.run.bptt
    res = evaluate_lm(model, data, ev.batch_size, bptt, config.run.carry, meter)
    report = meter.report()
    out = {**head, **res, "engine": "torch", "device": str(device),
           "accounting": report.to_dict()}
    ckpt.atomic_write_json(path, out)
    print(f"{ev.split} ({ev.tag}, step {meta['step']}, batch {ev.batch_size}): "
          f"loss {res['loss']:.4f} ppl {res['ppl']:.2f}\n{report.format_table()}\n"
          f"written to {path}")
    return out


def _evaluate_sparse(ev: EvalConfig, model: Any, config: LMConfig, data: torch.Tensor,
                     path: Path, head: dict[str, Any]) -> dict[str, Any]:
    """``dualsparse eval --engine sparse``: perplexity through the event-driven engine.

    The engine carries the full state over the whole split, so this equals the PyTorch path
    with ``carry="full"`` (the default for every preset except the paper EGRU ones).
    """
    if config.run.carry != "full":
        print("note: this run carries only y between segments in PyTorch evaluation; the "
              "engine carries the full state (y and c)")
    res = evaluate_lm_sparse(model.eval(), data, ev.batch_size, threads=ev.threads or 1)
    out = {**head, "engine": "sparse", **res}
    ckpt.atomic_write_json(path, out)
    print(f"{ev.split} ({ev.tag}, step {head['step']}, batch {ev.batch_size}, sparse "
          f"engine): loss {res['loss']:.4f} ppl {res['ppl']:.2f}, activity "
          f"{res['activity']:.3f}, {1e6 * res['seconds_per_token']:.0f} us/token\n"
          f"written to {path}")
    return out


def check_prune_outputs(opts: PruneRunConfig) -> None:
    """Before any work: ``--save`` must be a new folder (never the source run, never a folder
    holding a run) that can be written, ``--output`` a new file that can be written."""
    if opts.save:
        save = Path(opts.save)
        if save.resolve() == Path(str(opts.checkpoint)).resolve():
            raise ValueError(f"--save {save} is the source run (--checkpoint): it would replace "
                             "the trained model; choose a new folder")
        prepare_run_dir(save, resume=False, overwrite=False)
    if opts.output:
        check_output_file(opts.output, "--output")


def prune_checkpoint(cfg: PruneConfig, opts: PruneRunConfig) -> dict[str, Any]:
    """``dualsparse prune``: prune the trained run ``opts.checkpoint`` in rounds with
    fine-tuning; ``opts.save`` writes a run folder that ``eval`` and ``prune`` read."""
    if opts.checkpoint is None:
        raise ValueError("--checkpoint is required")
    check_prune_outputs(opts)
    model, fine_tune, evaluate = prune_hooks(opts.checkpoint, opts.tag, opts.data_dir,
                                             opts.fine_tune_lr, opts.fine_tune_lr_schedule,
                                             opts.fine_tune_optimizer)
    return prune_trained(model, cfg, opts, fine_tune, evaluate,
                         save=pruned_run_saver(opts.checkpoint, opts.tag))


__all__ = ["EvalConfig", "build_trainer", "check_prune_outputs", "evaluate_checkpoint",
           "prune_checkpoint", "set_threads", "train"]
