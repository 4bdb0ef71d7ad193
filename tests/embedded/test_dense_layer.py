"""The dense ReLU layer of the KWS classifier (Amoh & Odame: 30, 20, then 16 ReLU): the float
and quantisation-aware KWSNet, the integer reference, the eGRU C and the GRU baselines' C."""

import shutil

import numpy as np
import pytest
import torch

from dualsparse.embedded import gru, host
from dualsparse.embedded.codegen import emit_c
from dualsparse.embedded.quant import codes_per_word, to_q15
from dualsparse.embedded.reference import (
    DeployedEGRU,
    QDense,
    deploy,
    random_deployed,
    shift_matvec,
)
from dualsparse.models.egru_embedded import KWSNet, default_dense_shift
from dualsparse.models.pow2_quant import fake_q15

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")



def _assert_same(out, ref):
    logits, hs, cls = out
    assert np.array_equal(logits, ref[0])
    for a, b in zip(hs, ref[1], strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(cls, np.argmax(ref[0], axis=1))


# -- float and quantisation-aware model -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["gru", "egru", "egru-q"])
def test_kwsnet_dense_shapes_and_gradients(kind):
    torch.manual_seed(0)
    m = KWSNet(kind, 8, (6, 5), 4, dense_sizes=(7, 3))
    assert [tuple(lin.weight.shape) for lin in m.dense] == [(7, 5), (3, 7)]
    assert tuple(m.readout.weight.shape) == (4, 3)
    x = torch.rand(9, 2, 8)
    v = m.features(x)
    assert v.shape == (2, 3) and (v >= 0).all()
    out = m(x)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    if kind == "egru-q":  # dense outputs on the Q15 grid in [0, 32767/32768]
        assert torch.equal(v * 32768, torch.round(v * 32768)) and v.max() <= 32767 / 32768


def test_no_dense_is_todays_model():
    torch.manual_seed(3)
    a = KWSNet("egru-q", 8, (6, 5), 4)
    torch.manual_seed(3)
    b = KWSNet("egru-q", 8, (6, 5), 4, dense_sizes=())
    assert a.dense_sizes == [] and len(a.dense) == 0
    assert list(a.state_dict()) == list(b.state_dict())  # old checkpoints load unchanged
    x = torch.rand(5, 3, 8)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.features(x), a.rnns[1](a.rnns[0](fake_q15(x))[0])[0][-1])
    with pytest.raises(ValueError, match="dense_sizes"):
        KWSNet("gru", 8, (6,), 4, dense_sizes=(0,))


def test_qat_dense_layer_relu_and_q15_saturation():
    # shift 0: the unshifted layer of runs saved before the shift existed
    torch.manual_seed(0)
    m = KWSNet("egru-q", 4, (3,), 2, dense_sizes=(3,), dense_shifts=(0,))
    with torch.no_grad():
        m.dense[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0],
                                              [1.0, 0.0, 0.0]]))
        m.dense[0].bias.copy_(torch.tensor([100.0, -100.0, 0.1234567]))
    w, b = m.dense_params(0)
    assert b[0] == 64.0 and b[1] == -64.0 and b[2] * 32768 == round(0.1234567 * 32768)
    x = torch.rand(6, 5, 4)
    h = m.rnns[0](fake_q15(x))[0][-1]
    expect = torch.round(torch.clamp(h @ w.t() + b, 0, 32767 / 32768) * 32768) / 32768
    v = m.features(x)
    assert torch.equal(v, expect)
    assert (v[:, 0] == 32767 / 32768).all() and (v[:, 1] == 0).all()  # saturated, ReLU
    d = deploy(m)
    assert list(d.dense[0].bias[:2]) == [64 << 15, -(64 << 15)] and d.dense[0].shift == 0
    # +-1 weights and Q15 values: the integer layer computes exactly the float one
    assert np.array_equal(d.dense_forward(to_q15(h.detach())),
                          (v * 32768).detach().numpy().astype(np.int64))


