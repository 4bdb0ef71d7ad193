"""The LM commands never replace a run or a result by accident, and check their outputs before
the work: ``train --save`` onto a run, ``prune --save`` onto its source, ``eval`` engines."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from dualsparse import cli
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.run_dir import LOCK_NAME

DATA = os.environ.get("DUALSPARSE_DATA")
needs_data = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "ptb" / "train.txt").is_file(),
    reason="PTB not available under $DUALSPARSE_DATA")

TINY = ["--train-tokens", "2000", "--valid-tokens", "300", "--test-tokens", "100",
        "--emsize", "8", "--nhid", "8", "--batch_size", "4", "--bptt", "8",
        "--threads", "1", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    if not DATA or not (Path(DATA) / "ptb" / "train.txt").is_file():
        pytest.skip("PTB not available under $DUALSPARSE_DATA")
    folder = tmp_path_factory.mktemp("safety") / "run"
    assert cli.main(["train", *TINY, "--max-steps", "4", "--eval-interval", "2",
                     "--save", str(folder)]) == 0
    return folder


def _best(folder: Path) -> dict:
    return json.loads((folder / "best.json").read_text())


@needs_data
def test_train_refuses_a_folder_holding_a_run(run: Path, capsys) -> None:
    before = _best(run)
    assert cli.main(["train", *TINY, "--max-steps", "2", "--save", str(run)]) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert _best(run) == before  # untouched


@needs_data
def test_overwrite_replaces_the_whole_run(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    assert cli.main(["train", *TINY, "--max-steps", "4", "--eval-interval", "2",
                     "--save", str(folder)]) == 0
    assert _best(folder)["step"] == 4
    # a stopped overwrite must not leave the old run's best (step 4) beside the new one
    assert cli.main(["train", *TINY, "--max-steps", "6", "--eval-interval", "6",
                     "--stop-at", "2", "--overwrite", "--save", str(folder)]) == 0
    assert not (folder / "best.json").exists()
    assert ckpt.read_checkpoint_meta(folder, "latest")["step"] == 2
    assert len(list(folder.glob("*.safetensors"))) == 1
    assert not (folder / LOCK_NAME).exists()  # released


@needs_data
def test_a_locked_run_folder_is_refused(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "other-host"}))
    assert cli.main(["train", *TINY, "--max-steps", "2", "--save", str(folder)]) == 1
    assert "in use by pid 1 on other-host" in capsys.readouterr().err


@needs_data
def test_prune_save_onto_its_source_is_refused(run: Path, capsys) -> None:
    before = _best(run)
    for target in (run, run / "." ):
        assert cli.main(["prune", "--checkpoint", str(run), "--prune-target", "0.5",
                         "--save", str(target)]) == 1
        assert "is the source run" in capsys.readouterr().err
    assert _best(run) == before
    other = run.parent / "other-run"
    other.mkdir()
    (other / "best.json").write_text("{}")
    assert cli.main(["prune", "--checkpoint", str(run), "--prune-target", "0.5",
                     "--save", str(other)]) == 1
    assert "already holds a run" in capsys.readouterr().err
    (run.parent / "taken.json").write_text("{}")
    assert cli.main(["prune", "--checkpoint", str(run), "--prune-target", "0.5",
                     "--output", str(run.parent / "taken.json")]) == 1
    assert "--output" in capsys.readouterr().err


@needs_data
def test_eval_outputs_are_named_by_engine_and_never_replaced(run: Path, capsys) -> None:
    base = ["eval", "--checkpoint", str(run), "--tokens", "60", "--threads", "1"]
    assert cli.main(base) == 0
    assert cli.main([*base, "--engine", "sparse"]) == 0
    torch_res = json.loads((run / "eval-best-test.json").read_text())
    sparse_res = json.loads((run / "eval-best-test-sparse.json").read_text())
    assert (torch_res["engine"], sparse_res["engine"]) == ("torch", "sparse")
    out = run.parent / "mine.json"
    out.write_text("keep")
    assert cli.main([*base, "--out", str(out)]) == 1
    assert "--out" in capsys.readouterr().err and out.read_text() == "keep"
    assert cli.main([*base, "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["engine"] == "torch"
    assert json.loads(out.read_text())["device"] == ("cuda" if torch.cuda.is_available()
                                                      else "cpu")


@needs_data
def test_eval_device_is_checked_before_any_work(run: Path, capsys) -> None:
    base = ["eval", "--checkpoint", str(run), "--tokens", "60", "--threads", "1"]
    out = run.parent / "device.json"
    cases = [(["--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
             (["--engine", "sparse", "--device", "cuda"], "the sparse engine runs on the CPU")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda:0"], "--device cuda:0: CUDA is not available"))
    for flags, message in cases:
        assert cli.main([*base, *flags, "--out", str(out)]) == 1, flags
        assert message in capsys.readouterr().err
        assert not out.exists()  # refused before loading or evaluating anything
    assert cli.main([*base, "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["device"] == "cpu"


@needs_data
def test_too_few_valid_tokens_fail_before_training(tmp_path: Path, capsys) -> None:
    assert cli.main(["train", *TINY, "--max-steps", "2", "--valid-tokens", "3",
                     "--save", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "--valid-tokens" in err and "--eval-batch-size 10" in err
    assert not (tmp_path / "r" / "latest.json").exists()  # nothing was trained


def test_unusable_flags_give_one_line(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, message in [
        (["--device", "tpu7", "--save", ""], "--device must be cpu, cuda or cuda:N"),
        (["--save", str(afile)], "is a file, not a folder"),
        (["--save", str(afile / "sub")], "is not writable"),
        (["--max-steps", "-1", "--save", ""], "--max-steps must be an int >= 1"),
    ]:
        assert cli.main(["train", *TINY, "--max-steps", "1", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, argv
    assert afile.read_text() == "x"


@needs_data
@pytest.mark.parametrize(("flags", "message"), [
    (["--nhid", "200000"], "lower --hidden-sizes/--emb-size"),
    (["--bptt", "100000000", "--train-tokens", "900000", "--batch_size", "1"],
     "lower --bptt or --batch-size"),
])
def test_sizes_that_cannot_fit_are_refused_before_allocating(
        flags: list[str], message: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DUALSPARSE_MAX_BYTES", str(8 * 10**9))  # an 8 GB machine
    assert cli.main(["train", *TINY, "--max-steps", "1", "--save", "", *flags]) == 1
    err = capsys.readouterr().err
    assert "more than this machine's 8.0 GB" in err and message in err


@needs_data
def test_a_checkpoint_claiming_a_huge_model_is_refused(run: Path, tmp_path: Path,
                                                       monkeypatch, capsys) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run.glob("best*"):
        (copy / f.name).write_bytes(f.read_bytes())
    meta = json.loads((copy / "best.json").read_text())
    meta["model_config"]["hidden_sizes"] = [300000]
    (copy / "best.json").write_text(json.dumps(meta))
    monkeypatch.setenv("DUALSPARSE_MAX_BYTES", str(8 * 10**9))
    assert cli.main(["eval", "--checkpoint", str(copy), "--tokens", "50"]) == 1
    err = capsys.readouterr().err
    assert "hidden_sizes [300000]" in err and "more than this machine's" in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "-1"], "--lr must be >= 0.0"),
    (["--wdecay-bias", "-0.5"], "--wdecay-bias must be >= 0.0"),
    (["--beta1", "1"], "--beta1 must be < 1.0"),
    (["--clip", "-1"], "--clip must be >= 0.0"),
])
def test_bad_optimiser_flags_are_named_before_the_data_is_looked_for(
        flags: list[str], message: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """The optimiser settings are checked when the flags are read: a wrong flag is reported
    (by its flag name) even when the data folder is missing too, and nothing is created."""
    monkeypatch.setenv("DUALSPARSE_DATA", str(tmp_path / "no-data-here"))
    out = tmp_path / "r"
    assert cli.main(["train", "--preset", "ptb-small-egru", *flags, "--save", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and "no-data-here" not in err and "Traceback" not in err
    assert not out.exists()


@needs_data
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_prune_fine_tuning_learning_rate_and_schedule(run: Path, schedule: str, monkeypatch,
                                                      tmp_path: Path) -> None:
    """``--fine-tune-lr`` sets the fine-tuning's rate; ``--fine-tune-lr-schedule cosine``
    warms a fresh AdamW up over a tenth of each round and decays the rate to 0 by its end."""
    from dualsparse.apps.lm import prune as prune_mod
    from dualsparse.train.optim import lr_factor

    seen, positions = [], []
    real = prune_mod.Trainer

    def spy(model, task, cfg, **kw):
        seen.append(cfg)
        positions.append(task.next_batch().input.clone())  # where this round starts
        return real(model, task, cfg, **kw)

    monkeypatch.setattr(prune_mod, "Trainer", spy)
    out = tmp_path / f"prune-{schedule}.json"
    assert cli.main(["prune", "--checkpoint", str(run), "--prune-target", "0.5",
                     "--prune-rounds", "2", "--fine-tune-steps", "20", "--fine-tune-lr",
                     "1e-4", "--fine-tune-lr-schedule", schedule, "--output", str(out)]) == 0
    assert len(seen) == 2  # one fine-tuning per round, each with a fresh optimiser
    # the second round goes on through the training data instead of starting it again
    assert not torch.equal(positions[0], positions[1])
    for cfg in seen:
        assert cfg.lr == 1e-4 and cfg.max_steps == 20
        factors = [lr_factor(step, cfg) for step in range(20)]
        if schedule == "constant":
            assert factors == [1.0] * 20
        else:
            assert factors[0] == pytest.approx(0.5) and factors[1] > 0.95  # warm-up: 2 steps
            assert factors[-1] < 0.01
            assert all(a >= b for a, b in zip(factors[1:-1], factors[2:], strict=True))
    saved = json.loads(out.read_text())["config"]
    assert saved["fine_tune_lr"] == 1e-4 and saved["fine_tune_lr_schedule"] == schedule


@needs_data
@pytest.mark.parametrize("start", ["fresh", "carry"])
def test_prune_fine_tuning_optimiser_fresh_or_carried(run: Path, start: str, monkeypatch,
                                                      tmp_path: Path) -> None:
    """``--fine-tune-optimizer carry`` starts round 1 from the checkpoint's AdamW moments and
    round 2 from round 1's; ``fresh`` starts every round with empty moments. The rate and
    weight decay are this fine-tuning's in both."""
    from dualsparse.apps.lm import prune as prune_mod
    from dualsparse.train.optim import build_optimizer

    starts, ends, groups = [], [], []

    def settings(optimizer):
        return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    class Spy(prune_mod.Trainer):
        def fit(self):
            starts.append(copy.deepcopy(self.optimizer.state_dict()["state"]))
            groups.append(settings(self.optimizer) == settings(
                build_optimizer(self.model, self.cfg)))
            result = super().fit()
            ends.append(copy.deepcopy(self.optimizer.state_dict()["state"]))
            return result

    monkeypatch.setattr(prune_mod, "Trainer", Spy)
    out = tmp_path / f"prune-{start}.json"
    assert cli.main(["prune", "--checkpoint", str(run), "--prune-target", "0.5",
                     "--prune-rounds", "2", "--fine-tune-steps", "3", "--fine-tune-lr", "1e-4",
                     "--fine-tune-optimizer", start, "--output", str(out)]) == 0
    assert len(starts) == 2
    if start == "fresh":
        assert starts[0] == {} and starts[1] == {}
    else:
        tensors, meta = ckpt.load_checkpoint(run, "best")
        saved = ckpt.join_state(meta["optimizer"], tensors)["state"]
        first = starts[0][0]
        assert torch.equal(first["exp_avg_sq"], saved["0"]["exp_avg_sq"])
        assert first["exp_avg_sq"].abs().sum() > 0
        for key, value in ends[0].items():  # round 2 begins where round 1 ended
            assert torch.equal(starts[1][key]["exp_avg"], value["exp_avg"])
    assert groups == [True, True]  # lr, betas, weight decay: this fine-tuning's
    assert json.loads(out.read_text())["config"]["fine_tune_optimizer"] == start


@needs_data
def test_prune_refuses_a_bad_fine_tuning_rate(run: Path, capsys) -> None:
    assert cli.main(["prune", "--checkpoint", str(run), "--prune-target", "0.5",
                     "--fine-tune-steps", "2", "--fine-tune-lr", "0"]) == 1
    assert "--fine-tune-lr must be > 0" in capsys.readouterr().err
