"""Checkpoint files: round trips, tied weights, clear refusals, crash safety."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dualsparse.models.lm import RNNLanguageModel
from dualsparse.train import checkpoint as ckpt


def _model(hidden: list[int] | None = None, seed: int = 0) -> RNNLanguageModel:
    torch.manual_seed(seed)
    return RNNLanguageModel(30, 8, hidden or [12, 8], cell="egru")


def _save(directory: Path, model: RNNLanguageModel, step: int, tag: str = "latest") -> None:
    tensors, aliases = ckpt.model_tensors(model)
    ckpt.save_checkpoint(directory, tag, tensors, {"step": step, "aliases": aliases})


def _load_into(directory: Path, model: RNNLanguageModel, tag: str = "latest") -> dict:
    tensors, meta = ckpt.load_checkpoint(directory, tag)
    ckpt.load_model_tensors(model, tensors, meta["aliases"])
    return meta


def test_roundtrip_keeps_tied_weights_tied(tmp_path: Path) -> None:
    src, dst = _model(seed=1), _model(seed=2)
    tensors, aliases = ckpt.model_tensors(src)
    assert aliases == {"decoder.weight": "embedding.weight"}
    assert "decoder.weight" not in tensors
    _save(tmp_path, src, 3)
    meta = _load_into(tmp_path, dst)
    assert meta["step"] == 3 and meta["dualsparse_version"]
    for (n, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert dst.decoder.weight is dst.embedding.weight
    assert len(list(tmp_path.glob("latest-*.safetensors"))) == 1


def test_nested_state_and_optimizer_roundtrip(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.0, 0.99))
    model(torch.zeros(3, 2, dtype=torch.long))[0].sum().backward()
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    state = {"optim": ckpt.split_state(ckpt.optimizer_state(opt), "optim", tensors),
             "misc": ckpt.split_state({"pair": (1, torch.ones(2)), "none": None}, "misc",
                                      tensors)}
    json.dumps(state)  # the non-tensor part is plain JSON
    back = ckpt.join_state(json.loads(json.dumps(state)), tensors)
    assert back["misc"]["pair"][0] == 1 and torch.equal(back["misc"]["pair"][1], torch.ones(2))
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt.load_optimizer_state(opt2, back["optim"])
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert opt2.param_groups[0]["betas"] == (0.0, 0.99)
    with pytest.raises(ckpt.CheckpointError, match="optimizer state does not match"):
        ckpt.load_optimizer_state(torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))]),
                                  back["optim"])
    with pytest.raises(TypeError, match="cannot store"):
        ckpt.split_state({"x": object()}, "p", {})


def test_rng_state_roundtrip() -> None:
    tensors: dict[str, torch.Tensor] = {}
    saved = json.loads(json.dumps(ckpt.split_state(ckpt.rng_state(), "rng", tensors)))
    expected = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    random.seed(99)
    torch.manual_seed(99)
    ckpt.set_rng_state(ckpt.join_state(saved, tensors))
    got = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_mismatching_model_is_refused_with_the_differences(tmp_path: Path) -> None:
    _save(tmp_path, _model([12, 8]), 1)
    with pytest.raises(ckpt.CheckpointError, match=r"shape mismatch: rnns\.0\.weight_ih_l0"):
        _load_into(tmp_path, _model([16, 8]))
    with pytest.raises(ckpt.CheckpointError, match=r"not in the model: \['rnns\.2"):
        _save(tmp_path, _model([12, 8, 8]), 2)
        _load_into(tmp_path, _model([12, 8]))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint 'best'"):
        ckpt.load_checkpoint(tmp_path, "best")


def test_corrupt_or_foreign_files_are_refused(tmp_path: Path) -> None:
    _save(tmp_path, _model(), 1)
    meta = json.loads((tmp_path / "latest.json").read_text())
    data = tmp_path / meta["tensors_file"]
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.load_checkpoint(tmp_path)
    (tmp_path / "latest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ckpt.CheckpointError, match="not a dualsparse checkpoint"):
        ckpt.load_checkpoint(tmp_path)
    (tmp_path / "latest.json").write_text("{")
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        ckpt.load_checkpoint(tmp_path)


@pytest.mark.parametrize("fail_at", ["tensors", "pointer", "cleanup"])
def test_an_interrupted_save_leaves_a_loadable_checkpoint(tmp_path: Path, monkeypatch,
                                                          fail_at: str) -> None:
    """A crash at any stage of saving step 2 leaves step 1 (or the complete step 2)."""
    old, new = _model(seed=1), _model(seed=2)
    _save(tmp_path, old, 1)
    real_replace, real_unlink = os.replace, Path.unlink

    def crash_replace(src, dst):
        if (fail_at == "tensors" and str(dst).endswith(".safetensors")) or (
                fail_at == "pointer" and str(dst).endswith(".json")):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    def crash_unlink(self, missing_ok=False):
        if fail_at == "cleanup" and self.suffix == ".safetensors":
            raise KeyboardInterrupt("killed")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", crash_replace)
    monkeypatch.setattr(Path, "unlink", crash_unlink)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, new, 2)
    monkeypatch.undo()
    probe = _model(seed=3)
    meta = _load_into(tmp_path, probe)
    expected = new if fail_at == "cleanup" else old
    assert meta["step"] == (2 if fail_at == "cleanup" else 1)
    assert torch.equal(probe.embedding.weight, expected.embedding.weight)
    _save(tmp_path, new, 3)  # the next save cleans up leftovers
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "latest.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith("latest-00000003")


def test_atomic_json_write(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.json"
    ckpt.atomic_write_json(path, {"a": 1})
    ckpt.atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_state_with_aliased_tensors_saves_and_reserved_keys_are_refused(tmp_path: Path) -> None:
    # found by the checkpoint fuzzer: one tensor twice (or a tensor and its view) made
    # safetensors refuse the save, and a user key "__tuple__" came back as a tuple
    t = torch.arange(6.0)
    tensors: dict[str, torch.Tensor] = {}
    state = ckpt.split_state({"a": t, "b": t, "view": t[2:4]}, "s", tensors)
    ckpt.save_checkpoint(tmp_path, "latest", tensors, {"step": 1, "state": state})
    loaded, meta = ckpt.load_checkpoint(tmp_path, "latest")
    back = ckpt.join_state(meta["state"], loaded)
    assert torch.equal(back["a"], t) and torch.equal(back["b"], t)
    assert torch.equal(back["view"], t[2:4])
    for key in ("__tuple__", "__tensor__"):
        with pytest.raises(ValueError, match="reserved key"):
            ckpt.split_state({"outer": {key: [1, 2]}}, "s", {})
