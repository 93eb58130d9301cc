"""``jetson-compress export``: checkpoints -> a valid bundle; clear errors for --plan and bad arguments."""
from __future__ import annotations

import json

import pytest

import runtime.bundle as rb
from compress.checkpoint import save_checkpoint
from jetson_compress.cli import main
from tests.test_export_helpers import SMALL, randomized_detector

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    base = root / "base.pt"
    pruned = root / "pruned.pt"
    save_checkpoint(base, randomized_detector(seed=20, **SMALL), ["person"])
    save_checkpoint(pruned, randomized_detector(seed=21, **{**SMALL, "width_mult": 0.25}), ["person"])
    return base, pruned


def test_export_baseline_and_variant(checkpoints, tmp_path, capsys):
    base, pruned = checkpoints
    out = tmp_path / "bundle"
    rc = main(["export", "--checkpoint", str(base), "--variant", f"pruned={pruned}", "--bundle", str(out),
               "--iou-threshold", "0.5"])
    assert rc == 0
    manifest = rb.load_bundle(out, check_onnx=True)
    assert sorted(manifest["variants"]) == ["baseline", "pruned"]
    assert manifest["input"]["shape"] == [1, 3, 128, 128]
    assert manifest["outputs"]["boxes"]["shape"] == [1, 336, 4]
    assert manifest["nms"]["iou_threshold"] == 0.5
    printed = capsys.readouterr().out
    assert "bundle written" in printed and "pruned" in printed and "x baseline FLOPs" in printed
    record = json.loads((out / "export_record.json").read_text())
    assert record["variants"]["pruned"]["source"] == str(pruned)


def test_export_opset_11(checkpoints, tmp_path):
    base, _ = checkpoints
    assert main(["export", "--checkpoint", str(base), "--bundle", str(tmp_path / "b"), "--opset", "11"]) == 0
    assert rb.load_bundle(tmp_path / "b", check_onnx=True)["variants"]["baseline"]["opset"] == 11


def test_missing_plan_is_named(checkpoints, tmp_path, capsys):
    base, _ = checkpoints
    assert main(["export", "--checkpoint", str(base), "--plan", str(tmp_path / "plan.json"),
                 "--bundle", str(tmp_path / "b")]) == 2
    assert "plan.json" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("spec, message", [("pruned", "expected NAME=CHECKPOINT"),
                                           ("baseline=x.pt", "given twice"),
                                           ("../x=y.pt", "the name may use")])
def test_bad_variant_spec(checkpoints, tmp_path, capsys, spec, message):
    base, _ = checkpoints
    assert main(["export", "--checkpoint", str(base), "--variant", spec, "--bundle", str(tmp_path / "b")]) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_and_bad_nms(checkpoints, tmp_path, capsys):
    base, _ = checkpoints
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--bundle", str(tmp_path / "b")]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(base), "--bundle", str(tmp_path / "b"),
                 "--iou-threshold", "1.5"]) == 2
    assert "nms.iou_threshold" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
