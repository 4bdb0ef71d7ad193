"""Every path into a deployed model checks its Q15 input the same way: values outside int16
(40000 would wrap to -25536 on the way to the C) and floats (0.9 would truncate to 0) are
refused by the reference, the host C harness and the Cortex-M0 build alike."""

from __future__ import annotations

import numpy as np
import pytest

from dualsparse.embedded import cortex_m0, host
from dualsparse.embedded.reference import check_q15_input, random_deployed

MODEL = random_deployed((4, 3), 2, 3, seed=0)
BAD = [
    (np.full((1, 2, 4), 40000, np.int64), "fit int16"),
    (np.full((1, 2, 4), -40000, np.int64), "fit int16"),
    (np.full((1, 2, 4), 0.9), "integer Q15"),
    (np.zeros((1, 2, 5), np.int64), r"\(B, T, 4\)"),
]


@pytest.mark.parametrize(("x", "message"), BAD)
def test_every_entry_refuses_the_same_inputs(tmp_path, x, message) -> None:
    with pytest.raises(ValueError, match=message):
        MODEL.run(x)
    with pytest.raises(ValueError, match=message):  # before any process is started
        host.run_host(tmp_path / "no-such-exe", MODEL, x)
    with pytest.raises(ValueError, match=message):  # before qemu is started
        cortex_m0.run_m0(tmp_path / "no-such.elf", MODEL, x)


def test_valid_input_passes_unchanged() -> None:
    x = np.array([[[-32768, 32767, 0, 5]]], np.int16)
    out = check_q15_input(x, 4)
    assert out.dtype == np.int64 and np.array_equal(out, x)
    assert MODEL.run(x[0])[0].shape == (2,)  # (T, I) still accepted by the reference
