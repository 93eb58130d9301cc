"""Small generated networks with the structures pruning must handle (residual adds, depthwise convs, concats,
a detector-like neck, a linear head). Used by the pruning and surgery tests. Also the seeded tiny detectors,
the one-thread context and the in-process CLI runner that many test files share."""
from __future__ import annotations

import contextlib
import io
from typing import Any, Iterator, List, Tuple

import torch
from torch import nn

from compress.detector import Detector, DetectorConfig

# A narrow detector (same graph structure as the default one) that builds, runs and exports in a fraction of a second.
TINY_DETECTOR = {"width_mult": 0.35, "neck_channels": 32, "head_channels": 32}


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """torch on ``n`` intra-op threads inside the block: the test machine has 2 cores, often shared with a training
    job, and one thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    """``jetson-compress ARGV`` in this process: (exit code, stdout, stderr)."""
    from jetson_compress.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def cbr(cin, cout, k=3, s=1, g=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = cbr(c, c)
        self.b = cbr(c, c, act=False)

    def forward(self, x):
        return torch.relu(x + self.b(self.a(x)))


class ResNetLike(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = cbr(3, 16)
        self.layer1 = nn.Sequential(BasicBlock(16), BasicBlock(16))
        self.down = cbr(16, 32, s=2)
        self.layer2 = nn.Sequential(BasicBlock(32), BasicBlock(32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer2(self.down(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvRes(nn.Module):
    def __init__(self, cin, cout, s, t):
        super().__init__()
        h = cin * t
        self.res = s == 1 and cin == cout
        self.conv = nn.Sequential(cbr(cin, h, 1), cbr(h, h, 3, s, g=h), cbr(h, cout, 1, act=False))

    def forward(self, x):
        return x + self.conv(x) if self.res else self.conv(x)


class MobileNetV2Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16, s=2)
        self.blocks = nn.Sequential(InvRes(16, 16, 1, 1), InvRes(16, 24, 2, 4), InvRes(24, 24, 1, 4),
                                    InvRes(24, 32, 2, 4), InvRes(32, 32, 1, 4), InvRes(32, 32, 1, 4))
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class UNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1 = cbr(3, 16)
        self.e2 = nn.Sequential(nn.MaxPool2d(2), cbr(16, 32))
        self.e3 = nn.Sequential(nn.MaxPool2d(2), cbr(32, 64))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.d2 = cbr(64 + 32, 32)
        self.d1 = cbr(32 + 16, 16)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        c = self.e3(b)
        d = self.d2(torch.cat([self.up(c), b], 1))
        return self.out(self.d1(torch.cat([self.up(d), a], 1)))


class NeckLike(nn.Module):
    """FPN/PAN-like: laterals, top-down upsample+concat, bottom-up stride-2 + concat, shared-input heads."""

    def __init__(self):
        super().__init__()
        self.c3 = cbr(3, 16, s=2)
        self.c4 = cbr(16, 24, s=2)
        self.c5 = cbr(24, 32, s=2)
        self.l3, self.l4, self.l5 = cbr(16, 16, 1), cbr(24, 16, 1), cbr(32, 16, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = cbr(32, 16, 1)
        self.td3 = cbr(32, 16, 1)
        self.dn3 = cbr(16, 16, 3, 2, g=16)
        self.bu4 = cbr(32, 16, 1)
        self.heads = nn.ModuleList([nn.Conv2d(16, 5, 1) for _ in range(3)])

    def forward(self, x):
        f3 = self.c3(x)
        f4 = self.c4(f3)
        f5 = self.c5(f4)
        p5 = self.l5(f5)
        p4 = self.td4(torch.cat([self.up(p5), self.l4(f4)], 1))
        p3 = self.td3(torch.cat([self.up(p4), self.l3(f3)], 1))
        n4 = self.bu4(torch.cat([self.dn3(p3), p4], 1)) + p4
        return [h(f) for h, f in zip(self.heads, (p3, n4, p5))]


GENERATED = {"resnet": ResNetLike, "mobilenetv2": MobileNetV2Like, "unet": UNetLike, "neck": NeckLike}


def randomise_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so masked channels are not accidentally zero."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


def tiny_config(input_size: int, **overrides: Any) -> DetectorConfig:
    """``TINY_DETECTOR`` at ``input_size``, with any other DetectorConfig field overridden."""
    return DetectorConfig(**{**TINY_DETECTOR, "input_size": input_size, **overrides})


def seeded_detector(config: DetectorConfig, seed: int = 0) -> Detector:
    """A freshly initialised Detector in eval mode, its weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return Detector(config).eval()


def random_detector(config: DetectorConfig, seed: int = 0) -> Tuple[Detector, torch.Generator]:
    """``seeded_detector`` with ``randomise_bn`` applied (non-trivial outputs); returns the model in eval mode and the
    generator (seeded with ``seed``) it drew from, for the test's further random draws."""
    gen = torch.Generator().manual_seed(seed)
    return randomise_bn(seeded_detector(config, seed), gen).eval(), gen
