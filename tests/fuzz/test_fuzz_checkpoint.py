"""Properties of the checkpoint format (:mod:`dualsparse.train.checkpoint`):

* random nested states (dicts, lists, tuples; tensors of every safetensors dtype and any shape,
  empty and 0-d included, non-contiguous views, NumPy arrays and scalars; JSON values) come
  back from ``save_checkpoint`` / ``load_checkpoint`` equal, dtypes and tuples included;
* a :class:`Trainer` saved after a random number of steps and resumed into a fresh one has the
  same model, optimiser and task state, and trains on bitwise identically: for the language
  model task, the keyword-spotting task, and the toy sweep task with a pruner.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dualsparse.apps.kws.task import KWSTask
from dualsparse.apps.lm.task import LMTask
from dualsparse.experiments.toy import ToyLM, ToyTask, make_pruner, markov_stream
from dualsparse.models.egru_embedded import KWSNet
from dualsparse.models.lm import RNNLanguageModel
from dualsparse.train import checkpoint as ckpt
from dualsparse.train.config import TrainConfig
from dualsparse.train.loop import Trainer, set_seed


def examples(n_ci: int) -> int:
    """``n_ci`` examples under the ``ci`` profile, scaled like the loaded profile's budget
    (``dev``: 10x); an explicit ``max_examples`` would otherwise ignore the profile."""
    return max(1, n_ci * settings.default.max_examples // settings.get_profile("ci").max_examples)


# ------------------------------------------------------------------------ random state trees
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool]
KEYS = st.text("abcxyz_0123456789", min_size=1, max_size=6)  # no "." (the key separator)


@st.composite
def tensors(draw) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = torch.randn(shape, generator=g, dtype=torch.float64) * 100
    if dtype == torch.bool:
        t = t > 0
    elif not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        t = t.clamp(info.min, info.max)
    t = t.to(dtype)
    if t.dim() >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # a non-contiguous view (own storage: the original is dropped)
    return t


json_values = st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60), st.text(max_size=8),
                        st.floats(allow_nan=False))
leaves = st.one_of(tensors(), json_values,
                   hnp.arrays(st.sampled_from([np.float32, np.int64, np.bool_]),
                              hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)),
                   st.sampled_from([np.int64(-7), np.float32(0.5), np.float64(1e300)]))
trees = st.recursive(leaves, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.tuples(kids, kids),
    st.dictionaries(KEYS, kids, max_size=3)), max_leaves=12)


def normalised(obj):
    """What a round trip may change: NumPy values become tensors / Python scalars."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: normalised(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(normalised(v) for v in obj)
    return obj


