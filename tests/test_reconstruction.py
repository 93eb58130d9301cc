"""Reconstruction-aware channel selection (compress.criteria.reconstruction / greedy_elimination): the deletion
formula against brute-force least squares, the redundancy it sees and magnitude does not, and the detector path."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.compensation import compensate
from compress.criteria import greedy_elimination, group_l1, reconstruction, select_channels
from compress.depgraph import build_dependency_graph
from compress.pruning import prune_groups
from tests.nets import GENERATED, random_detector, tiny_config, torch_threads


def _refit_error(x: torch.Tensor, w: torch.Tensor, kept: list) -> float:
    """||X W^T - X_K B||^2 with B the exact least-squares fit on the kept columns K."""
    y = x @ w.t()
    xk = x[:, kept]
    b = torch.linalg.lstsq(xk, y).solution
    return float((y - xk @ b).pow(2).sum())


def test_greedy_elimination_matches_brute_force_least_squares():
    gen = torch.Generator().manual_seed(3)
    size = 7
    # consumer 1 reads the group's 7 channels at offset 3, after 3 channels of another group; consumer 2 reads them alone
    mix = torch.randn(10, 10, generator=gen, dtype=torch.float64)
    x1 = torch.randn(300, 10, generator=gen, dtype=torch.float64) @ mix  # correlated inputs
    w1 = torch.randn(5, 10, generator=gen, dtype=torch.float64)
    x2 = x1[:, 3:] @ torch.randn(7, 7, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(300, 7, generator=gen,
                                                                                               dtype=torch.float64)
    w2 = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    consumers = [(x1.t() @ x1, w1, 3), (x2.t() @ x2, w2, 0)]
    order = greedy_elimination(consumers, size, 5, ridge=0.0)

    energy1 = float((x1 @ w1.t()).pow(2).sum())
    energy2 = float((x2 @ w2.t()).pow(2).sum())
    removed: list = []
    brute = []
    for _ in range(5):
        costs = {}
        for j in range(size):
            if j in removed:
                continue
            gone = set(removed + [j])
            k1 = [0, 1, 2] + [3 + c for c in range(size) if c not in gone]
            k2 = [c for c in range(size) if c not in gone]
            costs[j] = _refit_error(x1, w1, k1) / energy1 + _refit_error(x2, w2, k2) / energy2
        j = min(costs, key=costs.get)
        removed.append(j)
        brute.append(j)
    assert order == brute


class Pair(nn.Module):
    """conv a (3 -> 4) -> BN -> ReLU -> conv b (4 -> 3), 1x1: one prunable group of 4 channels read by one 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 3, 1, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


def _pair_with_a_duplicate() -> Pair:
    m = Pair().eval()
    with torch.no_grad():
        m.a.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.1, -0.1], [-0.5, 1.0, 1.0], [1.0, -1.0, 0.5]])
                         .view(4, 3, 1, 1))  # channel 3 repeats channel 0: the activations are equal
        m.bn.weight.copy_(torch.tensor([2.0, 3.0, 1.5, 2.0]))
        m.bn.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.1]))
        m.b.weight.copy_(torch.tensor([[1.0, 1.0, -1.0, 3.0], [0.5, -1.0, 1.0, 3.0], [-1.0, 1.0, 0.5, -3.0]])
                         .view(3, 4, 1, 1))
    return m


def test_reconstruction_removes_the_channel_the_others_reproduce():
    torch.manual_seed(0)
    m = _pair_with_a_duplicate()
    dg = build_dependency_graph(m, 8)
    (g,) = dg.prunable_groups()
    calib = torch.randn(8, 3, 8, 8)
    counts = {g.gid: 3}
    by_magnitude = select_channels(group_l1(dg, dict(m.named_modules())), counts)[g.gid]
    by_rebuild = select_channels(reconstruction(m, dg, counts, calib), counts)[g.gid]
    assert by_magnitude == [0, 2, 3]  # channel 1's filter is the smallest: magnitude removes it
    assert by_rebuild in ([0, 1, 2], [1, 2, 3])  # one of the two equal channels goes
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        want = m(x)
    errors = {}
    for name, kept in (("magnitude", by_magnitude), ("rebuild", by_rebuild)):
        pruned = copy.deepcopy(m)
        layers = prune_groups(pruned, dg, {g.gid: kept})
        compensate(m, pruned, layers, calib, ridge=1e-6)
        with torch.no_grad():
            errors[name] = float((pruned(x) - want).abs().max())
    assert errors["rebuild"] < 1e-3  # the duplicate's weight moves to its twin: the output is unchanged
    assert errors["magnitude"] > 1.0  # measured 3.1e-5 against 2.37


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_reconstruction_keeps_the_counts_on_every_generated_network(name):
    torch.manual_seed(0)
    model = GENERATED[name]().eval()
    dg = build_dependency_graph(model, 32)
    counts = {g.gid: max(1, g.size // 2) for g in dg.prunable_groups()}
    with torch_threads(1):
        scores = reconstruction(model, dg, counts, torch.randn(4, 3, 32, 32))
    assert set(scores) == {g.gid for g in dg.prunable_groups()}
    keep = select_channels(scores, counts)
    for g in dg.prunable_groups():
        assert scores[g.gid].shape == (g.size,) and torch.isfinite(scores[g.gid]).all()
        if counts[g.gid] < g.size:
            assert len(keep[g.gid]) == counts[g.gid]


def test_plan_pruning_with_the_reconstruction_criterion_on_the_detector():
    from compress.prune_pipeline import plan_pruning, prune_detector

    det, gen = random_detector(tiny_config(64))
    calib = torch.rand(8, 3, 64, 64, generator=gen)
    with torch_threads(1):
        by_rebuild = plan_pruning(det, "l1", 0.5, calib, channel_criterion="reconstruction", round_to=8)
        by_magnitude = plan_pruning(det, "l1", 0.5, calib, channel_criterion="group-l1", round_to=8)
        assert by_rebuild["counts"] == by_magnitude["counts"]  # the criterion picks channels, not how many
        assert by_rebuild["keep"] != by_magnitude["keep"]
        # on the images it was chosen on, the compensated cut rebuilds the consumers' inputs better
        errs = {}
        with torch.no_grad():
            want = det.raw_outputs(calib)
            for name, dec in (("rebuild", by_rebuild), ("magnitude", by_magnitude)):
                pruned = prune_detector(det, dec, "l1", {"kind": "flops", "reduction": 0.5}, 8, compensate_with=calib)
                got = pruned["model"].raw_outputs(calib)
                errs[name] = sum(float((a - b).pow(2).mean()) for a, b in zip(got, want))
    assert errs["rebuild"] < 0.5 * errs["magnitude"]  # measured 6.6e-9 against 1.6e-7
    with pytest.raises(ValueError, match="needs calibration images"):
        plan_pruning(det, "l1", 0.5, None, channel_criterion="reconstruction")