def test_dense_shift_default_rule_and_checks():
    assert [default_dense_shift(n) for n in (1, 2, 3, 16, 17, 20, 32, 33)] == \
        [0, 1, 2, 4, 5, 5, 5, 6]
    assert KWSNet("egru-q", 64, (30, 20), 10, dense_sizes=(16,)).dense_shifts == [5]
    assert KWSNet("egru-q", 8, (6, 5), 4, dense_sizes=(7, 3)).dense_shifts == [3, 3]
    assert KWSNet("egru-q", 8, (6,), 4, dense_sizes=(7, 3), dense_shifts=(0, 2)).dense_shifts \
        == [0, 2]
    for kind in ("gru", "egru"):  # float layers: no shift
        assert KWSNet(kind, 8, (6,), 4, dense_sizes=(7,)).dense_shifts == [0]
        with pytest.raises(ValueError, match="egru-q only"):
            KWSNet(kind, 8, (6,), 4, dense_sizes=(7,), dense_shifts=(2,))
    with pytest.raises(ValueError, match="one shift per dense layer"):
        KWSNet("egru-q", 8, (6,), 4, dense_sizes=(7, 3), dense_shifts=(2,))
    with pytest.raises(ValueError, match="dense_shifts"):
        KWSNet("egru-q", 8, (6,), 4, dense_sizes=(7,), dense_shifts=(31,))
    m = random_deployed((4, 3), 2, dense=(5,))
    with pytest.raises(ValueError, match="dense 0: shift"):
        DeployedEGRU(3, m.layers, m.readout_codes, m.readout_bias,
                     dense=[QDense(m.dense[0].codes, m.dense[0].bias, -1)])


