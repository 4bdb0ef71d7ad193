"""Property: the event-driven engine computes what PyTorch computes (eval mode), for random
small EGRU/GRU/LSTM stacks and language models, random pruning patterns, packed formats,
input activity and batch sizes. Only the public API (``SparseRuntime``, ``SparseLM``,
``compare_events``) is used; tolerances are those of ``tests/engine``."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualsparse.engine import SparseRuntime, compare_events
from dualsparse.engine.lm import SparseLM
from dualsparse.models import EGRU, GRU, LSTM
from dualsparse.models.lm import RNNLanguageModel


def examples(n_ci: int) -> int:
    """``n_ci`` examples under the ``ci`` profile, scaled like the loaded profile's budget
    (``dev``: 10x); an explicit ``max_examples`` would otherwise ignore the profile."""
    return max(1, n_ci * settings.default.max_examples // settings.get_profile("ci").max_examples)


ATOL, RTOL = 2e-5, 1e-4
BLOCKS = [(1, 1), (16, 1), (4, 4), (3, 2), (1, 5), "auto"]
PATTERNS = ["dense", "unstructured", "blocks", "columns", "rows", "empty"]


def pattern_mask(shape: tuple[int, int], pattern: str, density: float,
                 g: torch.Generator) -> torch.Tensor:
    """Bool keep-mask of a ``(rows, cols)`` matrix following ``pattern`` (see PATTERNS)."""
    rows, cols = shape
    if pattern == "dense":
        return torch.ones(shape, dtype=torch.bool)
    if pattern == "unstructured":
        return torch.rand(shape, generator=g) < density
    if pattern == "blocks":  # (4, 2) tiles pruned whole, aligned with no packed format
        tiles = torch.rand(-(-rows // 4), -(-cols // 2), generator=g) < density
        return tiles.repeat_interleave(4, 0).repeat_interleave(2, 1)[:rows, :cols]
    if pattern == "columns":
        return (torch.rand(1, cols, generator=g) < density).expand(rows, cols)
    if pattern == "rows":
        return (torch.rand(rows, 1, generator=g) < density).expand(rows, cols)
    return torch.zeros(shape, dtype=torch.bool)  # "empty": everything pruned


def prune(weights: list[torch.Tensor], pattern: str, density: float, seed: int) -> None:
    """Zero the matrices ``weights`` in place following ``pattern``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in weights:
            w.mul_(pattern_mask(tuple(w.shape), pattern, density, g).to(w.dtype))


def recurrent_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The ``weight_ih``/``weight_hh`` matrices of a recurrent stack."""
    return [p for n, p in model.named_parameters()
            if n.rsplit(".", 1)[-1].startswith("weight_") and p.dim() == 2]


def inputs(shape: tuple[int, ...], zero_fraction: float, seed: int) -> torch.Tensor:
    """Normal inputs with a fraction of exact zeros (inactive input columns)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    return x * (torch.rand(shape, generator=g) >= zero_fraction)


stacks = st.fixed_dictionaries({
    "kind": st.sampled_from(["egru", "gru", "lstm", "nn.gru", "nn.lstm"]),
    "input_size": st.integers(1, 9),
    "hidden": st.lists(st.integers(1, 20), min_size=1, max_size=3),
    "reset_mode": st.sampled_from(["subtract_threshold", "subtract_output", "none"]),
    "threshold_mean": st.sampled_from([0.01, 0.05, 0.2, 0.6]),
    "zoneout": st.sampled_from([0.0, 0.3]),
    "pattern": st.sampled_from(PATTERNS),
    "density": st.floats(0.05, 1.0),
    "block": st.sampled_from(BLOCKS),
    "threads": st.sampled_from([1, 1, 2]),
    "batch": st.sampled_from([1, 1, 2, 5]),
    "steps": st.integers(1, 8),
    "zero_fraction": st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    "seed": st.integers(0, 2**16),
})


def build_stack(c: dict) -> torch.nn.Module:
    torch.manual_seed(c["seed"])
    i, hidden = c["input_size"], c["hidden"]
    if c["kind"] == "egru":
        m = EGRU(i, hidden, reset_mode=c["reset_mode"], threshold_mean=c["threshold_mean"],
                 zoneout=c["zoneout"])
    elif c["kind"] in ("gru", "lstm"):
        m = (GRU if c["kind"] == "gru" else LSTM)(i, hidden, zoneout=c["zoneout"])
    else:  # torch.nn modules have one hidden size for all layers
        cls = torch.nn.GRU if c["kind"] == "nn.gru" else torch.nn.LSTM
        m = cls(i, hidden[0], num_layers=len(hidden))
    prune(recurrent_weights(m), c["pattern"], c["density"], c["seed"] + 1)
    return m.eval()


