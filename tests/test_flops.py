"""FLOP / parameter counting: exact hand-computed MACs and parameter counts on tiny models."""

import pytest
import torch
from torch import nn

from compress.flops import LayerCost, ModelCost, count_flops_params


def test_single_conv():
    conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
    cost = count_flops_params(conv, (1, 3, 32, 32))
    assert isinstance(cost, ModelCost)
    # output 16 x 16 x 16, each a 3 x 3 x 3 dot product; the bias add is not a MAC.
    assert cost.macs == 16 * 16 * 16 * 3 * 3 * 3 == 110592
    assert cost.flops == 2 * cost.macs
    assert cost.params == 16 * 3 * 3 * 3 + 16
    assert cost.per_layer == [LayerCost("", "Conv2d", 110592, 448, (1, 16, 16, 16))]


def test_batch_counts_linearly():
    conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
    assert count_flops_params(conv, (2, 3, 32, 32)).macs == 2 * 110592


def test_depthwise_and_grouped_conv():
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    cost = count_flops_params(depthwise, (1, 8, 10, 10))
    assert cost.macs == 8 * 10 * 10 * 1 * 3 * 3 == 7200
    assert cost.params == 8 * 1 * 3 * 3

    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)
    cost = count_flops_params(grouped, (1, 8, 10, 10))
    assert cost.macs == 16 * 10 * 10 * (8 // 4) * 3 * 3 == 28800
    assert cost.params == 16 * 2 * 3 * 3 + 16


def test_conv_transpose():
    # Every input element is scattered over a 2 x 2 window of each of the 2 output channels.
    deconv = nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2)
    cost = count_flops_params(deconv, (1, 4, 5, 5))
    assert cost.macs == 4 * 5 * 5 * 2 * 2 * 2 == 800
    assert cost.params == 4 * 2 * 2 * 2 + 2
    assert cost.per_layer[0].output_shape == (1, 2, 10, 10)


def test_linear():
    linear = nn.Linear(20, 5)
    cost = count_flops_params(linear, (4, 20))
    assert cost.macs == 4 * 20 * 5 == 400
    assert cost.params == 20 * 5 + 5
    # Leading dimensions all count as rows.
    assert count_flops_params(linear, (2, 3, 20)).macs == 6 * 20 * 5


def _small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 0
        nn.BatchNorm2d(8),  # 1
        nn.ReLU(),  # 2
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # 3: depthwise
        nn.AdaptiveAvgPool2d(1),  # 4
        nn.Flatten(),  # 5
        nn.Linear(8, 10),  # 6
    )


def test_small_sequential():
    net = _small_net()
    cost = count_flops_params(net, (1, 3, 16, 16))
    conv_macs = 8 * 16 * 16 * 3 * 3 * 3
    depthwise_macs = 8 * 16 * 16 * 9
    linear_macs = 8 * 10
    assert cost.macs == conv_macs + depthwise_macs + linear_macs == 73808
    assert cost.flops == 2 * 73808
    # BN weight and bias are parameters (running stats are buffers).
    assert cost.params == 216 + 16 + (72 + 8) + (80 + 10) == 402
    assert [(layer.name, layer.type, layer.macs, layer.params, layer.output_shape) for layer in cost.per_layer] == [
        ("0", "Conv2d", conv_macs, 216, (1, 8, 16, 16)),
        ("3", "Conv2d", depthwise_macs, 80, (1, 8, 16, 16)),
        ("6", "Linear", linear_macs, 90, (1, 10)),
    ]


def test_include_bn():
    net = _small_net()
    cost = count_flops_params(net, (1, 3, 16, 16), include_bn=True)
    assert cost.macs == 73808 + 8 * 16 * 16
    assert [layer.type for layer in cost.per_layer] == ["Conv2d", "BatchNorm2d", "Conv2d", "Linear"]
    assert cost.per_layer[1] == LayerCost("1", "BatchNorm2d", 2048, 16, (1, 8, 16, 16))
    assert cost.params == 402


def test_shared_module_and_tied_parameters():
    linear = nn.Linear(6, 6)
    twice = nn.Sequential(linear, linear)
    cost = count_flops_params(twice, (1, 6))
    assert cost.macs == 2 * 36
    assert len(cost.per_layer) == 2
    assert cost.params == 42  # one tensor set, counted once

    tied = nn.Sequential(nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False))
    tied[1].weight = tied[0].weight
    assert count_flops_params(tied, (1, 6)).params == 36


class _Probe(nn.Module):
    """Records the mode and grad state it is called in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return x


def test_mode_is_eval_during_count_and_restored_after():
    probe = _Probe()
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), probe)
    net.train()
    net[1].eval()  # e.g. a frozen BN inside a training model: must stay as it was
    count_flops_params(net, (1, 3, 4, 4))
    assert probe.seen == [(False, False)]  # eval mode, no grad
    assert net.training and net[0].training and probe.training
    assert not net[1].training
    assert int(net[1].num_batches_tracked) == 0  # eval BN did not update its statistics

    net.eval()
    count_flops_params(net, (1, 3, 4, 4))
    assert not any(module.training for module in net.modules())


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_mode_and_hooks_restored_when_forward_raises():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _Broken())
    net.train()
    with pytest.raises(RuntimeError, match="boom"):
        count_flops_params(net, (1, 3, 4, 4))
    assert all(module.training for module in net.modules())
    assert not net[0]._forward_hooks