def test_qat_dense_layer_shift_floors_like_the_integer_model():
    torch.manual_seed(0)
    m = KWSNet("egru-q", 4, (3,), 2, dense_sizes=(3,), dense_shifts=(2,))
    with torch.no_grad():
        m.dense[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0],
                                              [1.0, 0.0, 0.0]]))
        m.dense[0].bias.copy_(torch.tensor([64.0, 0.3, -0.01]))
    w, b = m.dense_params(0)
    x = torch.rand(6, 40, 4) * 2 - 1
    h = m.rnns[0](fake_q15(x))[0][-1]
    acc = torch.round((h @ w.t() + b) * 32768)  # exact: +-1 weights, Q15 values and bias
    v = m.features(x)
    assert torch.equal(v * 32768, torch.clamp(torch.floor(acc / 4), 0, 32767))
    assert (v[:, 0] == 32767 / 32768).all()  # 64.0 >> 2 = 16.0 still saturates
    assert ((v[:, 1] > 0) & (v[:, 1] < 0.5)).any() and (v[:, 1] == 0).any()
    d = deploy(m)
    assert d.dense[0].shift == 2
    assert np.array_equal(d.dense_forward(to_q15(h.detach())),
                          (v * 32768).detach().numpy().astype(np.int64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qat_dense_layer_at_init_is_neither_saturated_nor_violent(seed):
    # Regression: with 3-bit power-of-two weights in {0, +-1/4, +-1/2, +-1} on 20 inputs the
    # unshifted layer's pre-activations reach several units; about 20% of its Q15 outputs sat
    # at 32767/32768 (no gradient) and half at 0, and logits of +-1 readout weights on those
    # outputs gave a first loss of 7 to 11 (chance: log 10 = 2.3). On the speaker split every
    # unit was dead within a few dozen steps and the model stayed at chance. The default shift
    # (5 for the fan-in 20) leaves no output saturated and starts near chance.
    torch.manual_seed(seed)
    m = KWSNet("egru-q", 64, (30, 20), 10, dense_sizes=(16,))
    assert m.dense_shifts == [5]
    x = torch.rand(20, 256, 64) * 2 - 1
    with torch.no_grad():
        v = m.features(x)
        loss = torch.nn.functional.cross_entropy(m(x), torch.arange(256) % 10)
    assert ((v > 0) & (v < 32767 / 32768)).float().mean() > 0.4
    assert (v == 32767 / 32768).float().mean() < 0.01
    assert float(loss) < 3.0


def _separable(n: int, classes: int, steps: int, features: int, seed: int):
    """Sequences whose frames are noisy copies of one random pattern per class, in (-1, 1)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(classes, features, generator=g) * 1.6 - 0.8
    y = torch.arange(n) % classes
    x = means[y][None] + 0.2 * torch.randn(steps, n, features, generator=g)
    return torch.clamp(x, -0.99, 0.99), y


def test_qat_dense_layer_trains_and_passes_gradients_to_the_recurrent_layers():
    x, y = _separable(256, 4, 6, 12, seed=0)
    torch.manual_seed(0)
    m = KWSNet("egru-q", 12, (24, 20), 4, dense_sizes=(16,))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-2, weight_decay=0.0)
    losses, rnn_grads = [], []
    for step in range(40):
        b = torch.arange(step * 64, step * 64 + 64) % 256
        loss = torch.nn.functional.cross_entropy(m(x[:, b]), y[b])
        opt.zero_grad()
        loss.backward()
        rnn_grads.append(sum(float(p.grad.norm()) for p in m.rnns.parameters()))
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert min(rnn_grads[-10:]) > 0  # the gradient still reaches the recurrent layers
    with torch.no_grad():
        v = m.features(x)
        acc = float((m(x).argmax(1) == y).float().mean())
    assert ((v > 0) & (v < 32767 / 32768)).float().mean() > 0.2  # not dead, not saturated
    assert np.mean(losses[-5:]) < 0.5 * np.log(4) and acc > 0.8


@pytest.mark.parametrize("shifts", [(0, 0), None])
def test_qat_model_with_dense_matches_integer_reference(shifts):
    torch.manual_seed(1)
    m = KWSNet("egru-q", 16, (12, 8), 5, dense_sizes=(7, 6), dense_shifts=shifts)
    assert m.dense_shifts == ([0, 0] if shifts else [3, 3])
    for p in m.parameters():  # move weights off the grid, biases to varied values
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.rand(20, 30, 16)
    with torch.no_grad():
        lf = (m(x) / m.logit_gain).numpy()
        vf = m.features(x).numpy()
    d = deploy(m)
    assert [D.size for D in d.dense] == [7, 6] and [D.shift for D in d.dense] == m.dense_shifts
    li, hs = d.run(to_q15(x.numpy()).transpose(1, 0, 2))
    vi = d.dense_forward(hs[-1])
    assert np.abs(li / 32768 - lf).max() < 1e-2
    assert np.abs(vi / 32768 - vf).max() < 1e-2
    assert (li.argmax(1) == lf.argmax(1)).mean() >= 0.9
    assert (vi == 0).any() and ((vi > 0) & (vi < 32767)).any()  # the ReLU is active both ways
    cpw = codes_per_word(3)
    words = sum(c.shape[0] * -(-c.shape[1] // cpw) for c in d.code_matrices())
    assert len(d.code_matrices()) == 5 and d.num_biases() == 24 + 16 + 7 + 6 + 5
    assert d.model_bytes() == 4 * words + 4 * d.num_biases()


def test_deployed_dense_widths_are_checked():
    m = random_deployed((4, 3), 2, dense=(5,))
    with pytest.raises(ValueError, match="dense 0: fan-in 4 != previous width 3"):
        DeployedEGRU(3, m.layers, m.readout_codes, m.readout_bias,
                     dense=[QDense(np.zeros((5, 4), np.int64), np.zeros(5, np.int64))])
    with pytest.raises(ValueError, match="readout fan-in 3 != last width 5"):
        DeployedEGRU(3, m.layers, np.zeros((2, 3), np.int64), m.readout_bias, dense=m.dense)
    with pytest.raises(ValueError, match="dense 0: \\|bias\\|"):
        DeployedEGRU(3, m.layers, m.readout_codes, m.readout_bias,
                     dense=[QDense(m.dense[0].codes, np.full(5, (64 << 15) + 1))])


# -- eGRU C --------------------------------------------------------------------------------------


@needs_gcc
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("mode", ["random", "small_bias", "extreme"])
def test_egru_c_with_dense_layers_is_bit_exact(bits, mode, tmp_path, q15_limit_inputs):
    m = random_deployed((11, 9, 7), 4, bits, seed=bits, extreme=mode == "extreme",
                        dense=(6, 5))
    rng = np.random.default_rng(bits)
    if mode == "small_bias":  # states off the limits: dense outputs inside (0, 32767) too
        for L in (*m.layers, *m.dense):
            L.bias = rng.integers(-(1 << 14), 1 << 14, L.bias.size)
    x = q15_limit_inputs(rng, 60, 13, 11)
    _assert_same(host.run_host(host.build_host(m, tmp_path), m, x), m.run(x))
    _check_dense_outputs(m, x, bits, mode)


@needs_gcc
@pytest.mark.parametrize("shifts", [(1, 4), (5, 0), (14, 30)])
@pytest.mark.parametrize("mode", ["random", "small_bias", "extreme"])
def test_egru_c_with_shifted_dense_layers_is_bit_exact(shifts, mode, tmp_path,
                                                        q15_limit_inputs):
    m = random_deployed((11, 9, 7), 4, 3, seed=sum(shifts), extreme=mode == "extreme",
                        dense=(6, 5), dense_shifts=shifts)
    rng = np.random.default_rng(sum(shifts))
    if mode == "small_bias":
        for L in (*m.layers, *m.dense):
            L.bias = rng.integers(-(1 << 14), 1 << 14, L.bias.size)
    x = q15_limit_inputs(rng, 60, 13, 11)
    _assert_same(host.run_host(host.build_host(m, tmp_path), m, x), m.run(x))
    text = (tmp_path / "egru.c").read_text()
    assert f"{shifts[0]}, egru_dense_w0" in text and f"{shifts[1]}, egru_dense_w1" in text
    _check_dense_outputs(m, x, 3, mode if shifts == (5, 0) else "any")


def _check_dense_outputs(m, x, bits, mode):
    """Every dense layer's output by the integer rule; which values occur."""
    v = m.run(x)[1][-1]
    outs = []  # every dense layer's output
    for D in m.dense:
        v = np.clip((D.bias + shift_matvec(D.codes, v, bits)) >> D.shift, 0, 32767)
        outs.append(v)
    assert np.array_equal(v, m.dense_forward(m.run(x)[1][-1]))
    vals = np.concatenate([o.ravel() for o in outs])
    assert (vals == 0).any()
    if mode == "small_bias":
        assert ((vals > 0) & (vals < 32767)).any()
    if mode == "extreme":  # +-1 weights, +-64.0 biases: only the two ends
        assert set(np.unique(vals)) == {0, 32767}


@needs_gcc
def test_dense_layers_wider_than_every_recurrent_fan_in(tmp_path, q15_limit_inputs):
    # the C's input buffer must hold the widest dense output too (found by the fuzz test)
    m = random_deployed((3, 2), 2, 3, seed=4, dense=(9, 12))
    x = q15_limit_inputs(np.random.default_rng(4), 20, 6, 3)
    _assert_same(host.run_host(host.build_host(m, tmp_path), m, x), m.run(x))
    q = gru.random_int_gru((3, 2), 2, seed=4, dense=(9, 12))
    _assert_same(host.run_host(host.build_host(q, tmp_path / "q", "qgru"), q, x), q.run(x))


@needs_gcc
def test_kws_shaped_model_with_the_papers_widths(tmp_path):
    torch.manual_seed(0)
    m = deploy(KWSNet("egru-q", 64, (30, 20), 10, dense_sizes=(16,)))
    assert m.dense[0].shift == 5  # ceil(log2(20))
    x = np.random.default_rng(1).integers(0, 32768, (30, 16, 64))
    x[:2] = 32767
    _assert_same(host.run_host(host.build_host(m, tmp_path), m, x), m.run(x))
    text = (tmp_path / "egru_weights.h").read_text()
    assert "#define EGRU_NUM_DENSE 1" in text and "egru_dense_w0[32]" in text  # 16 rows x 2
    assert "{20, 16, 2, 2, 0, 5, egru_dense_w0, egru_dense_b0}" in (tmp_path / "egru.c"
                                                                     ).read_text()


def test_c_without_dense_layers_has_no_dense_code(tmp_path):
    emit_c(random_deployed((5, 4), 3), tmp_path)
    assert "dense" not in (tmp_path / "egru.c").read_text()
    assert "dense" not in (tmp_path / "egru_weights.h").read_text()


# -- GRU baselines ---------------------------------------------------------------------------------


@needs_gcc
@pytest.mark.parametrize("seed,extreme", [(0, False), (1, False), (2, True)])
def test_int_gru_c_with_dense_layers_is_bit_exact(tmp_path, seed, extreme, q15_limit_inputs):
    m = gru.random_int_gru((12, 9, 7), 5, seed=seed, extreme=extreme, dense=(6, 4))
    x = q15_limit_inputs(np.random.default_rng(seed), 40, 7, 12)
    ref = m.run(x)
    _assert_same(host.run_host(host.build_host(m, tmp_path, "qgru"), m, x), ref)
    v = ref[1][-1]
    for D in m.dense:
        v = np.clip(gru.asr(v @ D.w.T, D.s) + D.b, 0, 32767)
    assert np.array_equal(ref[0], np.clip(gru.asr(v @ m.readout_w.T, m.readout_s)
                                          + m.readout_b, -(1 << 31), (1 << 31) - 1))


@needs_gcc
def test_float_gru_c_with_dense_layer_equals_torch(tmp_path, q15_limit_inputs):
    torch.manual_seed(1)
    net = KWSNet("gru", 16, (12, 8), 4, dense_sizes=(6,))
    m = gru.FloatGRU.from_net(net)
    x = q15_limit_inputs(np.random.default_rng(3), 12, 9, 16)
    logits, hs, cls = host.run_host(host.build_host(m, tmp_path, "fgru"), m, x)
    ref, ref_hs = m.run(x)
    with torch.no_grad():
        direct = net(torch.from_numpy(x.astype(np.float32) / 32768).transpose(0, 1)).numpy()
    assert np.allclose(ref, direct, atol=1e-5)
    assert logits.dtype == np.float32 and np.allclose(logits, ref, atol=2e-5)
    for a, b in zip(hs, ref_hs, strict=True):
        assert np.allclose(a, b, atol=2e-5)
    assert np.array_equal(cls, np.argmax(logits, axis=1))


def test_gru_baselines_carry_the_dense_layer():
    torch.manual_seed(0)
    net = KWSNet("gru", 16, (12, 8), 4, dense_sizes=(6,))
    f, q = gru.FloatGRU.from_net(net), gru.IntGRU.from_net(net)
    assert len(f.dense) == len(q.dense) == 1 and q.dense[0].w.shape == (6, 8)
    assert f.model_bytes() == 4 * net.num_weights()
    plain = gru.IntGRU.from_net(KWSNet("gru", 16, (12, 8), 4))
    assert q.model_bytes() - plain.model_bytes() == 6 * 8 + 4 * 6 + 4 * (6 - 8)  # readout 4x6
    x = np.random.default_rng(0).integers(0, 32768, (20, 10, 16))
    assert np.abs(q.run(x)[0] / 32768 - f.run(x)[0]).max() < 0.02
    bad = gru.random_int_gru((4, 3), 2, dense=(5,))
    bad.dense[0].w[0, 0] = 300
    with pytest.raises(ValueError, match="dense 0"):
        gru.IntGRU(bad.layers, bad.readout_w, bad.readout_b, bad.readout_s, dense=bad.dense)
    bad.dense[0].w = np.zeros((5, 4), np.int64)
    with pytest.raises(ValueError, match="dense 0"):
        gru.IntGRU(bad.layers, bad.readout_w, bad.readout_b, bad.readout_s, dense=bad.dense)
