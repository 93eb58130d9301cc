"""MobileNetV2 backbone, written here because there is no CPU build of torchvision.

Module names follow torchvision's ``features.*`` layout exactly, so torchvision's ImageNet checkpoint
(``mobilenet_v2-b0353104.pth``) loads without renaming. The weights file is verified by sha256 whichever way it
arrives (a local file, the cache, or torchvision's download address).
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

IMAGENET_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
IMAGENET_WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
IMAGENET_WEIGHTS_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
WEIGHTS_ENV_VAR = "JETSON_COMPRESS_WEIGHTS"

# t (expansion), c (channels), n (repeats), s (first stride) -- the MobileNetV2 paper's table 2.
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6 (or identity). Indices 0/1/2 match torchvision."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: List[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        self.stride = stride
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(cin, hidden, kernel=1))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Features(nn.Module):
    """The ``features`` trunk of MobileNetV2; returns the stride-8/16/32 feature maps.

    ``features`` indices: 0 stem; 1..17 inverted residuals; 18 is the 1280-channel 1x1 conv, which a detector
    does not need and which is therefore left out (``include_last=False``).
    """

    # Index of the last block of each output stride in torchvision's features list.
    STRIDE_TAPS = {8: 6, 16: 13, 32: 17}

    def __init__(self, width_mult: float = 1.0, include_last: bool = False) -> None:
        super().__init__()
        cin = make_divisible(32 * width_mult)
        features: List[nn.Module] = [ConvBNAct(3, cin, stride=2)]
        self.block_channels: List[int] = [cin]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
                self.block_channels.append(cout)
        if include_last:
            last = make_divisible(1280 * max(1.0, width_mult))
            features.append(ConvBNAct(cin, last, kernel=1))
            self.block_channels.append(last)
        self.features = nn.Sequential(*features)
        self.width_mult = width_mult
        self.out_channels = [self.block_channels[self.STRIDE_TAPS[s]] for s in (8, 16, 32)]

    def residual_streams(self, max_stride: int = 8) -> List[str]:
        """Names (under this trunk) of the projection convolutions that open a residual stream -- a stage's first
        block, whose output later blocks add to -- at output strides up to ``max_stride``. Each names one coupled
        channel group of the pruning graph: the thin linear bottleneck that carries the stage's features (24 and 32
        channels at strides 4 and 8 for width 1.0), the only path for fine detail to the stride-8 head."""
        names, stride = [], 2  # the stem halves the input
        blocks = list(self.features)
        for i in range(1, len(blocks)):
            block = blocks[i]
            if not isinstance(block, InvertedResidual):
                continue
            stride *= block.stride
            opens = (not block.use_res_connect and i + 1 < len(blocks)
                     and getattr(blocks[i + 1], "use_res_connect", False))
            if opens and stride <= max_stride:
                names.append(f"features.{i}.conv.{len(block.conv) - 2}")
        return names

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (6, 13, 17):
                outs.append(x)
        return outs


def sha256_of(path: os.PathLike | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _candidate_weight_paths() -> List[Path]:
    here = Path(__file__).resolve().parent.parent
    paths = []
    if os.environ.get(WEIGHTS_ENV_VAR):
        paths.append(Path(os.environ[WEIGHTS_ENV_VAR]))
    paths += [
        here.parent / "shared" / "data" / "weights" / IMAGENET_WEIGHTS_FILE,  # this project's CI layout
        Path.cwd().parent / "shared" / "data" / "weights" / IMAGENET_WEIGHTS_FILE,
        Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS_FILE,  # torchvision's cache
        Path.home() / ".cache" / "jetson-compress" / IMAGENET_WEIGHTS_FILE,
    ]
    return paths


def find_imagenet_weights(path: Optional[str] = None, download: bool = True) -> Path:
    """Locate (or download into the cache) the ImageNet MobileNetV2 weights and verify their sha256."""
    candidates = [Path(path)] if path else _candidate_weight_paths()
    for cand in candidates:
        if cand.is_file():
            actual = sha256_of(cand)
            if actual != IMAGENET_WEIGHTS_SHA256:
                raise ValueError(
                    f"{cand}: sha256 {actual} does not match the ImageNet MobileNetV2 weights "
                    f"({IMAGENET_WEIGHTS_SHA256})"
                )
            return cand
    if path:
        raise FileNotFoundError(f"{path}: ImageNet weights file not found")
    if not download:
        raise FileNotFoundError(
            f"ImageNet MobileNetV2 weights not found; looked in {[str(c) for c in candidates]}. "
            f"Set ${WEIGHTS_ENV_VAR} to {IMAGENET_WEIGHTS_FILE}."
        )
    target = Path.home() / ".cache" / "jetson-compress" / IMAGENET_WEIGHTS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        urllib.request.urlretrieve(IMAGENET_WEIGHTS_URL, tmp)
    except OSError as exc:
        raise FileNotFoundError(
            f"ImageNet MobileNetV2 weights not found locally and the download from {IMAGENET_WEIGHTS_URL} failed "
            f"({exc}). Put {IMAGENET_WEIGHTS_FILE} somewhere and set ${WEIGHTS_ENV_VAR} to it."
        ) from None
    if sha256_of(tmp) != IMAGENET_WEIGHTS_SHA256:
        tmp.unlink()
        raise ValueError(f"{IMAGENET_WEIGHTS_URL}: downloaded file has the wrong sha256")
    os.replace(tmp, target)
    return target


def load_imagenet_weights(trunk: MobileNetV2Features, path: Optional[str] = None) -> Dict[str, int]:
    """Load torchvision's ImageNet weights into ``trunk``. For width != 1 the leading channels are taken.

    Returns counts of loaded and sliced tensors.
    """
    weights_path = find_imagenet_weights(path)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    own = trunk.state_dict()
    loaded = sliced = 0
    new_state = {}
    for name, tensor in own.items():
        src = state.get(name)
        if src is None:
            continue
        if src.shape == tensor.shape:
            new_state[name] = src
            loaded += 1
        elif src.dim() == tensor.dim() and all(a >= b for a, b in zip(src.shape, tensor.shape)):
            new_state[name] = src[tuple(slice(0, n) for n in tensor.shape)].clone()
            sliced += 1
    missing = [k for k in own if k not in new_state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{weights_path}: {len(missing)} backbone tensors could not be loaded, e.g. {missing[:3]}")
    trunk.load_state_dict(new_state, strict=False)
    return {"loaded": loaded, "sliced": sliced}
