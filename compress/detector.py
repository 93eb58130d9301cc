"""The pedestrian detector: MobileNetV2 trunk, a PAN neck (upsample + concat), anchor-free heads at strides 8/16/32.

Built only from operations TensorRT 8.2 runs well: Conv, BatchNorm, ReLU6 (ONNX Clip), Add, Concat, nearest
Resize with constant scale 2, Sigmoid, Exp. Each head predicts, per grid point, class logits and four distances
(left, top, right, bottom) in units of the stride (``exp`` of the raw value). In export mode the forward pass
decodes to boxes in input pixels and sigmoid scores, so the device only has to run NMS:

    boxes  (1, N, 4)  x1, y1, x2, y2 in letterboxed input pixels
    scores (1, N, C)  per-class probabilities

with N = sum over strides of (H/s)*(W/s), levels in order 8, 16, 32, row-major within a level.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from compress.mobilenetv2 import ConvBNAct, MobileNetV2Features, load_imagenet_weights, make_divisible

STRIDES: Tuple[int, ...] = (8, 16, 32)
ARCHITECTURE = "mnv2-pan-af"


@dataclass
class DetectorConfig:
    num_classes: int = 1
    width_mult: float = 1.0
    neck_channels: int = 96
    head_channels: int = 96
    input_size: int = 320
    architecture: str = ARCHITECTURE
    strides: List[int] = field(default_factory=lambda: list(STRIDES))

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "DetectorConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class NeckBlock(nn.Module):
    """Fuses concatenated features: 1x1 reduce -> 3x3 depthwise -> 1x1 project, each with BN + ReLU6."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.reduce = ConvBNAct(cin, cout, kernel=1)
        self.dw = ConvBNAct(cout, cout, kernel=3, groups=cout)
        self.project = ConvBNAct(cout, cout, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.dw(self.reduce(x)))


class Downsample(nn.Module):
    """Stride-2 3x3 depthwise + 1x1 pointwise."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = ConvBNAct(channels, channels, kernel=3, stride=2, groups=channels)
        self.pw = ConvBNAct(channels, channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class PANNeck(nn.Module):
    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        self.lateral3 = ConvBNAct(c3, channels, kernel=1)
        self.lateral4 = ConvBNAct(c4, channels, kernel=1)
        self.lateral5 = ConvBNAct(c5, channels, kernel=1)
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top_down4 = NeckBlock(2 * channels, channels)
        self.top_down3 = NeckBlock(2 * channels, channels)
        self.down3 = Downsample(channels)
        self.bottom_up4 = NeckBlock(2 * channels, channels)
        self.down4 = Downsample(channels)
        self.bottom_up5 = NeckBlock(2 * channels, channels)

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        c3, c4, c5 = feats
        p5 = self.lateral5(c5)
        p4 = self.top_down4(torch.cat([self.upsample(p5), self.lateral4(c4)], 1))
        p3 = self.top_down3(torch.cat([self.upsample(p4), self.lateral3(c3)], 1))
        n4 = self.bottom_up4(torch.cat([self.down3(p3), p4], 1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], 1))
        return [p3, n4, n5]


class Head(nn.Module):
    """Per-level head: two (3x3 depthwise + 1x1) stages, then a 1x1 prediction conv (C class logits + 4 distances)."""

    def __init__(self, cin: int, channels: int, num_classes: int, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.dw1 = ConvBNAct(cin, cin, kernel=3, groups=cin)
        self.pw1 = ConvBNAct(cin, channels, kernel=1)
        self.dw2 = ConvBNAct(channels, channels, kernel=3, groups=channels)
        self.pw2 = ConvBNAct(channels, channels, kernel=1)
        self.pred = nn.Conv2d(channels, num_classes + 4, 1)
        self.num_classes = num_classes
        nn.init.normal_(self.pred.weight, std=0.01)
        nn.init.zeros_(self.pred.bias)
        with torch.no_grad():
            self.pred.bias[:num_classes] = -torch.log(torch.tensor((1 - prior_prob) / prior_prob))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.pw2(self.dw2(self.pw1(self.dw1(x)))))


def grid_points(sizes: Sequence[Tuple[int, int]], strides: Sequence[int], device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centres (N, 2) in input pixels and the stride (N,) of every grid point, levels concatenated."""
    centres, level_strides = [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        c = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float().add_(0.5).mul_(s)
        centres.append(c)
        level_strides.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(centres), torch.cat(level_strides)


class Detector(nn.Module):
    # Distances are exp(raw) * stride; the clamp keeps training finite early on. Max distance 2^(10/ln2)... ~ e^8.
    MAX_LOG_DISTANCE = 8.0

    def __init__(self, config: Optional[DetectorConfig] = None, pretrained_backbone: bool = False,
                 weights_path: Optional[str] = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig()
        cfg = self.config
        self.backbone = MobileNetV2Features(cfg.width_mult)
        if pretrained_backbone:
            load_imagenet_weights(self.backbone, weights_path)
        neck_c = make_divisible(cfg.neck_channels * max(cfg.width_mult, 0.5))
        head_c = make_divisible(cfg.head_channels * max(cfg.width_mult, 0.5))
        self.neck = PANNeck(self.backbone.out_channels, neck_c)
        self.heads = nn.ModuleList([Head(neck_c, head_c, cfg.num_classes) for _ in cfg.strides])
        self.strides = tuple(cfg.strides)
        self.export_mode = False

    def raw_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats = self.neck(self.backbone(x))
        return [head(f) for head, f in zip(self.heads, feats)]

    def flatten(self, outs: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
        """Per-point class logits (B, N, C) and log-distances (B, N, 4)."""
        c = self.config.num_classes
        sizes = [(o.shape[2], o.shape[3]) for o in outs]
        flat = torch.cat([o.flatten(2) for o in outs], 2).transpose(1, 2)  # (B, N, C+4)
        return flat[..., :c], flat[..., c:], sizes

    def forward(self, x: torch.Tensor):
        outs = self.raw_outputs(x)
        if not self.export_mode:
            return outs
        logits, log_dist, sizes = self.flatten(outs)
        return self.decode(logits, log_dist, sizes)

    def decode(self, logits: torch.Tensor, log_dist: torch.Tensor, sizes: List[Tuple[int, int]]):
        centres, strides = grid_points(sizes, self.strides, device=logits.device)
        dist = torch.exp(log_dist.clamp(max=self.MAX_LOG_DISTANCE)) * strides[None, :, None]
        boxes = torch.cat([centres[None] - dist[..., :2], centres[None] + dist[..., 2:]], -1)
        return boxes, torch.sigmoid(logits)


def build_detector(config: Optional[DetectorConfig] = None, pretrained_backbone: bool = False,
                   weights_path: Optional[str] = None) -> Detector:
    return Detector(config, pretrained_backbone, weights_path)
