"""``jetson-compress train`` and ``eval`` in-process on the real VOC2007 sample: artefacts, metadata, resume, errors.

The model is made tiny (width 0.35, 96x96 input, one epoch of three batches) so the whole file runs in seconds.
"""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from tests.nets import run_cli

TINY = ["--epochs", "1", "--batch-size", "2", "--set", "model.width_mult=0.35", "--set", "model.input_size=96",
        "--set", "eval.batch_size=8"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, voc_sample):
    out = tmp_path_factory.mktemp("train") / "run"
    rc, stdout, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(out), *TINY])
    assert rc == 0, stderr
    return out, stdout


def test_train_writes_artefacts(trained, voc_sample):
    out, stdout = trained
    for name in ("last.pt", "final.pt", "train_summary.json", "config.resolved.yaml"):
        assert (out / name).is_file(), name
    assert "training on 6 images" in stdout
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs"] == 1
    assert len(summary["history"]) == 1 and summary["history"][0]["epoch"] == 1
    assert summary["history"][0]["loss"] > 0
    assert summary["images_per_second"] > 0
    assert summary["eval"]["num_images"] == 7 and summary["eval"]["split"] == "test"
    assert 0.0 <= summary["ap50"]["overall"] <= 1.0
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["model"]["width_mult"] == 0.35 and resolved["model"]["input_size"] == 96
    assert resolved["train"]["epochs"] == 1 and resolved["train"]["batch_size"] == 2
    assert resolved["data"]["root"] == str(voc_sample)
    assert resolved["train"]["lr"] == 0.002  # a default kept


def test_checkpoint_metadata(trained, voc_sample):
    out, _ = trained
    main_dir = voc_sample / "VOC2007" / "ImageSets" / "Main"
    from compress.checkpoint import load_model, read_checkpoint

    final = read_checkpoint(out / "final.pt")
    assert final["classes"] == ["person"]
    assert final["input_size"] == 96
    assert final["model_config"]["width_mult"] == 0.35 and final["model_config"]["num_classes"] == 1
    assert final["split_hashes"] == {"trainval": _sha256(main_dir / "trainval.txt"),
                                     "test": _sha256(main_dir / "test.txt")}
    assert final["config"]["model"]["input_size"] == 96
    assert "train_state" not in final
    assert final["metrics"]["ap50_voc07"]["overall"] >= 0.0
    last = read_checkpoint(out / "last.pt")
    assert last["train_state"]["epoch"] == 0 and last["train_state"]["epochs"] == 1
    assert last["split_hashes"] == final["split_hashes"]
    model, _ = load_model(out / "final.pt")
    # 96 / 8, 96 / 16, 96 / 32 grids, 1 class + 4 distances.
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 96, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 5, 12, 12), (1, 5, 6, 6), (1, 5, 3, 3)]


def test_eval_command_json(trained, voc_sample, tmp_path):
    out, _ = trained
    json_path = tmp_path / "out.json"
    rc, stdout, stderr = run_cli(["eval", "--checkpoint", str(out / "final.pt"), "--data", str(voc_sample),
                               "--json", str(json_path)])
    assert rc == 0, stderr
    result = json.loads(json_path.read_text())
    for metric in ("voc07_11point", "all_point"):
        assert set(result[metric]["ap"]) == {"person"}
        assert 0.0 <= result[metric]["ap"]["person"] <= 1.0
        assert result[metric]["npos"] == {"person": 2}  # non-difficult persons in the 7 test images
        assert result[metric]["num_detections"]["person"] <= 7 * 100  # eval.max_detections per image
    assert result["num_images"] == 7 and result["split"] == "test"
    assert result["checkpoint"] == str(out / "final.pt")
    # Same weights, same data, same settings: the numbers the training run reported.
    summary = json.loads((out / "train_summary.json").read_text())
    for metric in ("voc07_11point", "all_point"):
        assert result[metric]["ap"] == summary["eval"][metric]["ap"]
        assert result[metric]["num_detections"] == summary["eval"][metric]["num_detections"]
    assert "AP50 VOC07 11-pt" in stdout and "person" in stdout


