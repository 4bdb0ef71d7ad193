"""Row-panel decoder format (64-row panels, accumulators in registers) and its use in SparseLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualsparse.engine import kernels as K
from dualsparse.engine.lm import SparseLM, accumulate_decoder, pack_decoder
from dualsparse.engine.pack import PANEL_ROWS, PackedMatrix, PanelMatrix, pack_panels
from dualsparse.models.lm import RNNLanguageModel


def _weight(rows: int, cols: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0.0
    return w


@pytest.mark.parametrize("rows,cols,density", [(200, 24, 1.0), (130, 7, 0.3), (64, 5, 0.0)])
def test_pack_panels_roundtrip(rows, cols, density):
    w = _weight(rows, cols, density)
    p = pack_panels(w)
    np.testing.assert_array_equal(p.to_dense(), w)
    assert p.rows_padded % PANEL_ROWS == 0 and p.rows_padded >= rows
    assert p.nnz == np.count_nonzero(w)
    assert p.stored_values == PANEL_ROWS * int((p.colmap >= 0).sum())


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("density", [1.0, 0.2])
def test_accumulate_panels_equals_dense(batch, density):
    rng = np.random.default_rng(1)
    w = _weight(300, 40, density, seed=2)
    p = pack_panels(w)
    x = rng.standard_normal((40, batch)).astype(np.float32)
    x[rng.random((40, batch)) < 0.5] = 0.0
    active = np.zeros(40, dtype=np.int32)
    n = K.active_columns(x, active)
    out = np.zeros((p.rows_padded, batch), dtype=np.float32)
    out[:300] = 0.5
    accumulate_decoder(p, x, active, n, out)
    np.testing.assert_allclose(out[:300], 0.5 + w @ x, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(out[300:], 0.0)


def test_panels_sum_in_the_column_kernels_order():
    """Same additions in the same order as the (16, 1) column kernel: bitwise equal."""
    w = _weight(1000, 64, 1.0, seed=3)
    tiles = pack_decoder(torch.from_numpy(w), block=(16, 1))
    panels = pack_decoder(torch.from_numpy(w))
    assert isinstance(tiles, PackedMatrix) and isinstance(panels, PanelMatrix)
    x = np.random.default_rng(4).standard_normal((64, 1)).astype(np.float32)
    x[::3] = 0.0
    active = np.zeros(64, dtype=np.int32)
    n = K.active_columns(x, active)
    a = np.zeros((tiles.rows_padded, 1), dtype=np.float32)
    b = np.zeros((panels.rows_padded, 1), dtype=np.float32)
    accumulate_decoder(tiles, x, active, n, a)
    accumulate_decoder(panels, x, active, n, b)
    np.testing.assert_array_equal(a[:1000], b[:1000])


def test_pack_decoder_choice():
    dense = torch.from_numpy(_weight(256, 16, 1.0))
    sparse = torch.from_numpy(_weight(256, 16, 0.1))
    assert isinstance(pack_decoder(dense), PanelMatrix)
    assert isinstance(pack_decoder(sparse), PackedMatrix)  # panels would store ~10x nnz
    assert isinstance(pack_decoder(dense, threads=2), PackedMatrix)
    assert isinstance(pack_decoder(dense, block=(16, 1)), PackedMatrix)


@pytest.mark.parametrize("batch", [1, 2])
def test_sparse_lm_with_panel_decoder_equals_torch(batch):
    torch.manual_seed(0)
    lm = RNNLanguageModel(150, 16, [24, 16], cell="egru", tie_weights=True,
                          cell_options={"threshold_mean": 0.1}).eval()
    slm = SparseLM.from_model(lm)
    assert isinstance(slm.decoder, PanelMatrix)
    tokens = torch.randint(0, 150, (12, batch))
    with torch.no_grad():
        ref, _ = lm(tokens)
    torch.testing.assert_close(slm.run(tokens), ref, atol=2e-5, rtol=1e-4)
