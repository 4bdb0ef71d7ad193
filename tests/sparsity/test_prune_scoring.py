"""Block scores on a hand-made matrix, selection, gates, global scope."""

import math

import pytest
import torch

from dualsparse.models import GRU, LSTM
from dualsparse.sparsity import Pruner, PruningSpec, Scoring, block_scores, parse_block
from dualsparse.sparsity.scoring import expand_blocks, select_lowest, to_blocks

W = torch.tensor([[1.0, -2.0, 0.0, 3.0],
                  [3.0, 4.0, 0.0, 0.0],
                  [-1.0, 1.0, 2.0, 2.0],
                  [1.0, 1.0, -2.0, 2.0]])

# 2x2 blocks: {1,2,3,4}, {0,3,0,0}, {1,1,1,1}, {2,2,2,2}
EXPECTED = {
    "max": [[4.0, 3.0], [1.0, 2.0]],
    "mean": [[2.5, 0.75], [1.0, 2.0]],
    "rms": [[math.sqrt(7.5), 1.5], [1.0, 2.0]],
    "geomean": [[24 ** 0.25, 0.0], [1.0, 2.0]],
    "median": [[2.5, 0.0], [1.0, 2.0]],
}


@pytest.mark.parametrize("stat", list(EXPECTED))
def test_block_scores_hand_made(stat):
    got = block_scores(W, (2, 2), stat)
    torch.testing.assert_close(got, torch.tensor(EXPECTED[stat]))


def test_block_scores_other_shapes():
    torch.testing.assert_close(block_scores(W, (1, 1), "median"), W.abs())
    torch.testing.assert_close(block_scores(W, (4, 1), "max"), torch.tensor([[3.0, 4, 2, 3]]))
    torch.testing.assert_close(block_scores(W, (1, 4), "mean"),
                               torch.tensor([[1.5], [1.75], [1.5], [1.5]]))
    # odd count median: the middle value
    torch.testing.assert_close(block_scores(torch.tensor([[3.0, -1.0, 2.0]]), (1, 3), "median"),
                               torch.tensor([[2.0]]))


def test_tiling_round_trip_and_bad_shapes():
    x = torch.arange(48.0).reshape(6, 8)
    b = to_blocks(x, (3, 2))
    assert b.shape == (2, 4, 6)
    assert b[1, 2].tolist() == [28.0, 29.0, 36.0, 37.0, 44.0, 45.0]
    assert expand_blocks(torch.tensor([[True, False]]), (2, 3)).tolist() == [
        [True] * 3 + [False] * 3] * 2
    with pytest.raises(ValueError, match="does not tile"):
        block_scores(x, (4, 4))
    with pytest.raises(ValueError, match="unknown block score"):
        block_scores(x, (1, 1), "l3")
    assert parse_block("16x1") == (16, 1)
    for bad in ("4", "4x", "0x4", "axb", "4x4x4"):
        with pytest.raises(ValueError, match="block shape"):
            parse_block(bad)


def test_select_lowest_counts_and_keeps_pruned():
    scores = torch.tensor([0.5, 0.1, -math.inf, 0.3, 0.3, 0.9], dtype=torch.float64)
    sizes = torch.ones(6, dtype=torch.float64)
    assert select_lowest(scores, sizes, 3.0).tolist() == [False, True, True, True, False, False]
    # ties broken by position; already pruned stays pruned even with target 0
    assert select_lowest(scores, sizes, 0.0).tolist() == [False, False, True, False, False,
                                                          False]
    with pytest.raises(ValueError, match="NaN"):
        select_lowest(torch.tensor([float("nan")]), torch.ones(1), 1.0)


@pytest.mark.parametrize("stat", list(EXPECTED))
def test_block_pruning_removes_lowest_scoring_blocks(stat):
    lin = torch.nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.copy_(W)
    pruner = Pruner(lin, PruningSpec(["weight"], sparsity=0.5, block=(2, 2)),
                    scoring=Scoring(stat))
    pruner.prune_to(1.0)
    keep_blocks = to_blocks(pruner.masks.mask("weight"), (2, 2)).all(-1)
    order = torch.tensor(EXPECTED[stat]).flatten().argsort(stable=True)
    expected = torch.ones(4, dtype=torch.bool)
    expected[order[:2]] = False
    assert keep_blocks.flatten().tolist() == expected.tolist()