def test_resume_at_the_end_does_not_retrain(trained, voc_sample, tmp_path):
    src, _ = trained
    out = tmp_path / "run"
    shutil.copytree(src, out)
    last_before = (out / "last.pt").read_bytes()
    rc, stdout, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(out), *TINY])
    assert rc == 0, stderr
    assert f"resuming from {out / 'last.pt'}" in stdout
    assert (out / "last.pt").read_bytes() == last_before  # no epoch ran, so last.pt was not rewritten
    summary = json.loads((out / "train_summary.json").read_text())
    assert len(summary["history"]) == 1
    assert summary["train_seconds_this_run"] == 0.0 and summary["images_per_second"] is None
    from compress.checkpoint import load_model

    a, _ = load_model(src / "final.pt")
    b, _ = load_model(out / "final.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_half_stores_the_ap50_of_the_fp16_weights(trained, voc_sample, tmp_path):
    """``--half``: the stored AP50 is that of the fp16-rounded weights as stored (what ``eval`` measures on them)."""
    src, _ = trained
    out = tmp_path / "run"
    shutil.copytree(src, out)  # resumes at the end: no epoch runs, the fp16 copy is written
    rc, stdout, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(out), *TINY, "--half"])
    assert rc == 0, stderr
    assert "AP50 of the fp16-stored weights" in stdout
    ckpt = torch.load(out / "final_fp16.pt", map_location="cpu", weights_only=False)
    assert ckpt["dtype"] == "float16"
    metrics = ckpt["metrics"]
    assert metrics["ap50_voc07_weights"] == "float16"
    assert metrics["ap50_voc07_float32"] == json.loads((out / "train_summary.json").read_text())["ap50"]
    json_path = tmp_path / "eval.json"
    rc, _, stderr = run_cli(["eval", "--checkpoint", str(out / "final_fp16.pt"), "--data", str(voc_sample),
                          "--json", str(json_path)])
    assert rc == 0, stderr
    assert metrics["ap50_voc07"]["overall"] == json.loads(json_path.read_text())["voc07_11point"]["ap"]["person"]


def test_eval_corrupt_checkpoint_exit_2(tmp_path, voc_sample):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    rc, _, stderr = run_cli(["eval", "--checkpoint", str(bad), "--data", str(voc_sample)])
    assert rc == 2
    assert str(bad) in stderr and stderr.startswith("error: ")
    assert "Traceback" not in stderr


def test_train_missing_data_exit_2(tmp_path):
    missing = tmp_path / "no" / "VOCdevkit"
    rc, _, stderr = run_cli(["train", "--data", str(missing), "--out", str(tmp_path / "run"), *TINY])
    assert rc == 2
    assert str(missing) in stderr and "does not exist" in stderr


def test_train_bad_config_exit_2(tmp_path, voc_sample):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("trian:\n  epochs: 1\n")
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert rc == 2 and str(cfg) in stderr
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--set", "nosuch.key=1", "--out", str(tmp_path / "r")])
    assert rc == 2 and "nosuch" in stderr


def _conv_weights(model):
    return {k: v for k, v in model.state_dict().items() if k.endswith(".weight") and v.dim() == 4}


def test_warm_start_loads_the_checkpoint_weights(trained, voc_sample, tmp_path):
    """--init with lr 0: the convolution weights after one epoch are the checkpoint's (they were loaded, not
    re-initialised from ImageNet); without --init they are not."""
    from compress.checkpoint import load_model

    src, _ = trained
    init, _ = load_model(src / "final.pt")
    runs = {}
    for name, extra in (("warm", ["--init", str(src / "final.pt")]), ("cold", [])):
        out = tmp_path / name
        rc, stdout, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(out), "--no-eval", *TINY,
                                   "--set", "train.lr=0.0", *extra])
        assert rc == 0, stderr
        runs[name], _ = load_model(out / "final.pt")
        assert ("warm start from" in stdout) == (name == "warm")
    ref = _conv_weights(init)
    warm, cold = _conv_weights(runs["warm"]), _conv_weights(runs["cold"])
    assert set(warm) == set(ref)
    for k in ref:
        assert torch.allclose(warm[k], ref[k], atol=1e-6), k
    assert any(not torch.allclose(cold[k], ref[k], atol=1e-3) for k in ref if k.startswith("heads"))
    resolved = yaml.safe_load((tmp_path / "warm" / "config.resolved.yaml").read_text())
    assert resolved["train"]["init"] == str(src / "final.pt")


