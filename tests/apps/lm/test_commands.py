"""The ``dualsparse`` command on the LM app: presets, flags -> configs, train, eval, prune,
refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dualsparse import cli
from dualsparse.apps.lm import commands
from dualsparse.apps.lm.config import LMConfig, limit_tokens
from dualsparse.apps.lm.presets import PRESETS
from dualsparse.models.lm import count_parameters

DATA = os.environ.get("DUALSPARSE_DATA")
needs_data = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "ptb" / "train.txt").is_file()
    or not (Path(DATA) / "wikitext-2" / "train.txt").is_file(),
    reason="PTB/WikiText-2 not available under $DUALSPARSE_DATA")

TINY = ["--train-tokens", "4000", "--valid-tokens", "500", "--test-tokens", "200",
        "--emsize", "16", "--nhid", "24,16", "--batch_size", "4", "--bptt", "10",
        "--threads", "1", "--no-progress", "--no-tensorboard"]


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def _parse(argv: list[str]):
    return cli.build_train_parser(argv).parse_args(argv)


def _config(argv: list[str]) -> LMConfig:
    return LMConfig.from_namespace(_parse(argv))


def test_usage_and_unknown_command(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "eval", "prune", "sweep", "report"))
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2


def test_presets_set_defaults_and_flags_override() -> None:
    args = _parse(["--preset", "ptb-egru"])
    assert (args.hidden_sizes, args.emb_size, args.beta1, args.lr_thr, args.random_bptt) == (
        [1350, 1350, 750], 750, 0.0, 0.0, True)
    args = _parse(["--preset", "ptb-egru", "--lr", "0.5", "--nhid", "10,20"])
    assert args.lr == 0.5 and args.hidden_sizes == [10, 20] and args.dropconnect == 0.7
    awd = _config(["--preset", "wt2-lstm"])
    assert (awd.model.cell, awd.run.optimizer, awd.run.batch_size, awd.data.corpus) == (
        "LSTM", "sgd", 80, "wikitext-2")
    with pytest.raises(SystemExit):
        _parse(["--preset", "nope"])


@pytest.mark.parametrize("name,vocab,total,rnn", [
    ("ptb-egru", 10000, 31.7e6, 24.2e6),   # parameter counts given in the EGRU notes
    ("ptb-lstm", 10000, 24.2e6, None),     # AWD-LSTM: 24M on PTB
    ("wt2-egru", 33278, 49.2e6, 24.2e6),
    ("wt2-lstm", 33278, 33.6e6, None),     # AWD-LSTM: 33M on WT2
])
def test_paper_preset_models_have_the_papers_sizes(name, vocab, total, rnn) -> None:
    model = _config(["--preset", name]).model.build(vocab)
    assert model.tied
    assert count_parameters(model) == pytest.approx(total, rel=0.01)
    if rnn is not None:
        assert count_parameters(model, exclude_embedding=True) == pytest.approx(rnn, rel=0.01)


@needs_data
@pytest.mark.parametrize("name", ["ptb-egru", "wt2-lstm"])
def test_paper_presets_start_and_run_steps_on_cpu(name: str) -> None:
    # full-size model and recipe; batch and bptt cut down to keep this test fast on 2 shared
    # cores (one full-size step takes minutes there; docs/lm.md records such a run)
    args = _parse(["--preset", name, "--max-steps", "2", "--train-tokens", "3000",
                   "--valid-tokens", "300", "--eval-interval", "0", "--save", "",
                   "--batch_size", "2", "--bptt", "6",
                   "--threads", "1", "--no-progress", "--no-tensorboard"])
    trainer = commands.build_trainer(LMConfig.from_namespace(args))
    before = trainer.model.embedding.weight.detach().clone()
    losses = [trainer.train_step()["loss"] for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, trainer.model.embedding.weight)
    assert trainer.cfg.lr == PRESETS[name]["lr"] and trainer.task.random_bptt
    assert trainer.cfg.optimizer == PRESETS[name]["optimizer"]


@needs_data
def test_train_then_eval(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--max-steps", "6", "--eval-interval", "3",
                     "--save", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test (best" in out and "act.sp." in out
    results = json.loads((run / "results.json").read_text())
    assert results["train"]["finished"] and results["test"]["tokens"] == 199
    assert results["config"]["model"]["hidden_sizes"] == [24, 16]
    assert LMConfig.from_dict(results["config"]) == _config([*TINY, "--max-steps", "6",
                                                             "--eval-interval", "3",
                                                             "--save", str(run)])
    layers = results["test"]["accounting"]["layers"]
    assert [entry["hidden_size"] for entry in layers] == [24, 16]
    assert (run / "metrics.csv").is_file() and (run / "best.json").is_file()

    assert cli.main(["eval", "--checkpoint", str(run), "--tag", "best", "--split", "test",
                     "--tokens", "200", "--threads", "1"]) == 0
    ev = json.loads((run / "eval-best-test.json").read_text())
    assert ev["ppl"] == pytest.approx(results["test"]["ppl"], rel=1e-6)
    assert ev["batch_size"] == 1 and len(ev["accounting"]["layers"]) == 2

    # the event-driven engine gives the same perplexity as the PyTorch path
    assert cli.main(["eval", "--checkpoint", str(run), "--tokens", "200", "--engine", "sparse",
                     "--out", str(run / "eval-sparse.json")]) == 0
    ev_sparse = json.loads((run / "eval-sparse.json").read_text())
    assert ev_sparse["engine"] == "sparse" and ev_sparse["tokens"] == ev["tokens"]
    assert ev_sparse["ppl"] == pytest.approx(ev["ppl"], rel=1e-5)

    assert cli.main(["prune", "--checkpoint", str(run), "--prune-method", "magnitude",
                     "--prune-target", "0.5", "--prune-rounds", "1", "--fine-tune-steps",
                     "2", "--output", str(run / "prune.json"), "--save",
                     str(tmp_path / "pruned")]) == 0
    pruned = json.loads((run / "prune.json").read_text())
    assert pruned["rounds"][0]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert pruned["dense"] == pytest.approx(ev["ppl"], rel=0.5)  # valid vs test ppl
    # the pruned checkpoint is a run folder that eval (both engines) reads
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "pruned"), "--split", "valid",
                     "--tokens", "300"]) == 0
    ev_pruned = json.loads((tmp_path / "pruned" / "eval-best-valid.json").read_text())
    dens = [entry["weight_density_hh"] for entry in ev_pruned["accounting"]["layers"]]
    assert all(d == pytest.approx(0.5, abs=0.05) for d in dens)

    # a run folder of a different model refuses --resume with a clear message
    assert cli.main(["train", *TINY, "--nhid", "32,16", "--max-steps", "6",
                     "--save", str(run), "--resume"]) == 1
    assert "different model" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "missing")]) == 1
    assert "no checkpoint 'best'" in capsys.readouterr().err


@needs_data
def test_bad_arguments_give_clear_errors(capsys) -> None:
    assert cli.main(["train", *TINY, "--max-steps", "1", "--dropouti", "1.5", "--save", ""]
                    ) == 1
    assert "dropouti must be a probability" in capsys.readouterr().err
    assert cli.main(["train", *TINY, "--save", ""]) == 1
    assert "give --max-steps or --epochs" in capsys.readouterr().err
    assert cli.main(["train", *TINY, "--max-steps", "1", "--valid-tokens", "1",
                     "--save", ""]) == 1
    assert "--valid-tokens must be >= 2" in capsys.readouterr().err


def test_kws_task_has_its_own_flags() -> None:
    assert cli.build_train_parser(["--task", "kws"]).parse_args(["--task", "kws"]).task == "kws"
    with pytest.raises(SystemExit):  # an LM flag is not a KWS flag
        cli.build_train_parser(["--task", "kws"]).parse_args(["--task", "kws", "--nhid", "3"])


def test_explicit_run_length_replaces_the_presets_other_unit() -> None:
    # cpu-small sets --max-steps 600: an explicit --epochs must not be ignored in its favour
    run = _config(["--preset", "cpu-small", "--epochs", "2"]).run
    assert run.max_steps is None and run.train_config(100).max_steps == 200
    run = _config(["--preset", "ptb-egru", "--max-steps", "3"]).run
    assert run.epochs is None and run.train_config(100).max_steps == 3
    assert _config(["--preset", "cpu-small"]).run.train_config(100).max_steps == 600


@pytest.mark.parametrize("epochs", ["0", "-1", "nan"])
def test_epochs_must_be_positive(epochs: str) -> None:
    with pytest.raises(ValueError, match="--epochs must be a finite number > 0"):
        _config(["--epochs", epochs]).run.train_config(100)


def test_token_limit_errors_name_the_flag() -> None:
    with pytest.raises(ValueError, match=r"^--tokens must be >= 2"):
        limit_tokens(torch.arange(5), 1, "--tokens")
    with pytest.raises(ValueError, match=r"^--valid-tokens must be >= 2"):
        limit_tokens(torch.arange(5), 1, "--valid-tokens")


def test_negative_threads_are_refused_clearly(tmp_path: Path, capsys) -> None:
    # checked before the checkpoint is read: no run folder needed
    assert cli.main(["eval", "--checkpoint", str(tmp_path), "--threads", "-1"]) == 1
    assert "--threads must be >= 1" in capsys.readouterr().err