def test_blocks_never_cross_gates():
    # 4 gates x 6 rows = 24 rows: 4-row blocks tile the tensor but would straddle gates
    with pytest.raises(ValueError, match="gate 'i' \\(6 rows\\).*cross a gate"):
        Pruner(LSTM(4, 6), PruningSpec(["weight_hh_l0"], sparsity=0.5, block=(4, 1)))
    with pytest.raises(ValueError, match="columns"):
        Pruner(GRU(5, 6), PruningSpec(["weight_ih_l0"], sparsity=0.5, block=(3, 2)))
    pruner = Pruner(GRU(4, 6), PruningSpec(["weight_hh_l0"], sparsity=0.5, block=(3, 2)))
    pruner.prune_to(1.0)
    keep = pruner.masks.mask("weight_hh_l0")
    blocks = to_blocks(keep, (3, 2))
    assert torch.equal(blocks.all(-1), blocks.any(-1))


def test_per_gate_targets_are_ranked_per_gate():
    torch.manual_seed(0)
    gru = GRU(4, 8)
    with torch.no_grad():
        gru.weight_hh_l0[:8] *= 100  # gate r much larger: a tensor-wide ranking would spare it
    spec = PruningSpec([{"name": "weight_hh_l0", "sparsity": {"r": 0.5, "n": 0.25}}],
                       sparsity=0.75)
    pruner = Pruner(gru, spec)
    pruner.prune_to(1.0)
    assert pruner.report()[0]["gate_sparsity"] == pytest.approx({"r": 0.5, "z": 0.75,
                                                                 "n": 0.25})
    whole = Pruner(GRU(4, 8), PruningSpec(["weight_hh_l0"], sparsity=0.5))
    whole.prune_to(1.0)
    assert whole.sparsity() == pytest.approx(0.5)


def test_global_scope_ranks_tensors_together():
    torch.manual_seed(0)
    gru = GRU(4, 8, num_layers=2)
    with torch.no_grad():
        gru.weight_hh_l0.copy_(gru.weight_hh_l0.sign() * (gru.weight_hh_l0.abs() + 0.1))
        gru.weight_hh_l1.mul_(0.01)  # tiny weights: global ranking prunes them first
    pruner = Pruner(gru, PruningSpec(["weight_hh_l*"], sparsity=0.5), scoring=Scoring(
        "max", "global"))
    pruner.prune_to(1.0)
    rep = {r["name"]: r for r in pruner.report()}
    assert rep["weight_hh_l1"]["sparsity"] == 1.0
    assert rep["weight_hh_l0"]["sparsity"] == 0.0
    assert pruner.sparsity() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="global scope"):
        Pruner(GRU(4, 8), PruningSpec([{"name": "weight_hh_l0", "sparsity": 0.3}]),
               scoring=Scoring("max", "global"))


def test_report_fanout_histogram():
    lin = torch.nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.copy_(W)
    pruner = Pruner(lin, PruningSpec(["weight"], sparsity=0.25))
    pruner.prune_to(1.0)  # removes 4 weights: the three zeros and one |w| = 1 (first by index)
    rep = pruner.report(bins=4)[0]
    keep = pruner.masks.mask("weight")
    assert rep["nonzero"] == 12 and rep["blocks"] == 16 and rep["nonzero_blocks"] == 12
    fan = keep.sum(0).tolist()
    assert rep["fanout"]["min"] == min(fan) and rep["fanout"]["max"] == max(fan)
    assert rep["fanout_histogram"]["edges"] == [0, 1, 2, 3, 4]
    counts = [0, 0, 0, 0]
    for f in fan:
        counts[min(f, 3)] += 1
    assert rep["fanout_histogram"]["counts"] == counts
    assert sum(counts) == 4