def test_warm_start_refuses_a_different_model(trained, voc_sample, tmp_path):
    src, _ = trained
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "r"), *TINY,
                          "--set", "model.width_mult=0.5", "--init", str(src / "final.pt")])
    assert rc == 2
    assert str(src / "final.pt") in stderr and "width_mult 0.35 vs 0.5" in stderr


def test_warm_start_at_another_input_size(trained, voc_sample, tmp_path):
    """The input size is no part of the weights: a warm start may train at another size, and the run's checkpoint
    records the size it was trained at."""
    from compress.checkpoint import load_model

    src, _ = trained
    tiny = [a.replace("model.input_size=96", "model.input_size=128") for a in TINY]
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "r"), "--no-eval", *tiny,
                          "--set", "train.lr=0.0", "--init", str(src / "final.pt")])
    assert rc == 0, stderr
    model, ckpt = load_model(tmp_path / "r" / "final.pt")
    assert ckpt["input_size"] == 128 and model.config.input_size == 128
    ref = _conv_weights(load_model(src / "final.pt")[0])
    assert all(torch.allclose(_conv_weights(model)[k], ref[k], atol=1e-6) for k in ref)


def test_source_balance_weights_hand_computed():
    from compress.train import source_balance_weights

    ids = ["mot_1", "mot_2", "mot_3", "mot_4", "coco_1", "plain"]  # sources: mot x4, coco x1, no prefix x1
    w = source_balance_weights(ids, 0.0)
    assert w == pytest.approx([1 / 6] * 6)
    w = source_balance_weights(ids, 1.0)  # every source an equal third of the epoch
    assert w == pytest.approx([1 / 12] * 4 + [1 / 3, 1 / 3])
    w = source_balance_weights(ids, 0.5)  # n^-0.5: mot 0.5 each (2 in all), coco 1, plain 1 -> total 4
    assert w == pytest.approx([0.125] * 4 + [0.25, 0.25])
    with pytest.raises(ValueError, match="source_balance"):
        source_balance_weights(ids, 1.5)


def test_source_balanced_training_runs(voc_sample, tmp_path):
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "r"), "--no-eval", *TINY,
                          "--set", "train.source_balance=1.0"])
    assert rc == 0, stderr
    summary = json.loads((tmp_path / "r" / "train_summary.json").read_text())
    assert summary["history"][0]["loss"] > 0


def test_copy_paste_donors_by_source(voc_sample):
    """The donor index groups the usable boxes (not difficult, at least 16 x 4 px) by source; a run with copy-paste
    trains and records it."""
    from compress.train import TrainSet, donor_index
    from compress.voc import VOCDataset

    ds = VOCDataset(voc_sample, "trainval", classes=["person"])
    groups = donor_index(ds)
    usable = [(i, k) for i, a in enumerate(ds.annotations) for k, b in enumerate(a.boxes)
              if not a.difficult[k] and b[3] - b[1] >= 16 and b[2] - b[0] >= 4]
    assert len(groups) == 1 and sorted(groups[0]) == usable and len(usable) >= 1  # plain VOC ids: one source
    cfg = {"copy_paste_prob": 1.0, "copy_paste_max": 2, "mosaic_prob": 0.0, "scale_range": [1.0, 1.0]}
    ts = TrainSet(ds, 128, cfg, seed=0)
    counts = {len(ts.pick_donors(np.random.default_rng(s))) for s in range(20)}
    assert counts == {1, 2}
    empty = next(i for i, a in enumerate(ds.annotations) if len(a.boxes) == 0)  # an image with no person
    image, target = ts[empty]
    assert image.shape == (3, 128, 128) and 1 <= len(target["boxes"]) <= 2  # the pasted ones, letterboxed
    assert len(TrainSet(ds, 128, dict(cfg, copy_paste_prob=0.0), seed=0)[empty][1]["boxes"]) == 0
    # copy_paste_negatives=false keeps the negatives as they are, and still pastes into the images with people
    keep = TrainSet(ds, 128, dict(cfg, copy_paste_negatives=False), seed=0)
    assert len(keep[empty][1]["boxes"]) == 0  # 1..2 with the default (above)
    full = [i for i, a in enumerate(ds.annotations) if len(a.boxes) > 0]
    assert sum(len(keep[i][1]["boxes"]) for i in full) > sum(len(ds.annotations[i].boxes) for i in full)


