"""Training on a time budget, the device choice, data-loader workers, the packed data copy for the GPU machine,
and the deploy copy that benchmarks/gpu_latency.py times."""
from __future__ import annotations

import json
import types

import pytest
import torch

from benchmarks.gpu_pack_voc import main as pack_main, pack
from benchmarks.gpu_latency import deploy_copy
from compress.train import DeviceError, epochs_within_budget, resolve_device
from compress.voc import VOCDataset
from tests.nets import random_detector, run_cli, tiny_config
from tests.test_train_cli import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def test_epochs_within_budget_hand_computed() -> None:
    # 2 epochs done, 12 s left at 5 s per epoch: 2 more.
    assert epochs_within_budget(5.0, 12.0, 2, 10) == 4
    assert epochs_within_budget(5.0, 12.0, 2, 3) == 3  # never more than asked
    assert epochs_within_budget(5.0, -3.0, 2, 10) == 2  # budget already spent: stop where it is
    assert epochs_within_budget(5.0, 4.9, 2, 10) == 2


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(DeviceError, match="sees no CUDA"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="not a device"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_refuses_a_missing_device_with_exit_2(voc_sample, tmp_path) -> None:
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "r"), *TINY,
                          "--set", "train.device=cuda"])
    assert rc == 2 and "train.device is 'cuda'" in stderr and "Traceback" not in stderr


def test_time_budget_fits_the_epochs_and_resume_keeps_them(voc_sample, tmp_path, monkeypatch) -> None:
    # A clock that advances 5 s per reading: every epoch takes 5 s (train reads it once before and once after).
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr("compress.train.time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    argv = ["train", "--data", str(voc_sample), "--out", str(tmp_path / "r"), "--no-eval", *TINY, "--epochs", "6",
            "--set", "train.time_budget_s=22", "--set", "train.workers=1"]
    rc, _, stderr = run_cli(argv)
    assert rc == 0, stderr
    summary = json.loads((tmp_path / "r" / "train_summary.json").read_text())
    # 2 epochs timed (10 s), 12 s left at 5 s each: 2 more, 4 in all.
    assert (summary["epochs"], summary["epochs_requested"], len(summary["history"])) == (4, 6, 4)
    assert summary["device"] == str(resolve_device("auto"))
    # Resuming the finished run trains nothing more: it keeps the fitted 4 epochs.
    rc, _, stderr = run_cli(argv)
    assert rc == 0, stderr
    again = json.loads((tmp_path / "r" / "train_summary.json").read_text())
    assert (again["epochs"], len(again["history"]), again["train_seconds_this_run"]) == (4, 4, 0.0)


def test_packed_copy_scales_images_and_boxes(voc_sample, tmp_path) -> None:
    stats = pack(voc_sample, tmp_path / "VOCdevkit", max_side=200, quality=90)
    assert stats["images"] == 13 and stats["downscaled"] == 13
    for split in ("trainval", "test"):
        orig = VOCDataset(voc_sample, split, ["person", "dog", "car"])
        small = VOCDataset(tmp_path / "VOCdevkit", split, ["person", "dog", "car"])
        assert small.split_sha256() == orig.split_sha256()
        for a, b in zip(orig.annotations, small.annotations):
            assert max(b.width, b.height) == 200
            sx, sy = b.width / a.width, b.height / a.height
            assert b.boxes == pytest.approx(a.boxes * [sx, sy, sx, sy], abs=0.01)
            assert (b.labels == a.labels).all() and (b.difficult == a.difficult).all()


def test_packed_copy_keeps_only_the_splits_and_packs_a_source_on_its_own(voc_sample, tmp_path) -> None:
    year = voc_sample / "VOC2007"
    train_ids = [line.split()[0] for line in (year / "ImageSets/Main/trainval.txt").read_text().splitlines()]
    first = train_ids[0]
    stats = pack(voc_sample, tmp_path / "VOCdevkit", max_side=200, quality=90, splits=["trainval"],
                 sources=[(first, 10_000, 90)])
    out = tmp_path / "VOCdevkit" / "VOC2007"
    assert stats["images"] == len(train_ids) == len(list((out / "JPEGImages").glob("*.jpg")))
    assert stats["downscaled"] == len(train_ids) - 1
    orig = VOCDataset(voc_sample, "trainval", ["person", "dog", "car"])
    small = VOCDataset(tmp_path / "VOCdevkit", "trainval", ["person", "dog", "car"])
    for a, b in zip(orig.annotations, small.annotations):
        if a.image_id == first:  # its own setting: 10,000 px never downscales
            assert (b.width, b.height) == (a.width, a.height)
            assert b.boxes == pytest.approx(a.boxes, abs=0.01)
        else:
            assert max(b.width, b.height) == 200
    # The test list is copied (split hashes stay equal) but its images are not.
    assert (out / "ImageSets/Main/test.txt").read_bytes() == (year / "ImageSets/Main/test.txt").read_bytes()


def test_pack_cli_names_a_missing_split_and_a_bad_source(voc_sample, tmp_path, capsys) -> None:
    assert pack_main([str(voc_sample), str(tmp_path / "o"), "--splits", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "nosuch.txt" in err and "not found" in err
    with pytest.raises(SystemExit) as exc:
        pack_main([str(voc_sample), str(tmp_path / "o"), "--source", "coco_=640"])
    assert exc.value.code == 2
    assert "PREFIX=MAX_SIDE:QUALITY" in capsys.readouterr().err


def test_deploy_copy_matches_the_export_forward() -> None:
    model, gen = random_detector(tiny_config(64))
    x = torch.randn(2, 3, 64, 64, generator=gen)
    fused = deploy_copy(model)
    model.export_mode = True
    with torch.no_grad():
        boxes, scores = model(x)
        fboxes, fscores = fused(x)
    model.export_mode = False
    assert fboxes.shape == boxes.shape == (2, 84, 4) and fscores.shape == scores.shape
    assert torch.allclose(fboxes, boxes, atol=1e-3) and torch.allclose(fscores, scores, atol=1e-5)
    # Folded: no BatchNorm left.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