def assert_same(a, b, path: str = "state") -> None:
    """Exact equality of two state trees (tensors: dtype, shape, values bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, (path, a.dtype, b.dtype)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a, b)
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}.{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


@settings(max_examples=examples(40))
@given(state=st.dictionaries(KEYS, trees, max_size=4), step=st.integers(0, 10**6))
def test_random_state_round_trips(state: dict, step: int) -> None:
    tensors_out: dict[str, torch.Tensor] = {}
    meta = {"step": step, "state": ckpt.split_state(state, "s", tensors_out)}
    with tempfile.TemporaryDirectory() as d:
        ckpt.save_checkpoint(d, "latest", tensors_out, meta)
        loaded, meta2 = ckpt.load_checkpoint(d, "latest")
    assert meta2["step"] == step
    assert_same(ckpt.join_state(meta2["state"], loaded), normalised(state))


# ---------------------------------------------------------------------- trainer resume
def synthetic_stream(n: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(n, generator=g) < 0.2, torch.randint(0, vocab, (n,), generator=g),
                       torch.arange(n) * 5 % vocab)


def train_config(out_dir: Path, c: dict, **kw) -> TrainConfig:
    return TrainConfig(max_steps=c["k"] + c["more"], lr=3e-3, optimizer=c["optimizer"],
                       momentum=0.9, wdecay=c["wdecay"], clip=c["clip"], eval_interval=0,
                       log_interval=1, out_dir=str(out_dir), tensorboard=False, progress=False,
                       seed=c["seed"], **kw)


def lm_trainer(out_dir: Path, c: dict) -> Trainer:
    set_seed(c["seed"])
    model = RNNLanguageModel(20, 6, [8, 6], cell=c["cell"], dropout=0.1, dropouth=0.1,
                             dropouti=0.1, dropoute=0.1, wdrop=0.2,
                             cell_options={"threshold_mean": 0.05} if c["cell"] == "egru"
                             else None)
    task = LMTask(synthetic_stream(c["tokens"], 20, 0), synthetic_stream(60, 20, 1),
                  synthetic_stream(40, 20, 2), batch_size=c["batch"], bptt=c["bptt"],
                  random_bptt=c["random_bptt"], seed=c["seed"], carry=c["carry"],
                  eval_batch_size=2)
    return Trainer(model, task, train_config(out_dir, c))


def kws_trainer(out_dir: Path, c: dict) -> Trainer:
    set_seed(c["seed"])
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 30, 6, generator=g), torch.randint(0, 4, (30,), generator=g)
    index = {"train": np.arange(22), "val": np.arange(22, 26), "test": np.arange(26, 30)}
    task = KWSTask(x, y, index, batch_size=c["batch"], seed=c["seed"])
    net = KWSNet(c["kws_kind"], 6, (5,), 4)
    return Trainer(net, task, train_config(out_dir, c, select_by="error",
                                           scale_lr_by_seq_len=False))


def toy_trainer(out_dir: Path, c: dict) -> Trainer:
    set_seed(c["seed"], deterministic=False)
    stream = markov_stream(12, 3, c["tokens"], 7, 1)
    n = stream.numel() // c["batch"]
    train = stream[: n * c["batch"]].view(c["batch"], n).t().contiguous()
    model = ToyLM(c["toy_model"], 12, 6, [8], 0.1)
    steps = c["k"] + c["more"]
    pruner = make_pruner(model, 0.5, 1, steps) if steps >= 2 else None
    return Trainer(model, ToyTask(train, markov_stream(12, 3, 50, 7, 3), c["bptt"]),
                   train_config(out_dir, c, scale_lr_by_seq_len=False), pruner=pruner)


MAKERS = {"lm": lm_trainer, "kws": kws_trainer, "toy": toy_trainer}

runs = st.fixed_dictionaries({
    "task": st.sampled_from(sorted(MAKERS)), "k": st.integers(0, 6), "more": st.integers(1, 3),
    "seed": st.integers(0, 1000), "optimizer": st.sampled_from(["adamw", "sgd"]),
    "wdecay": st.sampled_from([0.0, 0.1]), "clip": st.sampled_from([0.0, 0.25]),
    "cell": st.sampled_from(["egru", "lstm", "gru"]), "batch": st.integers(1, 8),
    "bptt": st.integers(2, 8), "random_bptt": st.booleans(),
    "carry": st.sampled_from(["full", "output"]), "tokens": st.integers(120, 300),
    "kws_kind": st.sampled_from(["gru", "egru", "egru-q"]),
    "toy_model": st.sampled_from(["EGRU", "LSTM", "GRU"]),
})


@settings(max_examples=examples(20))
@given(runs)
def test_trainer_resume_restores_every_state(c: dict) -> None:
    make = MAKERS[c["task"]]
    with tempfile.TemporaryDirectory() as d:
        a = make(Path(d) / "a", c)
        for _ in range(c["k"]):
            a.train_step()
        a.save("latest")
        saved = {"model": copy.deepcopy(a.model.state_dict()),
                 "optim": copy.deepcopy(a.optimizer.state_dict()["state"]),
                 "task": normalised(copy.deepcopy(a.task.state_dict())),
                 "pruner": None if a.pruner is None else a.pruner.state_dict()}
        # the global RNGs are one per process: run the original on first, then the resumed
        losses = [a.train_step()["loss"] for _ in range(c["more"])]
        b = make(Path(d) / "b", c)
        b.resume(Path(d) / "a")
    assert b.step == c["k"]
    assert_same(b.model.state_dict(), saved["model"], "model")
    assert_same(b.optimizer.state_dict()["state"], saved["optim"], "optim")
    assert_same(normalised(b.task.state_dict()), saved["task"], "task")
    assert (b.pruner.state_dict() if b.pruner else None) == saved["pruner"]
    assert [b.train_step()["loss"] for _ in range(c["more"])] == losses  # bit for bit
    assert_same(b.model.state_dict(), a.model.state_dict(), "model after more steps")
