"""Group-aggregated channel magnitude (compress.criteria.group_l1): hand-computed scores and the choice it changes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.criteria import filter_l1, group_l1, select_channels
from compress.depgraph import build_dependency_graph
from tests.nets import GENERATED


class Chain(nn.Module):
    """conv a (3 -> 4) -> BN -> ReLU -> depthwise 3x3 -> conv b (4 -> 2): one prunable group of 4 channels, touched by
    a producer, a BatchNorm, a depthwise conv and a consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.b = nn.Conv2d(4, 2, 1, bias=False)

    def forward(self, x):
        return self.b(self.dw(torch.relu(self.bn(self.a(x)))))


def _chain() -> Chain:
    m = Chain().eval()
    with torch.no_grad():
        # per-channel mean |w| of each layer touching the group; signs must not matter
        m.a.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 2.5]).view(4, 1, 1, 1).expand(4, 3, 1, 1) * torch.tensor(
            [1.0, -1.0, 1.0]).view(1, 3, 1, 1))
        m.bn.weight.copy_(torch.tensor([6.0, 1.0, -1.0, 0.0]))
        m.dw.weight.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]).view(4, 1, 1, 1).expand(4, 1, 3, 3))
        m.b.weight.copy_(torch.tensor([1.0, 1.0, 3.0, 3.0]).view(1, 4, 1, 1).expand(2, 4, 1, 1) * -1.0)
    return m


def test_group_l1_hand_computed():
    m = _chain()
    dg = build_dependency_graph(m, 8)
    (g,) = dg.prunable_groups()
    mods = dict(m.named_modules())
    got = group_l1(dg, mods)[g.gid]
    # each layer's scores divided by their mean over the 4 channels, then the mean over the 4 layers
    producer = [1 / 2.125, 2 / 2.125, 3 / 2.125, 2.5 / 2.125]
    bn = [3.0, 0.5, 0.5, 0.0]
    dw = [1.0, 1.0, 1.0, 1.0]
    consumer = [0.5, 0.5, 1.5, 1.5]
    want = torch.tensor([sum(v) / 4 for v in zip(producer, bn, dw, consumer)])
    assert torch.allclose(got, want, atol=1e-6)
    # the producer's filter alone keeps channel 2; the group, read by the BatchNorm too, keeps channel 0
    assert select_channels(filter_l1(dg, mods), {g.gid: 1})[g.gid] == [2]
    assert select_channels(group_l1(dg, mods), {g.gid: 1})[g.gid] == [0]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_group_l1_scores_every_channel_of_every_prunable_group(name):
    torch.manual_seed(0)
    model = GENERATED[name]().eval()
    dg = build_dependency_graph(model, 32)
    scores = group_l1(dg, dict(model.named_modules()))
    assert set(scores) == {g.gid for g in dg.prunable_groups()}
    for g in dg.prunable_groups():
        assert scores[g.gid].shape == (g.size,)
        assert torch.isfinite(scores[g.gid]).all() and (scores[g.gid] >= 0).all()


def test_plan_pruning_chooses_channels_by_the_group_magnitude_on_the_detector():
    from compress.prune_pipeline import plan_pruning
    from tests.nets import random_detector, tiny_config

    det, _ = random_detector(tiny_config(64))
    by_group = plan_pruning(det, "l1", 0.5, channel_criterion="group-l1", round_to=8)
    by_filter = plan_pruning(det, "l1", 0.5, round_to=8)
    assert by_group["counts"] == by_filter["counts"]  # the criterion picks channels, not how many
    mods = dict(det.named_modules())
    assert by_group["keep"] == select_channels(group_l1(by_group["dg"], mods), by_group["counts"])
    assert by_group["keep"] != by_filter["keep"]
    with pytest.raises(ValueError, match="channel criterion 'nope'"):
        plan_pruning(det, "l1", 0.5, channel_criterion="nope")
