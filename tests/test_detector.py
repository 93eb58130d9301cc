"""MobileNetV2 backbone (real ImageNet weights, sha256-checked) and the anchor-free detector: shapes, decoding, ops."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

from compress.detector import Detector, DetectorConfig, grid_points
from compress.mobilenetv2 import (
    IMAGENET_WEIGHTS_FILE,
    ConvBNAct,
    InvertedResidual,
    MobileNetV2Features,
    find_imagenet_weights,
    load_imagenet_weights,
)
from tests.conftest import SHARED_DATA

WEIGHTS = SHARED_DATA / "weights" / IMAGENET_WEIGHTS_FILE


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights_path():
    if not WEIGHTS.is_file():
        pytest.fail(f"{WEIGHTS} is missing: the tests expect ../shared/data beside the repository")
    return WEIGHTS


@pytest.fixture(scope="module")
def imagenet_state(weights_path):
    return torch.load(weights_path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------- backbone


def test_torchvision_layout_names_and_shapes():
    trunk = MobileNetV2Features(1.0)
    sd = trunk.state_dict()
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # block 1: no expansion, depthwise first
    assert sd["features.1.conv.1.weight"].shape == (16, 32, 1, 1)
    assert sd["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)  # expand 16 * 6
    assert sd["features.17.conv.2.weight"].shape == (320, 960, 1, 1)
    assert sd["features.17.conv.3.running_var"].shape == (320,)
    assert len(trunk.features) == 18  # stem + 17 inverted residuals, no 1280-channel conv
    assert "features.18.0.weight" not in sd
    assert trunk.out_channels == [32, 96, 320]
    assert MobileNetV2Features(0.5).out_channels == [16, 48, 160]


def test_imagenet_weights_load_exactly(weights_path, imagenet_state):
    trunk = MobileNetV2Features(1.0)
    own = trunk.state_dict()
    counts = load_imagenet_weights(trunk, str(weights_path))
    # Every tensor of the trunk, BN running stats and num_batches_tracked included, comes from the file.
    assert len(own) == 306
    assert counts == {"loaded": 306, "sliced": 0}
    for name, tensor in trunk.state_dict().items():
        assert torch.equal(tensor, imagenet_state[name]), name
    # The file's extra tensors are only the 1280-channel conv (features.18) and the classifier.
    extra = {k.split(".")[0] + "." + k.split(".")[1] for k in imagenet_state if k not in own}
    assert extra == {"features.18", "classifier.1"}


def test_imagenet_weights_sliced_for_narrow_width(weights_path, imagenet_state):
    trunk = MobileNetV2Features(0.35)
    counts = load_imagenet_weights(trunk, str(weights_path))
    assert counts["loaded"] + counts["sliced"] == len(trunk.state_dict()) == 306
    assert counts["sliced"] == 255
    stem = trunk.state_dict()["features.0.0.weight"]
    assert stem.shape == (16, 3, 3, 3)
    assert torch.equal(stem, imagenet_state["features.0.0.weight"][:16])
    last = trunk.state_dict()["features.17.conv.2.weight"]
    assert last.shape == (112, 336, 1, 1)  # cin 56 * 6
    assert torch.equal(last, imagenet_state["features.17.conv.2.weight"][:112, :336])


def test_imagenet_weights_sha256_checked(tmp_path, weights_path):
    assert find_imagenet_weights(str(weights_path)) == weights_path
    bad = tmp_path / IMAGENET_WEIGHTS_FILE
    shutil.copyfile(weights_path, bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256") as info:
        find_imagenet_weights(str(bad))
    assert str(bad) in str(info.value)
    with pytest.raises(ValueError) as info:
        load_imagenet_weights(MobileNetV2Features(0.35), str(bad))
    assert str(bad) in str(info.value)
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as info:
        find_imagenet_weights(str(missing))
    assert str(missing) in str(info.value)


def test_residual_connections():
    trunk = MobileNetV2Features(1.0)
    blocks = list(trunk.features)[1:]
    assert all(isinstance(b, InvertedResidual) for b in blocks)
    # Residual where stride 1 and cin == cout: blocks 3, 5, 6, 8, 9, 10, 12, 13, 15, 16.
    assert [i for i, b in enumerate(trunk.features) if getattr(b, "use_res_connect", False)] == [
        3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    feats = trunk(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 8, 8), (1, 96, 4, 4), (1, 320, 2, 2)]


# ---------------------------------------------------------------------------------------------- detector


@pytest.fixture(scope="module")
def detector_320():
    torch.manual_seed(0)
    return Detector(DetectorConfig(num_classes=1, width_mult=1.0, input_size=320)).eval()


def test_raw_outputs_at_320(detector_320):
    with torch.no_grad():
        outs = detector_320(torch.randn(2, 3, 320, 320))
    assert [tuple(o.shape) for o in outs] == [(2, 5, 40, 40), (2, 5, 20, 20), (2, 5, 10, 10)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_export_mode_at_320(detector_320):
    detector_320.export_mode = True
    try:
        with torch.no_grad():
            boxes, scores = detector_320(torch.randn(1, 3, 320, 320))
    finally:
        detector_320.export_mode = False
    assert tuple(boxes.shape) == (1, 40 * 40 + 20 * 20 + 10 * 10, 4) == (1, 2100, 4)
    assert tuple(scores.shape) == (1, 2100, 1)
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    # Prior 0.01 on the class bias and tiny pred weights: scores start near 0.01.
    assert abs(float(scores.mean()) - 0.01) < 0.005
    assert bool((boxes[..., 2] >= boxes[..., 0]).all()) and bool((boxes[..., 3] >= boxes[..., 1]).all())


def test_grid_points_order():
    centres, strides = grid_points([(2, 3), (1, 2)], (8, 16))
    assert centres.tolist() == [
        [4.0, 4.0], [12.0, 4.0], [20.0, 4.0],  # level 8, row 0 (x varies fastest)
        [4.0, 12.0], [12.0, 12.0], [20.0, 12.0],  # level 8, row 1
        [8.0, 8.0], [24.0, 8.0],  # level 16
    ]
    assert strides.tolist() == [8.0] * 6 + [16.0] * 2


def test_decode_known_values():
    torch.manual_seed(0)
    model = Detector(DetectorConfig(num_classes=1, width_mult=0.35, input_size=64)).eval()
    values = {0: [0.0, 0.0, math.log(2.0), math.log(4.0), 1.0],  # [logit, l, t, r, b] per level
              1: [2.0, math.log(0.5), 0.0, 0.0, 0.0],
              2: [-3.0, 10.0, 0.0, 0.0, 0.0]}  # log-distance 10 is clamped to MAX_LOG_DISTANCE
    with torch.no_grad():
        for level, head in enumerate(model.heads):
            head.pred.weight.zero_()
            head.pred.bias.copy_(torch.tensor(values[level]))
        model.export_mode = True
        boxes, scores = model(torch.randn(1, 3, 64, 64))
    assert tuple(boxes.shape) == (1, 64 + 16 + 4, 4)
    # Level 8 (8x8 grid), point x=3, y=2: centre (28, 20); distances l=1*8, t=2*8, r=4*8, b=e*8.
    i = 2 * 8 + 3
    e = float(torch.exp(torch.tensor(1.0)))
    assert boxes[0, i].tolist() == [28.0 - 8.0, 20.0 - 16.0, 28.0 + 32.0, pytest.approx(20.0 + 8.0 * e, abs=1e-5)]
    assert float(scores[0, i, 0]) == 0.5
    # Level 16 (4x4 grid), point x=1, y=3: centre (24, 56); l = 0.5 * 16, others 16.
    j = 64 + 3 * 4 + 1
    assert boxes[0, j].tolist() == [24.0 - 8.0, 56.0 - 16.0, 24.0 + 16.0, 56.0 + 16.0]
    assert float(scores[0, j, 0]) == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-6)
    # Level 32 (2x2 grid), point x=0, y=0: centre (16, 16); l = exp(8) * 32 (clamped).
    k = 64 + 16
    assert Detector.MAX_LOG_DISTANCE == 8.0
    assert float(boxes[0, k, 0]) == pytest.approx(16.0 - math.exp(8.0) * 32.0, rel=1e-6)
    assert boxes[0, k, 1:].tolist() == [16.0 - 32.0, 16.0 + 32.0, 16.0 + 32.0]
    assert float(scores[0, k, 0]) == pytest.approx(1 / (1 + math.exp(3.0)), abs=1e-6)


ALLOWED_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, nn.Upsample)


def test_only_tensorrt_friendly_modules():
    from compress import detector as det

    model = Detector(DetectorConfig(width_mult=0.35, input_size=64))
    containers = (nn.Sequential, nn.ModuleList, ConvBNAct, InvertedResidual, MobileNetV2Features, det.NeckBlock,
                  det.Downsample, det.PANNeck, det.Head, det.Detector)
    leaf_types = set()
    for name, mod in model.named_modules():
        children = list(mod.children())
        if children:
            assert type(mod) in containers, f"{name}: unexpected container {type(mod).__name__}"
            assert list(mod.parameters(recurse=False)) == [], f"{name}: container with its own parameters"
        else:
            assert isinstance(mod, ALLOWED_LEAVES), f"{name}: {type(mod).__name__} is not allowed"
            leaf_types.add(type(mod))
            if isinstance(mod, nn.Upsample):
                assert mod.mode == "nearest" and mod.scale_factor == 2.0
    assert leaf_types == set(ALLOWED_LEAVES)
    ups = [m for m in model.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 1


def test_width_half_builds_and_runs():
    model = Detector(DetectorConfig(num_classes=1, width_mult=0.5, input_size=96)).eval()
    assert model.backbone.out_channels == [16, 48, 160]
    # Neck/head widths scale with max(width, 0.5): 96 * 0.5 = 48.
    assert model.neck.lateral3[0].out_channels == 48
    assert model.heads[0].pw2[0].out_channels == 48
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 5, 12, 12), (1, 5, 6, 6), (1, 5, 3, 3)]


def test_three_classes_give_seven_channels():
    model = Detector(DetectorConfig(num_classes=3, width_mult=0.35, input_size=64)).eval()
    assert [h.pred.out_channels for h in model.heads] == [7, 7, 7]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
        assert [tuple(o.shape) for o in outs] == [(1, 7, 8, 8), (1, 7, 4, 4), (1, 7, 2, 2)]
        logits, log_dist, sizes = model.flatten(outs)
        assert tuple(logits.shape) == (1, 84, 3) and tuple(log_dist.shape) == (1, 84, 4)
        assert sizes == [(8, 8), (4, 4), (2, 2)]
        model.export_mode = True
        boxes, scores = model(torch.randn(1, 3, 64, 64))
    assert tuple(boxes.shape) == (1, 84, 4) and tuple(scores.shape) == (1, 84, 3)


def test_pretrained_detector_uses_imagenet_stem(weights_path, imagenet_state):
    model = Detector(DetectorConfig(width_mult=1.0), pretrained_backbone=True, weights_path=str(weights_path))
    assert torch.equal(model.backbone.features[0][0].weight, imagenet_state["features.0.0.weight"])
