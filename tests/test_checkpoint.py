"""Checkpoints: exact round trip, fp16 storage, metadata, errors that name the file, atomic writes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from runtime import fileio
from compress.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    atomic_write_bytes,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from compress.detector import Detector, DetectorConfig
from jetson_compress.version import __version__

SPLIT_HASHES = {"trainval": "a" * 64, "test": "b" * 64}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Detector(DetectorConfig(num_classes=1, width_mult=0.35, input_size=64))
    with torch.no_grad():  # non-trivial BN statistics, so that the round trip checks buffers too
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.num_batches_tracked.fill_(7)
    return m.eval()


@pytest.fixture()
def saved(tmp_path, model):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, ["person"], split_hashes=SPLIT_HASHES, metrics={"ap50": 0.5},
                    config={"train": {"epochs": 1}})
    return path


def test_round_trip_fp32_exact(saved, model):
    loaded, ckpt = load_model(saved)
    assert not loaded.training
    ref, got = model.state_dict(), loaded.state_dict()
    assert list(ref) == list(got)
    for name in ref:
        assert got[name].dtype == ref[name].dtype, name
        assert torch.equal(got[name], ref[name]), name
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)


def test_metadata_fields(saved):
    ckpt = read_checkpoint(saved)
    assert ckpt["format"] == FORMAT == "jetson-compress-checkpoint"
    assert ckpt["format_version"] == FORMAT_VERSION == 1
    assert ckpt["architecture"] == "mnv2-pan-af"
    assert ckpt["classes"] == ["person"]
    assert ckpt["input_size"] == 64
    assert ckpt["code_version"] == __version__
    assert ckpt["split_hashes"] == SPLIT_HASHES
    assert ckpt["metrics"] == {"ap50": 0.5}
    assert ckpt["config"] == {"train": {"epochs": 1}}
    assert ckpt["dtype"] == "float32"
    assert ckpt["model_config"]["width_mult"] == 0.35 and ckpt["model_config"]["num_classes"] == 1
    assert ckpt["mean"] == pytest.approx([0.485, 0.456, 0.406]) and ckpt["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert "train_state" not in ckpt


def test_fp16_storage(tmp_path, model):
    path = tmp_path / "half.pt"
    save_checkpoint(path, model, ["person"], half=True)
    raw = read_checkpoint(path)
    assert raw["dtype"] == "float16"
    assert raw["state_dict"]["heads.0.pred.weight"].dtype == torch.float16
    assert raw["state_dict"]["backbone.features.0.1.num_batches_tracked"].dtype == torch.long
    loaded, _ = load_model(path)
    for name, ref in model.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == ref.dtype, name
        if ref.is_floating_point():
            # fp16 keeps 11 significant bits: relative error <= 2^-11 (subnormals below 6e-5: absolute 6e-8).
            assert torch.allclose(got, ref, rtol=1e-3, atol=1e-7), name
        else:
            assert torch.equal(got, ref), name


def test_fp16_is_about_half_the_size(tmp_path, model):
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(full, model, ["person"])
    save_checkpoint(half, model, ["person"], half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size


def _assert_names_file(exc_info, path, *words):
    msg = str(exc_info.value)
    assert str(path) in msg
    assert exc_info.value.path == str(path)
    for w in words:
        assert w in msg, msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_names_file(info, path, "not found")


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(saved)
    _assert_names_file(info, saved, "corrupt or truncated")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_names_file(info, path, "corrupt or truncated")


def test_plain_dict_without_marker(tmp_path, model):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_names_file(info, path, "not a jetson-compress checkpoint")
    torch.save(model.state_dict(), path)  # a bare state dict
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_names_file(info, path, "'format' marker")


def _rewrite(path, **changes):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for key, value in changes.items():
        ckpt[key] = value
    torch.save(ckpt, path)
    return ckpt


def test_other_architecture(saved):
    _rewrite(saved, architecture="yolov5s")
    with pytest.raises(CheckpointError) as info:
        load_model(saved)
    _assert_names_file(info, saved, "yolov5s", "mnv2-pan-af")


def test_newer_format_version(saved):
    _rewrite(saved, format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(saved)
    _assert_names_file(info, saved, "newer")


def test_missing_key(saved):
    ckpt = torch.load(saved, map_location="cpu", weights_only=False)
    del ckpt["classes"]
    torch.save(ckpt, saved)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(saved)
    _assert_names_file(info, saved, "'classes'")


def test_weights_for_another_width(saved):
    ckpt = torch.load(saved, map_location="cpu", weights_only=False)
    ckpt["model_config"]["width_mult"] = 0.5
    torch.save(ckpt, saved)
    read_checkpoint(saved)  # the metadata alone is fine
    with pytest.raises(CheckpointError) as info:
        load_model(saved)
    _assert_names_file(info, saved, "do not fit")


def test_nan_weights(saved):
    ckpt = torch.load(saved, map_location="cpu", weights_only=False)
    ckpt["state_dict"]["heads.1.pred.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, saved)
    with pytest.raises(CheckpointError) as info:
        load_model(saved)
    _assert_names_file(info, saved, "heads.1.pred.weight", "NaN")


def test_save_overwrites_atomically(tmp_path, model):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, ["person"], metrics={"run": 1})
    save_checkpoint(path, model, ["person"], metrics={"run": 2})
    assert read_checkpoint(path)["metrics"] == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old contents")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, failing, boom)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(path, b"new contents that never land")
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["out.bin"]  # no temporary file left behind


def test_atomic_write_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "c.json"
    atomic_write_bytes(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert os.listdir(path.parent) == ["c.json"]


def test_atomic_write_gives_the_permissions_open_would(tmp_path):
    umask = os.umask(0o022)
    try:
        path = tmp_path / "model.onnx"
        atomic_write_bytes(path, b"x")
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    finally:
        os.umask(umask)


def test_atomic_write_names_a_file_in_the_way_of_its_folder(tmp_path):
    (tmp_path / "out").write_bytes(b"a file, not a folder")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder") as info:
        atomic_write_bytes(tmp_path / "out" / "plan.json", b"{}")
    assert info.value.filename == str(tmp_path / "out")