@settings(max_examples=examples(40))
@given(stacks)
def test_runtime_equals_torch(c: dict) -> None:
    m = build_stack(c)
    x = inputs((c["steps"], c["batch"], c["input_size"]), c["zero_fraction"], c["seed"] + 2)
    rt = SparseRuntime.from_model(m, block=c["block"], threads=c["threads"])
    with torch.no_grad():
        if c["kind"] != "egru":
            ref, _ = m(x)
            torch.testing.assert_close(rt.run(x), ref, atol=ATOL, rtol=RTOL)
            return
        ref, _, seqs = m(x, return_sequences=True)
    out, seqs_rt = rt.run(x, return_sequences=True)
    # an event may flip only where c~ is within rounding of the threshold; after the first
    # such flip the two computations legitimately diverge, so values are compared before it
    first = c["steps"]
    for k in range(m.num_layers):
        cmp = compare_events(seqs_rt[k]["events"], seqs[k].events, seqs_rt[k]["internal"],
                             seqs[k].internal, m.threshold(k).detach())
        assert cmp.unexplained == 0, cmp
        bad = (seqs_rt[k]["events"] != seqs[k].events).flatten(1).any(1).nonzero()
        if len(bad):
            first = min(first, int(bad[0]))
    torch.testing.assert_close(out[:first], ref[:first], atol=ATOL, rtol=RTOL)
    for k in range(m.num_layers):
        torch.testing.assert_close(seqs_rt[k]["internal"][:first], seqs[k].internal[:first],
                                   atol=ATOL, rtol=RTOL)


@settings(max_examples=examples(15))
@given(stacks)
def test_streaming_step_equals_run(c: dict) -> None:
    """``step`` one time step at a time gives exactly what ``run`` gives."""
    m = build_stack(c)
    x = inputs((c["steps"], c["batch"], c["input_size"]), c["zero_fraction"], c["seed"] + 2)
    rt = SparseRuntime.from_model(m, block=c["block"], threads=c["threads"])
    full = rt.run(x)
    rt.reset(c["batch"])
    steps = torch.stack([rt.step(x[t]) for t in range(c["steps"])])
    torch.testing.assert_close(steps, full, atol=0, rtol=0)


lms = st.fixed_dictionaries({
    "cell": st.sampled_from(["egru", "gru", "lstm"]),
    "vocab": st.integers(2, 40),
    "emb": st.integers(1, 12),
    "hidden": st.lists(st.integers(1, 16), min_size=1, max_size=2),
    "tie": st.booleans(),
    "threshold_mean": st.sampled_from([0.05, 0.2]),
    "pattern": st.sampled_from(PATTERNS),
    "density": st.floats(0.05, 1.0),
    "block": st.sampled_from(BLOCKS),
    "batch": st.sampled_from([1, 3]),
    "steps": st.integers(1, 8),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=examples(20))
@given(lms)
def test_sparse_lm_equals_torch(c: dict) -> None:
    torch.manual_seed(c["seed"])
    hidden = list(c["hidden"])
    if c["tie"]:
        hidden[-1] = c["emb"]  # a tied decoder needs the last layer as wide as the embedding
    opts = {"threshold_mean": c["threshold_mean"]} if c["cell"] == "egru" else None
    lm = RNNLanguageModel(c["vocab"], c["emb"], hidden, cell=c["cell"], tie_weights=c["tie"],
                          cell_options=opts)
    decoder = [] if c["tie"] else [lm.decoder.weight]
    prune([w for rnn in lm.rnns for w in recurrent_weights(rnn)] + decoder, c["pattern"],
          c["density"], c["seed"] + 1)
    lm.eval()
    g = torch.Generator().manual_seed(c["seed"] + 2)
    tokens = torch.randint(0, c["vocab"], (c["steps"], c["batch"]), generator=g)
    with torch.no_grad():
        ref, _ = lm(tokens)
    slm = SparseLM.from_model(lm, block=c["block"])
    torch.testing.assert_close(slm.run(tokens), ref, atol=ATOL, rtol=RTOL)
