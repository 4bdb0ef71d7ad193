"""The emitted C, compiled with the host gcc, equals the integer reference bit for bit."""

import shutil

import numpy as np
import pytest
import torch

from dualsparse.embedded import codegen as cg
from dualsparse.embedded import host
from dualsparse.embedded.reference import deploy, random_deployed
from dualsparse.models.egru_embedded import KWSNet

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")



def _check(model, x, tmp_path):
    exe = host.build_host(model, tmp_path)
    logits, hs, cls = host.run_host(exe, model, x)
    ref_logits, ref_hs = model.run(x)
    assert np.array_equal(logits, ref_logits)
    for a, b in zip(hs, ref_hs, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(cls, np.argmax(ref_logits, axis=1))


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("extreme", [False, True])
def test_random_models(bits, extreme, tmp_path, q15_limit_inputs):
    rng = np.random.default_rng(bits * 10 + extreme)
    m = random_deployed((11, 9, 7), 4, bits, seed=bits + 7 * extreme, extreme=extreme)
    _check(m, q15_limit_inputs(rng, 60, 13, 11, zero_row=True), tmp_path)


def test_saturation_really_happens(tmp_path, q15_limit_inputs):
    m = random_deployed((20, 16), 3, 3, seed=5, extreme=True)
    rng = np.random.default_rng(0)
    x = q15_limit_inputs(rng, 8, 5, 20, zero_row=True)
    v = np.concatenate([x[:, 0], np.zeros((8, 16), np.int64)], axis=1)
    from dualsparse.embedded.reference import shift_matvec

    acc = m.layers[0].bias + shift_matvec(m.layers[0].codes, v, 3)
    assert (np.abs(acc) > 2**21).any()  # the +-64 pre-activation clip is exercised
    _check(m, x, tmp_path)


def test_trained_style_model(tmp_path):
    torch.manual_seed(0)
    net = KWSNet("egru-q", 64, (32, 20), 10)
    m = deploy(net)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 32768, (40, 16, 64))
    x[:2] = 32767
    _check(m, x, tmp_path)
    text = (tmp_path / "egru_weights.h").read_text()
    assert "static const uint32_t egru_w0" in text
    assert "malloc" not in (tmp_path / "egru.c").read_text()


def test_prefix_and_bad_input(tmp_path):
    m = random_deployed((4, 3), 2, 3, seed=0)
    files = cg.emit_c(m, tmp_path, prefix="kws1")
    assert {f.name for f in files} == {"kws1_weights.h", "kws1.h", "kws1.c"}
    with pytest.raises(ValueError, match="prefix"):
        cg.emit_c(m, tmp_path, prefix="1bad")
    with pytest.raises(ValueError, match="x_q"):
        host.run_host(tmp_path / "nothing", m, np.zeros((2, 3, 5), np.int64))


def test_fan_in_beyond_the_int32_bound_of_the_c_sums_is_refused():
    random_deployed((16383, 1), 2)  # fan-in 16384: allowed
    with pytest.raises(ValueError, match="fan-in 16385"):
        random_deployed((16384, 1), 2)
