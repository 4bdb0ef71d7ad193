"""Properties of the deployed eGRU:

* the emitted C, compiled with the host gcc, equals the integer reference
  (``DeployedEGRU.run``) bit for bit on random integer models (any code words, biases up to
  the +-64.0 limit, with and without dense ReLU layers) and random Q15 inputs, int16 limits
  included;
* the integer model that :func:`deploy` makes of a random quantisation-aware ``KWSNet`` agrees
  with the float network (same argmax where the float margin is clear, logits within the
  Q15 rounding), so the reference is the network that was trained.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dualsparse.embedded import host
from dualsparse.embedded.quant import to_q15, zero_code
from dualsparse.embedded.reference import DeployedEGRU, QDense, QLayer, deploy
from dualsparse.models.egru_embedded import KWSNet
from dualsparse.models.pow2_quant import SOFTSIGN_LIMIT, max_shift


def examples(n_ci: int) -> int:
    """``n_ci`` examples under the ``ci`` profile, scaled like the loaded profile's budget
    (``dev``: 10x); an explicit ``max_examples`` would otherwise ignore the profile."""
    return max(1, n_ci * settings.default.max_examples // settings.get_profile("ci").max_examples)


I16 = st.integers(-32768, 32767)
LIMITS = st.sampled_from([-32768, -32767, -1, 0, 1, 32766, 32767])


@st.composite
def deployed_models(draw) -> DeployedEGRU:
    """A valid integer model: 1-2 layers, 0-2 dense ReLU layers, any valid code words (zero code
    included), biases drawn with the +-64.0 limits over-represented."""
    bits = draw(st.integers(2, 5))
    sizes = draw(st.lists(st.integers(1, 7), min_size=2, max_size=3))
    dense = draw(st.lists(st.integers(1, 7), max_size=2))
    classes = draw(st.integers(1, 5))
    valid = [sign << (bits - 1) | k for sign in (0, 1) for k in range(max_shift(bits) + 1)]
    code_el = st.sampled_from([*valid, zero_code(bits)])
    bias_el = st.one_of(st.sampled_from([-SOFTSIGN_LIMIT, SOFTSIGN_LIMIT, 0]),
                        st.integers(-SOFTSIGN_LIMIT, SOFTSIGN_LIMIT))

    def codes(r: int, c: int) -> np.ndarray:
        return draw(hnp.arrays(np.int64, (r, c), elements=code_el))

    def bias(r: int) -> np.ndarray:
        return draw(hnp.arrays(np.int64, (r,), elements=bias_el))

    layers = [QLayer(i, h, codes(2 * h, i + h), bias(2 * h))
              for i, h in zip(sizes[:-1], sizes[1:], strict=True)]
    widths = [sizes[-1], *dense]
    dl = [QDense(codes(d, n), bias(d)) for n, d in zip(widths[:-1], widths[1:], strict=True)]
    return DeployedEGRU(bits, layers, codes(classes, widths[-1]), bias(classes), dense=dl)


@st.composite
def models_and_inputs(draw) -> tuple[DeployedEGRU, np.ndarray]:
    m = draw(deployed_models())
    b, t = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    x = draw(hnp.arrays(np.int64, (b, t, m.input_size), elements=st.one_of(LIMITS, I16)))
    return m, x


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
@settings(max_examples=examples(12))
@given(models_and_inputs())
def test_c_equals_integer_reference(case: tuple[DeployedEGRU, np.ndarray]) -> None:
    m, x = case
    with tempfile.TemporaryDirectory() as d:
        exe = host.build_host(m, d)
        logits, hs, cls = host.run_host(exe, m, x)
    ref_logits, ref_hs = m.run(x)
    assert np.array_equal(logits, ref_logits)
    for a, b in zip(hs, ref_hs, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(cls, np.argmax(ref_logits, axis=1))
    for h in ref_hs:  # the states are int16 whatever the inputs
        assert h.min() >= -32768 and h.max() <= 32767
    if m.dense:  # dense outputs: Q15 in [0, 32767]
        v = m.dense_forward(ref_hs[-1])
        assert v.min() >= 0 and v.max() <= 32767


@settings(max_examples=examples(15))
@given(st.fixed_dictionaries({
    "features": st.integers(1, 10), "hidden": st.lists(st.integers(2, 10), min_size=1,
                                                       max_size=2),
    "dense": st.lists(st.integers(2, 10), max_size=1),
    "classes": st.integers(2, 5), "bits": st.sampled_from([2, 3, 4]),
    "batch": st.integers(1, 4), "steps": st.integers(1, 8), "seed": st.integers(0, 2**16)}))
def test_deployed_model_equals_the_quantisation_aware_network(c: dict) -> None:
    torch.manual_seed(c["seed"])
    net = KWSNet("egru-q", c["features"], tuple(c["hidden"]), c["classes"],
                 quant_bits=c["bits"], dense_sizes=tuple(c["dense"])).eval()
    x = torch.rand(c["steps"], c["batch"], c["features"]) * 2 - 1
    x = torch.from_numpy(to_q15(x) / 32768.0).float()  # features already on the Q15 grid
    with torch.no_grad():
        lf = (net(x) / net.logit_gain).double().numpy()
    li, _ = deploy(net).run(to_q15(x.numpy()).transpose(1, 0, 2))
    # the integer path rounds (floor shifts, Q15 states) at every step: a small drift
    assert np.abs(li / 32768 - lf).max() < 2e-2
    top2 = np.sort(lf, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 5e-2
    assert np.array_equal(li.argmax(1)[clear], lf.argmax(1)[clear])
