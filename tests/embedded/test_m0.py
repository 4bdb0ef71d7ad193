"""Cortex-M0 (qemu -M microbit) build: outputs equal the integer reference bit for bit."""

import numpy as np
import pytest

from dualsparse.embedded import cortex_m0 as m0
from dualsparse.embedded.reference import random_deployed

pytestmark = pytest.mark.skipif(
    m0.m0_tools() is None,
    reason="arm-none-eabi-gcc/-size/-nm or qemu-system-arm missing "
    "(run scripts/install-embedded-tools.sh)",
)


@pytest.mark.timeout(120)
def test_m0_bitexact_sizes_and_instruction_count(tmp_path):
    m = random_deployed((16, 12, 8), 5, 3, seed=3)
    rng = np.random.default_rng(0)
    x = rng.integers(-32768, 32768, (5, 6, 16))
    x[0], x[1] = -32768, 32767
    elf = m0.build_m0(m, x, tmp_path)
    logits, hs, cls = m0.run_m0(elf, m, timeout=60)
    ref_logits, ref_hs = m.run(x)
    assert np.array_equal(logits, ref_logits)
    for a, b in zip(hs, ref_hs, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(cls, np.argmax(ref_logits, axis=1))
    size = m0.m0_size(elf)
    assert 0 < size["flash"] < 256 * 1024 and size["ram"] <= 16 * 1024
    empty = m0.m0_size(m0.build_m0(m, x, tmp_path / "empty", with_model=False))
    assert empty["flash"] < size["flash"]
    syms = m0.symbol_sizes(elf)
    assert syms["egru_w0"] == 4 * m.layers[0].codes.shape[0] * -(-28 // 10)
    counts = m0.count_instructions_m0(elf, timeout=60)
    assert len(counts) == 5 and all(c > 1000 for c in counts)
