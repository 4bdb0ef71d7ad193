"""Tests for dualsparse.data.batching: batchify, get_batch, fixed and random BPTT iterators."""

from __future__ import annotations

import io

import pytest
import torch

from dualsparse.data.batching import BPTTIterator, FixedBPTT, RandomBPTT, batchify, get_batch


def _stream(n: int, batch: int) -> torch.Tensor:
    return batchify(torch.arange(n), batch)


# ----------------------------------------------------------------------------- batchify


def test_batchify_shape_and_column_layout() -> None:
    out = batchify(torch.arange(26), 4)
    assert out.shape == (6, 4)
    assert out.dtype == torch.long
    assert out.is_contiguous()
    for b in range(4):  # column b is the b-th contiguous chunk; the remainder (24, 25) is dropped
        assert out[:, b].tolist() == list(range(6 * b, 6 * b + 6))


def test_batchify_exact_division_and_batch_one() -> None:
    assert batchify(torch.arange(12), 3).shape == (4, 3)
    assert batchify(torch.arange(5), 1)[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert batchify(torch.arange(5), 5).shape == (1, 5)


@pytest.mark.parametrize("batch_size", [0, -2, 7, 2.0, True])
def test_batchify_rejects_bad_batch_size(batch_size: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        batchify(torch.arange(6), batch_size)  # type: ignore[arg-type]


def test_batchify_rejects_non_1d() -> None:
    with pytest.raises(ValueError, match="1-D"):
        batchify(torch.zeros(3, 2, dtype=torch.long), 1)


# ----------------------------------------------------------------------------- get_batch


def test_get_batch_shifted_target() -> None:
    src = _stream(40, 4)  # (10, 4)
    inp, tgt = get_batch(src, 2, 3)
    assert inp.shape == tgt.shape == (3, 4)
    assert torch.equal(inp, src[2:5])
    assert torch.equal(tgt, src[3:6])


def test_get_batch_truncates_at_end() -> None:
    src = _stream(40, 4)
    inp, tgt = get_batch(src, 7, 5)
    assert inp.shape == (2, 4)
    assert torch.equal(tgt[-1], src[-1])


@pytest.mark.parametrize(("i", "seq_len"), [(-1, 3), (9, 3), (0, 0)])
def test_get_batch_bad_arguments(i: int, seq_len: int) -> None:
    with pytest.raises(ValueError):
        get_batch(_stream(40, 4), i, seq_len)


def test_get_batch_needs_2d_source_with_two_rows() -> None:
    with pytest.raises(ValueError, match="rows, batch"):
        get_batch(torch.arange(10), 0, 2)
    with pytest.raises(ValueError, match="at least 2 rows"):
        get_batch(_stream(4, 4), 0, 2)


# ----------------------------------------------------------------------------- fixed BPTT


def _check_covers(it: BPTTIterator, src: torch.Tensor) -> list[int]:
    """All segments tile rows 0..rows-2 with matching targets; returns their lengths."""
    segments = list(it)
    assert torch.equal(torch.cat([s.input for s in segments]), src[:-1])
    assert torch.equal(torch.cat([s.target for s in segments]), src[1:])
    assert [s.index for s in segments] == list(range(len(segments)))
    return [s.seq_len for s in segments]


def test_fixed_bptt_segments() -> None:
    src = _stream(1003, 10)  # 100 rows
    it = FixedBPTT(src, 35)
    assert len(it) == 3
    lengths = _check_covers(FixedBPTT(src, 35), src)
    assert lengths == [35, 35, 29]
    seg = next(iter(FixedBPTT(src, 35)))
    assert seg.start == 0 and seg.lr_scale == 1.0
    assert list(FixedBPTT(src, 35))[-1].lr_scale == pytest.approx(29 / 35)


def test_fixed_bptt_resume() -> None:
    src = _stream(1000, 5)
    reference = [s.start for s in FixedBPTT(src, 7)]
    it = FixedBPTT(src, 7)
    for _ in range(4):
        next(it)
    assert it.index == 4 and it.position == 28 and it.remaining == len(it) - 4
    resumed = FixedBPTT(src, 7)
    resumed.load_state_dict(it.state_dict())
    assert [s.start for s in resumed] == reference[4:]
    assert resumed.remaining == 0 and resumed.position == src.size(0) - 1


@pytest.mark.parametrize("bptt", [0, -3, 2.5])
def test_fixed_bptt_bad_bptt(bptt: object) -> None:
    with pytest.raises(ValueError, match="bptt"):
        FixedBPTT(_stream(100, 2), bptt)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- random BPTT


def test_random_bptt_distribution_and_bounds() -> None:
    src = _stream(400_000, 2)  # 200k rows: ~2900 segments of mean ~68
    it = RandomBPTT(src, 70, seed=123)
    lengths = torch.tensor(_check_covers(it, src)[:-1], dtype=torch.float)  # last one is cut
    assert lengths.min() >= 5 and lengths.max() <= 90
    short = lengths < 52.5  # the two modes N(35, 5) and N(70, 5) separate at 52.5
    assert 0.03 < short.float().mean() < 0.07
    assert lengths[~short].mean() == pytest.approx(70, abs=0.5)
    assert lengths[short].mean() == pytest.approx(35, abs=2.0)
    assert lengths[~short].std() == pytest.approx(5, rel=0.15)


def test_random_bptt_clipping_and_lr_scale() -> None:
    src = _stream(20_000, 4)
    segments = list(RandomBPTT(src, 10, std=20.0, min_len=3, max_len=12, seed=0))
    lengths = [s.seq_len for s in segments[:-1]]
    assert min(lengths) == 3 and max(lengths) == 12  # both bounds are hit with std=20
    assert all(s.lr_scale == pytest.approx(s.seq_len / 10) for s in segments)


def test_random_bptt_default_max_is_bptt_plus_20() -> None:
    it = RandomBPTT(_stream(10_000, 1), 30, std=50.0, seed=1)
    assert it.max_len == 50
    assert max(length for _, length in it.bounds) == 50


def test_random_bptt_reproducible() -> None:
    src = _stream(50_000, 4)
    a = RandomBPTT(src, 70, seed=7).bounds
    assert RandomBPTT(src, 70, seed=7).bounds == a
    assert RandomBPTT(src, 70, seed=8).bounds != a
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert RandomBPTT(src, 70, seed=g1).bounds == RandomBPTT(src, 70, seed=g2).bounds
    # a shared generator advances, so consecutive epochs differ
    epoch1, epoch2 = RandomBPTT(src, 70, seed=g1).bounds, RandomBPTT(src, 70, seed=g1).bounds
    assert epoch1 != epoch2


def test_random_bptt_resume_through_checkpoint() -> None:
    src = _stream(30_000, 3)
    full = [(s.start, s.seq_len) for s in RandomBPTT(src, 40, seed=99)]
    it = RandomBPTT(src, 40, seed=99)
    for _ in range(10):
        next(it)
    buffer = io.BytesIO()
    torch.save({"data": it.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["data"]

    resumed = RandomBPTT(src, 40, seed=12345)  # different seed: the state decides
    resumed.load_state_dict(state)
    assert resumed.index == 10 and resumed.position == full[10][0]
    assert [(s.start, s.seq_len) for s in resumed] == full[10:]


def test_random_bptt_resume_rejects_other_settings() -> None:
    src = _stream(30_000, 3)
    state = RandomBPTT(src, 40, seed=1).state_dict()
    with pytest.raises(ValueError, match="bptt"):
        RandomBPTT(src, 35, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="rows"):
        RandomBPTT(_stream(3000, 3), 40, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="kind"):
        FixedBPTT(src, 40).load_state_dict(state)


def test_seek_bounds() -> None:
    it = RandomBPTT(_stream(5000, 2), 20, seed=3)
    it.seek(len(it))
    assert list(it) == []
    with pytest.raises(ValueError, match="out of range"):
        it.seek(len(it) + 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1.5}, "p must"),
        ({"std": -1.0}, "std"),
        ({"std": float("nan")}, "std must be a finite number"),
        ({"std": float("inf")}, "std must be a finite number"),
        ({"min_len": 0}, "min_len"),
        ({"min_len": 10, "max_len": 5}, "max_len"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_random_bptt_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RandomBPTT(_stream(1000, 2), 20, **kwargs)
