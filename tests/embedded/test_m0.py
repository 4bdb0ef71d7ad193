"""Cortex-M0 (qemu -M microbit) builds: the eGRU and the int8/Q15 GRU equal their integer
references bit for bit on a seeded random set (random models of every bit width, saturating
models, int16-limit inputs); the float GRU equals torch to float32 rounding; sizes and the
instruction profile are consistent."""

import re
import subprocess

import numpy as np
import pytest
import torch

from dualsparse.embedded import cortex_m0 as m0
from dualsparse.embedded import m0_profile
from dualsparse.embedded.gru import FloatGRU, random_int_gru
from dualsparse.embedded.reference import random_deployed
from dualsparse.models.egru_embedded import KWSNet

pytestmark = pytest.mark.skipif(
    m0.m0_tools() is None,
    reason="arm-none-eabi-gcc/-size/-nm or qemu-system-arm missing "
    "(run scripts/install-embedded-tools.sh)",
)



def _assert_equal(out, ref):
    logits, hs, cls = out
    ref_logits, ref_hs = ref
    assert np.array_equal(logits, ref_logits)
    for a, b in zip(hs, ref_hs, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(cls, np.argmax(ref_logits, axis=1))


@pytest.mark.timeout(300)
def test_m0_egru_fuzz_bit_exact(tmp_path, q15_limit_inputs):
    """One image per model, all sequences in one qemu run (seeded: reproducible failures)."""
    cases = [random_deployed((16, 12, 8), 5, bits, seed=10 + bits) for bits in (2, 3, 4, 5)]
    cases.append(random_deployed((16, 12, 8), 5, 3, seed=7, extreme=True))
    # dense ReLU layers (the paper's 16-unit layer; one wider than every fan-in)
    cases.append(random_deployed((16, 12, 8), 5, 3, seed=8, dense=(16,)))
    cases.append(random_deployed((16, 12, 8), 5, 3, seed=9, extreme=True, dense=(6, 40)))
    # accumulator right shifts of the dense layers (the paper's layer has 5)
    cases.append(random_deployed((16, 12, 8), 5, 3, seed=10, dense=(16, 6), dense_shifts=(5, 1)))
    cases.append(random_deployed((16, 12, 8), 5, 3, seed=11, extreme=True, dense=(6,),
                                 dense_shifts=(14,)))
    for k, m in enumerate(cases):
        x = q15_limit_inputs(100 + k, 24, 5, 16)
        elf = m0.build_m0(m, tmp_path / f"m{k}", max_t=8)
        _assert_equal(m0.run_m0(elf, m, x, timeout=60), m.run(x))


@pytest.mark.timeout(300)
def test_m0_int_gru_fuzz_bit_exact(tmp_path, q15_limit_inputs):
    for k, (extreme, dense) in enumerate(((False, ()), (True, ()), (False, (16,)),
                                          (True, (6,)))):
        m = random_int_gru((16, 12, 8), 5, seed=20 + k, extreme=extreme, dense=dense)
        x = q15_limit_inputs(200 + k, 24, 5, 16)
        elf = m0.build_m0(m, tmp_path / f"g{k}", "qgru", max_t=8)
        _assert_equal(m0.run_m0(elf, m, x, timeout=60), m.run(x))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dense", [(), (6,)])
def test_m0_float_gru_matches_torch(tmp_path, dense, q15_limit_inputs):
    torch.manual_seed(0)
    m = FloatGRU.from_net(KWSNet("gru", 16, (12, 8), 5, dense_sizes=dense))
    x = q15_limit_inputs(300, 6, 5, 16)
    logits, hs, cls = m0.run_m0(m0.build_m0(m, tmp_path, "fgru", max_t=8), m, x, timeout=120)
    ref, ref_hs = m.run(x)
    assert np.allclose(logits, ref, atol=2e-5)
    for a, b in zip(hs, ref_hs, strict=True):
        assert np.allclose(a, b, atol=2e-5)
    assert np.array_equal(cls, np.argmax(logits, axis=1))


@pytest.mark.timeout(300)
def test_m0_sizes_and_profile(tmp_path, q15_limit_inputs):
    m = random_deployed((16, 12, 8), 5, 3, seed=3)
    x = q15_limit_inputs(0, 3, 6, 16)
    elf = m0.build_m0(m, tmp_path / "m", max_t=8)
    size = m0.m0_size(elf)
    assert 0 < size["flash"] < 256 * 1024 and size["ram"] <= m0.RAM_BYTES
    empty = m0.m0_size(m0.build_m0(m, tmp_path / "empty", with_model=False, max_t=8))
    assert empty["flash"] < size["flash"]
    assert m0.symbol_sizes(elf)["egru_w0"] == 4 * m.layers[0].codes.shape[0] * -(-28 // 10)
    prof = m0_profile.profile_m0(elf, m, x, timeout=120)
    assert len(prof) == 3
    for p in prof:
        mix = p["mix"]
        assert p["instructions"] == sum(v for k, v in mix.items() if not k.endswith("taken"))
        assert p["instructions"] > 1000 and mix["load/store"] > 0
        assert 0 < mix["branch (cond.) taken"] <= mix["branch (cond.)"]
        # every instruction costs at least one cycle; loads/stores and taken branches two
        assert p["cycles_m0plus"] >= p["instructions"] + mix["load/store"]
    # the same inputs give the same count; the stub image counts a few instructions only
    assert m0_profile.profile_m0(elf, m, x[:1])[0] == prof[0]
    stub = m0_profile.profile_m0(tmp_path / "empty" / "egru_m0_empty.elf", m, x[:1])[0]
    assert stub["instructions"] < prof[0]["instructions"] // 10


def test_cycle_table_classes():
    c = m0_profile.classify
    assert c("ldrh", "r3, [r2, #0]")[1] == 2 and c("muls", "r0, r1")[1] == 1
    assert c("push", "{r4, r5, r6, lr}") == ("push/pop/ldm/stm", 5, False)
    assert c("pop", "{r4, r5, pc}") == ("pop pc", 5, False)
    assert c("pop", "{r4-r7, pc}")[1] == 7
    assert c("bne.n", "1a4 <x>") == ("branch (cond.)", 1, True)
    assert c("b.n", "1a4 <x>")[1] == 2 and c("bl", "1a4 <x>")[1] == 3 and c("bx", "lr")[1] == 2
    assert c("bics", "r0, r1") == ("alu", 1, False)


def test_build_m0_rejects_oversized_input_buffer(tmp_path):
    m = random_deployed((64, 8), 3, 3)
    with pytest.raises(ValueError, match="max_t"):
        m0.build_m0(m, tmp_path, max_t=200)


def _singlestep_counts(elf, begin, end):
    """Independent count: one instruction per block (-singlestep), count log lines between the
    marker entries."""
    cmd = [*m0.qemu_cmd(elf), "-singlestep", "-d", "exec,nochain", "-D", "/dev/stdout"]
    out = subprocess.run(cmd, capture_output=True, timeout=120, cwd=elf.parent).stdout
    counts, n, inside = [], 0, False
    for ln in out.splitlines():
        m = re.search(rb"\[[0-9a-f]+/([0-9a-f]{8})/", ln)
        if not m:
            continue
        pc = int(m.group(1), 16)
        if pc == begin:
            n, inside = 0, True
        elif pc == end and inside:
            counts.append(n)
            inside = False
        n += 1
    return counts


@pytest.mark.timeout(300)
def test_profile_counts_equal_singlestep_counts(tmp_path, q15_limit_inputs):
    m = random_int_gru((16, 12, 8), 5, seed=5)
    x = q15_limit_inputs(9, 3, 4, 16)
    elf = m0.build_m0(m, tmp_path, "qgru", max_t=8)
    prof = m0_profile.profile_m0(elf, m, x)
    begin, end = m0_profile._marker_addresses(elf)
    assert [p["instructions"] for p in prof] == _singlestep_counts(elf, begin, end)


@pytest.mark.timeout(300)
def test_m0_weight_symbols_of_dense_layers(tmp_path):
    m = random_deployed((16, 12, 8), 5, 3, seed=3, dense=(16,))
    elf = m0.build_m0(m, tmp_path / "m", max_t=8)
    sizes = m0.symbol_sizes(elf)
    assert sizes["egru_dense_w0"] == 4 * 16 * 1 and sizes["egru_dense_b0"] == 4 * 16  # 8 <= 10
    weights = sum(v for k, v in sizes.items()
                  if k.startswith(("egru_w", "egru_b", "egru_readout", "egru_dense_w",
                                   "egru_dense_b")))
    assert weights == m.model_bytes()
    plain = random_deployed((16, 12, 8), 5, 3, seed=3)
    flash = m0.m0_size(elf)["flash"]
    assert flash > m0.m0_size(m0.build_m0(plain, tmp_path / "p", max_t=8))["flash"]
