import numpy as np
import pytest
import torch

from dualsparse.embedded import quant as q
from dualsparse.models import pow2_quant as p


def test_levels_and_codes_3bit():
    assert p.levels(3) == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    vals = np.array([1, 0.5, 0.25, 0, -0.25, -0.5, -1])
    codes = q.encode_pow2(vals, 3)
    assert codes.tolist() == [0b000, 0b001, 0b010, 0b111, 0b110, 0b101, 0b100]  # paper's table
    assert np.array_equal(q.decode_pow2(codes, 3), vals)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_roundtrip_and_pack(bits):
    rng = np.random.default_rng(bits)
    w = torch.from_numpy(rng.normal(0, 0.7, (7, 23)))
    wq = p.quantize_pow2(w, bits)
    assert set(np.unique(wq.numpy())).issubset(set(p.levels(bits)))
    codes = q.encode_pow2(wq, bits)
    assert np.array_equal(q.decode_pow2(codes, bits), wq.numpy())
    packed = q.pack_codes(codes, bits)
    assert packed.shape == (7, -(-23 // q.codes_per_word(bits)))
    assert np.array_equal(q.unpack_codes(packed, 23, bits), codes)


def test_zero_rules():
    w = torch.tensor([0.25, 0.2, 0.17, 0.26, 0.34, 0.7, 1.5, -3.0, -0.3])
    paper = p.quantize_pow2(w, 3, "paper").tolist()
    code = p.quantize_pow2(w, 3, "code").tolist()
    assert paper == [0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 1.0, -1.0, -0.25]
    assert code == [0.25, 0.25, 0.0, 0.25, 0.25, 0.5, 1.0, -1.0, -0.25]


def test_ste_gradient_is_identity():
    w = torch.randn(5, 4, requires_grad=True)
    (p.quantize_pow2_ste(w, 3) * torch.arange(20.0).view(5, 4)).sum().backward()
    assert torch.equal(w.grad, torch.arange(20.0).view(5, 4))


@pytest.mark.parametrize("bad", [1, 6, 0, -3, 2.5, True])
def test_bad_bits(bad):
    with pytest.raises(ValueError, match="bit width"):
        p.quantize_pow2(torch.ones(2), bad)


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        p.quantize_pow2(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="grid"):
        q.encode_pow2(np.array([0.3]), 3)
    with pytest.raises(ValueError, match="zero_rule"):
        p.quantize_pow2(torch.ones(2), 3, "other")
    with pytest.raises(ValueError, match="unused"):
        q.decode_pow2(np.array([3]), 3)
    with pytest.raises(ValueError, match="NaN"):
        q.to_q15(np.array([np.nan]))


def test_softsign_q15_exhaustive_two_division_rule():
    a = np.arange(0, p.SOFTSIGN_LIMIT + 1, dtype=np.int64)
    d = 32768 + a
    u = a << 10
    q1, r1 = u // d, u % d
    two_div = (q1 << 5) + (r1 << 5) // d  # what the C code computes in uint32
    assert u.max() < 2**32 and (r1 << 5).max() < 2**32
    assert np.array_equal(two_div, q.softsign_q15(a))
    x = np.array([-(2**31), -(2**21) - 5, -1, 0, 1, 2**21 + 5, 2**31 - 1])
    y = q.softsign_q15(x)
    assert np.array_equal(y, -q.softsign_q15(-x.astype(np.int64)))
    assert np.abs(y).max() == 32263
    xs = np.linspace(-70, 70, 1001)
    err = np.abs(q.softsign_q15(np.rint(xs * 32768)) / 32768 - np.clip(xs, -64, 64)
                 / (1 + np.abs(np.clip(xs, -64, 64))))
    assert err.max() < 1e-4


def test_asr_is_floor():
    x = np.array([-5, -4, -1, 0, 1, 5, -32768, 32767])
    for k in range(4):
        assert np.array_equal(q.asr(x, k), np.floor(x / 2**k).astype(np.int64))


def test_q15_helpers():
    assert q.to_q15(np.array([1.0, -1.0, 0.5, -2.0])).tolist() == [32767, -32768, 16384, -32768]
    t = torch.tensor([0.1234567, 2.0], requires_grad=True)
    y = p.fake_q15(t)
    assert y[0].item() * 32768 == round(0.1234567 * 32768) and y[1].item() == 32767 / 32768