def test_copy_paste_training_runs(voc_sample, tmp_path):
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "r"), "--no-eval", *TINY,
                          "--set", "train.copy_paste_prob=1.0"])
    assert rc == 0, stderr
    assert json.loads((tmp_path / "r" / "train_summary.json").read_text())["history"][0]["loss"] > 0
    assert yaml.safe_load((tmp_path / "r" / "config.resolved.yaml").read_text())["train"]["copy_paste_prob"] == 1.0
    for key, value in (("copy_paste_prob", "1.5"), ("copy_paste_max", "0"), ("copy_paste_negatives", "maybe")):
        rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / key), "--no-eval", *TINY,
                              "--set", "train.copy_paste_prob=0.5", "--set", f"train.{key}={value}"])
        assert rc != 0 and f"train.{key}" in stderr


def test_assigner_reaches_the_loss(trained, voc_sample, tmp_path):
    """The same tiny run with SimOTA's assignment: other positives, another first-epoch loss; recorded in the config."""
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "r"), "--no-eval", *TINY,
                          "--set", "train.assigner=simota"])
    assert rc == 0, stderr
    simota = json.loads((tmp_path / "r" / "train_summary.json").read_text())["history"][0]["loss"]
    fcos = json.loads((trained[0] / "train_summary.json").read_text())["history"][0]["loss"]
    assert simota > 0 and abs(simota - fcos) > 1e-3
    assert yaml.safe_load((tmp_path / "r" / "config.resolved.yaml").read_text())["train"]["assigner"] == "simota"
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "bad"), "--no-eval", *TINY,
                          "--set", "train.assigner=atss"])
    assert rc == 2 and "train.assigner 'atss': choose from fcos, simota" in stderr


def test_param_groups_backbone_lr_mult():
    """Every trainable parameter in exactly one group; with a multiplier the backbone's groups carry it, the rest 1;
    without one, the two groups of old (decay / no decay)."""
    from compress.detector import Detector, DetectorConfig
    from compress.train import freeze_early_blocks, param_groups
    from jetson_compress.config import ConfigError

    model = Detector(DetectorConfig(width_mult=0.35, input_size=96))
    freeze_early_blocks(model, 4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    by_id = {id(p): n for n, p in model.named_parameters()}
    plain = param_groups(model, 0.05)
    assert [(g["weight_decay"], g["lr_mult"]) for g in plain] == [(0.05, 1.0), (0.0, 1.0)]
    split = param_groups(model, 0.05, 0.1)
    assert [(g["weight_decay"], g["lr_mult"]) for g in split] == [(0.05, 1.0), (0.0, 1.0), (0.05, 0.1), (0.0, 0.1)]
    for groups in (plain, split):
        names = [by_id[id(p)] for g in groups for p in g["params"]]
        assert len(names) == len(set(names)) and set(names) == trainable
    for g in split:
        in_backbone = {by_id[id(p)].startswith("backbone.") for p in g["params"]}
        assert in_backbone == {g["lr_mult"] == 0.1}
        assert all((p.ndim <= 1) == (g["weight_decay"] == 0.0) for p in g["params"])
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="train.backbone_lr_mult"):
            param_groups(model, 0.05, bad)


def test_backbone_lr_mult_reaches_the_optimiser(voc_sample, tmp_path):
    """A run with train.backbone_lr_mult=0.25: the saved optimiser state's backbone groups stepped at a quarter of the
    others' learning rate; recorded in the configuration."""
    from compress.checkpoint import read_checkpoint

    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "r"), "--no-eval", *TINY,
                          "--set", "train.backbone_lr_mult=0.25"])
    assert rc == 0, stderr
    groups = read_checkpoint(tmp_path / "r" / "last.pt")["train_state"]["optimizer"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 1.0, 0.25, 0.25]
    assert groups[0]["lr"] > 0 and groups[2]["lr"] == pytest.approx(0.25 * groups[0]["lr"], rel=1e-12)
    assert yaml.safe_load((tmp_path / "r" / "config.resolved.yaml").read_text())["train"]["backbone_lr_mult"] == 0.25
    rc, _, stderr = run_cli(["train", "--data", str(voc_sample), "--out", str(tmp_path / "bad"), "--no-eval", *TINY,
                          "--set", "train.backbone_lr_mult=0"])
    assert rc == 2 and "train.backbone_lr_mult must be > 0" in stderr
