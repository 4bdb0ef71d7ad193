"""Feature augmentation: warps move content where they say, masks zero one band, the input is
never changed, draws are reproducible, bad settings are refused."""

import numpy as np
import pytest
import torch

from dualsparse.data.augment import FeatureAugment, interpolate_last


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_interpolate_last_reads_between_and_outside_samples() -> None:
    x = torch.tensor([[1.0, 3.0, 5.0, 7.0]])
    pos = torch.tensor([[0.0, 0.5, 2.25, 3.0]])
    assert interpolate_last(x, pos).tolist() == [[1.0, 2.0, 5.5, 7.0]]
    # past either end: 0, not the edge value
    assert interpolate_last(x, torch.tensor([[-0.5, 3.5, -1.0, 1.0]])).tolist() == [
        [0.0, 0.0, 0.0, 3.0]]


def _tone(t: int = 64, n: int = 16, f: int = 64, bin_: int = 20) -> torch.Tensor:
    x = torch.zeros(t, n, f)
    x[:, :, bin_] = 0.9
    return x


def test_warp_moves_a_tone_within_the_warp_range_and_differs_between_clips() -> None:
    x = _tone(bin_=20)
    before = x.clone()
    y = FeatureAugment(warp=0.2)(x, _rng())
    assert torch.equal(x, before)
    spec = y[10]                                              # (N, F): one frame of every clip
    centre = (spec * torch.arange(64.0)).sum(1) / spec.sum(1)
    assert ((centre > 20 * 0.8 - 0.5) & (centre < 20 * 1.2 + 0.5)).all()
    assert centre.std() > 1.0  # one factor per clip, not one per batch
    assert torch.equal(y[0], y[63])  # the same warp in every frame
    assert float(y.min()) >= 0.0 and float(y.max()) < 1.0


def test_stretch_keeps_the_last_frame_and_moves_the_onset() -> None:
    x = torch.zeros(64, 16, 8)
    x[40:, :, 3] = 0.5                                        # right-aligned clip, onset at 40
    y = FeatureAugment(stretch=0.25)(x, _rng(1))
    assert torch.allclose(y[63], x[63])
    onset = torch.tensor([int(torch.nonzero(y[:, i, 3])[0]) for i in range(16)])
    # 23 frames before the end become 23 * beta, beta in [0.75, 1.25]
    assert (onset >= 63 - 23 * 1.25 - 1).all() and (onset <= 63 - 23 * 0.75 + 1).all()
    assert len(set(onset.tolist())) > 3


def test_masks_zero_one_contiguous_band_and_keep_the_rest() -> None:
    x = torch.full((20, 50, 12), 0.5)
    y = FeatureAugment(freq_mask=4, time_mask=6)(x, _rng(2))
    for i in range(50):
        clip = y[:, i]
        zero_bins = torch.nonzero((clip == 0).all(0)).flatten().tolist()
        zero_frames = torch.nonzero((clip == 0).all(1)).flatten().tolist()
        assert len(zero_bins) <= 4 and len(zero_frames) <= 6
        for band in (zero_bins, zero_frames):
            if band:
                assert band == list(range(band[0], band[0] + len(band)))
        kept = clip[[r for r in range(20) if r not in zero_frames]][
            :, [c for c in range(12) if c not in zero_bins]]
        assert (kept == 0.5).all()
    widths = {int((y[:, i] == 0).all(0).sum()) for i in range(50)}
    assert len(widths) > 2


def test_same_generator_state_gives_the_same_batch_and_off_is_identity() -> None:
    x = torch.rand(64, 8, 64) * 0.99
    aug = FeatureAugment(warp=0.1, stretch=0.1, freq_mask=5, time_mask=5)
    assert torch.equal(aug(x, _rng(7)), aug(x, _rng(7)))
    assert not torch.equal(aug(x, _rng(7)), aug(x, _rng(8)))
    off = FeatureAugment()
    assert not off.active and aug.active
    y = off(x, _rng())
    assert torch.equal(y, x) and y is not x


@pytest.mark.parametrize("kwargs, match", [
    ({"warp": 0.6}, "warp"), ({"stretch": -0.1}, "stretch"),
    ({"freq_mask": -1}, "freq_mask"), ({"time_mask": 1.5}, "time_mask"),
])
def test_bad_settings_are_refused(kwargs, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        FeatureAugment(**kwargs)


def test_masks_wider_than_the_features_are_refused() -> None:
    with pytest.raises(ValueError, match="freq_mask 20"):
        FeatureAugment(freq_mask=20)(torch.zeros(4, 2, 8), _rng())
    with pytest.raises(ValueError, match="must be"):
        FeatureAugment(warp=0.1)(torch.zeros(4, 8), _rng())
