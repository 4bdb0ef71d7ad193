"""The GRU baselines' C (host gcc): the int8/Q15 GRU equals its integer reference bit for bit,
the float GRU equals torch.nn.GRU to float32 rounding; the table activations and quantiser."""

import numpy as np
import pytest
import torch

from dualsparse.embedded import gru
from dualsparse.embedded.host import build_host, run_host
from dualsparse.models.egru_embedded import KWSNet


@pytest.mark.parametrize("seed,extreme", [(0, False), (1, False), (2, True)])
def test_int_gru_c_is_bit_exact(tmp_path, seed, extreme, q15_limit_inputs):
    m = gru.random_int_gru((12, 9, 7), 5, seed=seed, extreme=extreme)
    x = q15_limit_inputs(np.random.default_rng(seed), 40, 7, 12)
    logits, hs, cls = run_host(build_host(m, tmp_path, "qgru"), m, x)
    ref, ref_hs = m.run(x)
    assert np.array_equal(logits, ref) and np.array_equal(cls, np.argmax(ref, axis=1))
    for a, b in zip(hs, ref_hs, strict=True):
        assert np.array_equal(a, b)
    if extreme:  # every state is pushed to the tanh/sigmoid table ends
        assert np.abs(hs[0]).max() >= 32000


def test_int_gru_matches_float_gru_of_a_net():
    torch.manual_seed(0)
    net = KWSNet("gru", 16, (12, 8), 4)
    x = np.random.default_rng(0).integers(0, 32768, (20, 10, 16))
    f_logits, _ = gru.FloatGRU.from_net(net).run(x)
    q = gru.IntGRU.from_net(net)
    q_logits, _ = q.run(x)
    assert np.abs(q_logits / 32768 - f_logits).max() < 0.02
    with torch.no_grad():
        direct = net(torch.from_numpy(x.astype(np.float32) / 32768).transpose(0, 1)).numpy()
    assert np.allclose(f_logits, direct, atol=1e-5)


def test_float_gru_c_equals_torch(tmp_path, q15_limit_inputs):
    torch.manual_seed(1)
    net = KWSNet("gru", 16, (12, 8), 4)
    m = gru.FloatGRU.from_net(net)
    x = q15_limit_inputs(np.random.default_rng(3), 12, 9, 16)
    logits, hs, cls = run_host(build_host(m, tmp_path, "fgru"), m, x)
    ref, ref_hs = m.run(x)
    assert logits.dtype == np.float32 and np.allclose(logits, ref, atol=2e-5)
    for a, b in zip(hs, ref_hs, strict=True):
        assert np.allclose(a, b, atol=2e-5)
    assert np.array_equal(cls, np.argmax(logits, axis=1))


def test_table_activations_follow_the_functions():
    p = np.arange(-(9 << 15), 9 << 15, 97)
    s = gru.sigmoid_q15(p) / 32768
    t = gru.tanh_q15(p) / 32768
    x = p / 32768
    assert np.abs(s - 1 / (1 + np.exp(-x))).max() < 1e-3
    assert np.abs(t - np.tanh(x)).max() < 2e-3
    assert s.min() >= 0 and s.max() <= 32767 / 32768 and np.all(np.diff(s) >= 0)


def test_int_gru_rejects_bad_weights():
    m = gru.random_int_gru((4, 3), 2)
    m.layers[0].w_ih[0, 0] = 300
    with pytest.raises(ValueError, match="w_ih"):
        gru.IntGRU(m.layers, m.readout_w, m.readout_b, m.readout_s)
    with pytest.raises(ValueError, match="kind 'gru'"):
        gru.IntGRU.from_net(KWSNet("egru", 4, (3,), 2))
