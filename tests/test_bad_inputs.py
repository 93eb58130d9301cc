"""The bad-input corpus (issue 7, item 4): every bad input across the pipeline yields a clear error that names the
culprit (file, layer, node or flag) and leaves earlier artefacts intact.

One table, ``CASES``: each row is a case id, a ``make`` function that builds the bad input in a fresh folder and
returns what to run, the expected outcome (an exception class for a library call, an exit code for
``jetson_compress.cli.main`` run in-process) and a regex that must appear in the message; ``{culprit}`` in the regex
stands for the (escaped) culprit that ``make`` returns. Files that ``make`` registers with ``ctx.keep`` exist before
the call (an earlier run's artefacts); their bytes must be unchanged afterwards and no temporary file may be left
beside them.

Two conditions are simulated, because the tests run as root (chmod does not stop root from writing):
an output folder that is not writable is a path below a regular *file* (``out.txt/sub``: ENOTDIR, or EACCES raised
by a patched ``tempfile.mkstemp``), and a full disk is ``os.fsync`` patched to raise ``OSError(ENOSPC)`` while the
atomic writer is writing its temporary file.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
import onnx
import pytest
import torch

from compress.checkpoint import save_checkpoint
from compress.detector import Detector
from compress.pruning import PLAN_FORMAT, PlanError, apply_plan_structure, load_plan, save_plan
from jetson.camera import Camera, SourceOpenError, parse_source
from runtime.bundle import BundleError, load_bundle
from tests.nets import run_cli, seeded_detector, tiny_config

IMG_W, IMG_H = 64, 48
TRAINVAL, TEST = ["000001", "000002"], ["000003", "000004"]


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- tiny inputs

def _xml(image_id: str, objects: List[Tuple[str, Tuple[Any, Any, Any, Any]]], size=(IMG_W, IMG_H)) -> str:
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>\n")


def make_tiny_voc(root: Path) -> Path:
    """VOCdevkit/VOC2007 with four 64x48 JPEGs, one person each; splits trainval (1, 2) and test (3, 4)."""
    year = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in TRAINVAL + TEST:
        ok, jpg = cv2.imencode(".jpg", rng.integers(0, 255, (IMG_H, IMG_W, 3), dtype=np.uint8))
        assert ok
        (year / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpg.tobytes())
        (year / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, [("person", (10, 8, 40, 44))]))
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(TRAINVAL) + "\n")
    (year / "ImageSets" / "Main" / "test.txt").write_text("\n".join(TEST) + "\n")
    return root / "VOCdevkit"


def tiny_detector(seed: int = 0, **overrides: Any) -> Detector:
    return seeded_detector(tiny_config(128, **overrides), seed)


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Dict[str, Path]:
    """Built once: a tiny VOC, a tiny random-init checkpoint, and a deploy bundle exported from it."""
    root = tmp_path_factory.mktemp("templates")
    voc = make_tiny_voc(root / "voc")
    ckpt = root / "tiny.pt"
    save_checkpoint(ckpt, tiny_detector(), ["person"])
    bundle = root / "bundle"
    rc, _, err = run_cli(["export", "--checkpoint", str(ckpt), "--bundle", str(bundle)])
    assert rc == 0, err
    return {"voc": voc, "ckpt": ckpt, "bundle": bundle}


class Ctx:
    """A fresh, writable copy of the templates for one case, and the artefacts that must survive it."""

    def __init__(self, tmp: Path, templates: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        self._templates = templates
        self.kept: List[Path] = []

    @property
    def voc(self) -> Path:
        dst = self.tmp / "VOCdevkit"
        if not dst.exists():
            shutil.copytree(self._templates["voc"], dst)
        return dst

    @property
    def year(self) -> Path:
        return self.voc / "VOC2007"

    @property
    def ckpt(self) -> Path:
        dst = self.tmp / "ckpt" / "tiny.pt"
        if not dst.exists():
            dst.parent.mkdir(exist_ok=True)
            shutil.copy(self._templates["ckpt"], dst)
        return dst

    @property
    def bundle(self) -> Path:
        dst = self.tmp / "bundle"
        if not dst.exists():
            shutil.copytree(self._templates["bundle"], dst)
        return dst

    def keep(self, *paths: Path) -> None:
        for p in paths:
            assert p.is_file(), f"test bug: artefact {p} to keep does not exist"
            self.kept.append(p)

    def earlier_run(self, out: Path, *names: str) -> Path:
        """An output folder holding an earlier run's artefacts (kept)."""
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            (out / name).write_bytes(f"earlier run: {name}\n".encode() + os.urandom(16))
            self.keep(out / name)
        return out

    def ann(self, image_id: str) -> Path:
        return self.year / "Annotations" / f"{image_id}.xml"

    def img(self, image_id: str) -> Path:
        return self.year / "JPEGImages" / f"{image_id}.jpg"

    def split(self, name: str) -> Path:
        return self.year / "ImageSets" / "Main" / f"{name}.txt"

    def eval_argv(self, ckpt: Optional[Path] = None, split: str = "trainval", data: Optional[Path] = None) -> List[str]:
        return ["eval", "--checkpoint", str(ckpt or self.ckpt), "--data", str(data or self.voc), "--split", split]

    def disk_full(self) -> None:
        """From now on every fsync fails as on a full disk (the atomic writers fsync their temporary file)."""
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.monkeypatch.setattr(os, "fsync", full)


# ------------------------------------------------------------------------------------------ making bad input
# Each maker returns (what to run, culprit): a CLI argv list or a zero-argument callable, and the string (a path,
# a flag, a layer or node name) the message must name.

Made = Tuple[Union[List[str], Callable[[], Any]], str]


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"test bug: {old!r} not in {path}"
    path.write_text(text.replace(old, new))


# --- data: annotations, images, splits, roots (through `eval`, `train` and `prune`)

def data_malformed_xml(c: Ctx) -> Made:
    c.ann("000002").write_text("<annotation><size><width>64</width></size><object><name>person</name></annotation>")
    return c.eval_argv(), str(c.ann("000002"))


def data_truncated_xml(c: Ctx) -> Made:
    text = c.ann("000002").read_text()
    c.ann("000002").write_text(text[: len(text) // 2])
    return c.eval_argv(), str(c.ann("000002"))


def data_missing_annotation(c: Ctx) -> Made:
    c.ann("000002").unlink()
    return c.eval_argv(), str(c.ann("000002"))


def data_missing_image(c: Ctx) -> Made:
    c.img("000002").unlink()
    return c.eval_argv(), str(c.img("000002"))


def data_garbage_image(c: Ctx) -> Made:
    c.img("000002").write_bytes(os.urandom(2000))
    return c.eval_argv(), str(c.img("000002"))


def data_zero_byte_image(c: Ctx) -> Made:
    c.img("000002").write_bytes(b"")
    return c.eval_argv(), str(c.img("000002"))


def data_jpeg_header_garbage_body(c: Ctx) -> Made:
    # Passes the cheap magic-number check when the split is opened; fails when the image is decoded.
    c.img("000002").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(500))
    return c.eval_argv(), str(c.img("000002"))


def data_image_size_differs_from_xml(c: Ctx) -> Made:
    _rewrite(c.ann("000002"), f"<width>{IMG_W}</width>", f"<width>{IMG_W * 2}</width>")
    return c.eval_argv(), str(c.img("000002"))


def data_empty_split(c: Ctx) -> Made:
    c.split("trainval").write_text("\n  \n")
    return c.eval_argv(), str(c.split("trainval"))


def data_missing_split_file(c: Ctx) -> Made:
    return c.eval_argv(split="val"), str(c.split("val"))


def data_split_lists_missing_id(c: Ctx) -> Made:
    c.split("trainval").write_text("000001\n000099\n")
    return c.eval_argv(), str(c.split("trainval"))


def data_split_bad_line(c: Ctx) -> Made:
    c.split("trainval").write_text("000001\n000002 maybe\n")
    return c.eval_argv(), str(c.split("trainval"))


def data_unknown_class(c: Ctx) -> Made:
    _rewrite(c.ann("000002"), "<name>person</name>", "<name>spaceship</name>")
    return c.eval_argv(), str(c.ann("000002"))


def data_box_outside_image(c: Ctx) -> Made:
    _rewrite(c.ann("000002"), "<xmax>40</xmax>", "<xmax>400</xmax>")
    return c.eval_argv(), str(c.ann("000002"))


def data_negative_box(c: Ctx) -> Made:
    _rewrite(c.ann("000002"), "<xmin>10</xmin>", "<xmin>-30</xmin>")
    return c.eval_argv(), str(c.ann("000002"))


def data_zero_size_box(c: Ctx) -> Made:
    _rewrite(c.ann("000002"), "<xmin>10</xmin>", "<xmin>41</xmin>")  # xmin > xmax: no area
    return c.eval_argv(), str(c.ann("000002"))


def data_box_not_a_number(c: Ctx) -> Made:
    _rewrite(c.ann("000002"), "<ymax>44</ymax>", "<ymax>forty</ymax>")
    return c.eval_argv(), str(c.ann("000002"))


def data_zero_image_size(c: Ctx) -> Made:
    _rewrite(c.ann("000002"), f"<height>{IMG_H}</height>", "<height>0</height>")
    return c.eval_argv(), str(c.ann("000002"))


def data_root_missing(c: Ctx) -> Made:
    return c.eval_argv(data=c.tmp / "no-such-VOCdevkit"), str(c.tmp / "no-such-VOCdevkit")


def data_env_points_to_file(c: Ctx) -> Made:
    f = c.tmp / "voc.tar"
    f.write_bytes(b"not a folder")
    c.monkeypatch.setenv("JETSON_COMPRESS_DATA", str(f))
    return ["eval", "--checkpoint", str(c.ckpt)], str(f)


def data_root_not_a_vocdevkit(c: Ctx) -> Made:
    (c.tmp / "empty").mkdir()
    return c.eval_argv(data=c.tmp / "empty"), str(c.tmp / "empty")


def data_train_keeps_earlier_run(c: Ctx) -> Made:
    out = c.earlier_run(c.tmp / "runs" / "t", "final.pt", "config.resolved.yaml")
    c.ann("000001").write_text("<annotation>")
    return (["train", "--data", str(c.voc), "--out", str(out), "--epochs", "1", "--no-eval"],
            str(c.ann("000001")))


def data_prune_keeps_earlier_plan(c: Ctx) -> Made:
    out = c.earlier_run(c.tmp / "runs" / "p", "plan.json", "pruned.pt", "config.resolved.yaml")
    c.img("000001").unlink()
    return (["prune", "--checkpoint", str(c.ckpt), "--data", str(c.voc), "--out", str(out), "--no-eval"],
            str(c.img("000001")))


# --- checkpoints

def _bad_ckpt(c: Ctx, edit: Callable[[Dict[str, Any]], None]) -> Path:
    ck = torch.load(c.ckpt, map_location="cpu", weights_only=False)
    edit(ck)
    path = c.tmp / "bad.pt"
    torch.save(ck, path)
    return path


def ckpt_garbage(c: Ctx) -> Made:
    p = c.tmp / "garbage.pt"
    p.write_bytes(os.urandom(4096))
    return c.eval_argv(ckpt=p), str(p)


def ckpt_zero_bytes(c: Ctx) -> Made:
    p = c.tmp / "empty.pt"
    p.write_bytes(b"")
    return c.eval_argv(ckpt=p), str(p)


def ckpt_truncated(c: Ctx) -> Made:
    p = c.tmp / "truncated.pt"
    data = c.ckpt.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    return c.eval_argv(ckpt=p), str(p)


def ckpt_missing(c: Ctx) -> Made:
    return c.eval_argv(ckpt=c.tmp / "nope.pt"), str(c.tmp / "nope.pt")


def ckpt_plain_state_dict(c: Ctx) -> Made:
    # What torchvision or a hand-written training loop saves: weights, no metadata.
    p = c.tmp / "plain.pt"
    torch.save(tiny_detector().state_dict(), p)
    return c.eval_argv(ckpt=p), str(p)


def ckpt_other_architecture(c: Ctx) -> Made:
    p = _bad_ckpt(c, lambda ck: ck.update(architecture="resnet18-fpn"))
    return c.eval_argv(ckpt=p), str(p)


def ckpt_missing_keys(c: Ctx) -> Made:
    def drop(ck):
        for k in [k for k in ck["state_dict"] if k.startswith("head")][:3]:
            del ck["state_dict"][k]
    p = _bad_ckpt(c, drop)
    return c.eval_argv(ckpt=p), str(p)


def ckpt_weights_of_another_width(c: Ctx) -> Made:
    # The metadata says width 0.35, the weights are of a width-0.5 model: shapes do not fit.
    p = _bad_ckpt(c, lambda ck: ck.update(state_dict=tiny_detector(width_mult=0.5).state_dict()))
    return c.eval_argv(ckpt=p), str(p)


def ckpt_nan_weights(c: Ctx) -> Made:
    def poison(ck):
        name = next(k for k, v in ck["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
        ck["state_dict"][name][0] = float("nan")
    p = _bad_ckpt(c, poison)
    return c.eval_argv(ckpt=p), str(p)


def ckpt_state_dict_not_tensors(c: Ctx) -> Made:
    p = _bad_ckpt(c, lambda ck: ck["state_dict"].update({"backbone.features.0.0.weight": [1.0, 2.0]}))
    return c.eval_argv(ckpt=p), str(p)


def ckpt_unbuildable_model_config(c: Ctx) -> Made:
    p = _bad_ckpt(c, lambda ck: ck["model_config"].update(width_mult="wide"))
    return c.eval_argv(ckpt=p), str(p)


def ckpt_prune_plan_names_missing_layer(c: Ctx) -> Made:
    plan = _plan({"backbone.no_such_layer": {"kind": "conv", "in": 3, "out": 8, "keep_in": None, "keep_out": [0]}})
    p = _bad_ckpt(c, lambda ck: ck.update(prune_plan=plan))
    return c.eval_argv(ckpt=p), str(p)


def ckpt_prune_keeps_earlier_plan(c: Ctx) -> Made:
    out = c.earlier_run(c.tmp / "runs" / "p", "plan.json", "pruned.pt")
    p = c.tmp / "truncated.pt"
    p.write_bytes(c.ckpt.read_bytes()[:1000])
    return ["prune", "--checkpoint", str(p), "--data", str(c.voc), "--out", str(out)], str(p)


def ckpt_train_resume_from_corrupt_last(c: Ctx) -> Made:
    out = c.earlier_run(c.tmp / "runs" / "t", "last.pt", "final.pt")
    return (["train", "--data", str(c.voc), "--out", str(out), "--epochs", "1", "--batch-size", "2", "--no-eval",
             "--set", "model.width_mult=0.35", "--set", "model.input_size=96"], str(out / "last.pt"))


def ckpt_export_keeps_existing_bundle(c: Ctx) -> Made:
    for f in c.bundle.iterdir():
        c.keep(f)
    p = c.tmp / "garbage.pt"
    p.write_bytes(b"PK\x03\x04" + os.urandom(300))
    return (["export", "--checkpoint", str(c.ckpt), "--variant", f"pruned={p}", "--bundle", str(c.bundle)],
            str(p))


def ckpt_build_keeps_earlier_stage(c: Ctx) -> Made:
    # `build` runs a stage in .NAME.partial and swaps it in only on success: the earlier baseline stage survives.
    out = c.tmp / "runs" / "b"
    c.earlier_run(out / "baseline", "baseline.pt", "stage.json")
    p = c.tmp / "truncated.pt"
    p.write_bytes(c.ckpt.read_bytes()[:5000])
    return ["build", "--data", str(c.voc), "--checkpoint", str(p), "--out", str(out)], str(p)


def data_build_keeps_earlier_stage(c: Ctx) -> Made:
    out = c.tmp / "runs" / "b"
    c.earlier_run(out / "prune", "plan.json", "pruned.pt", "stage.json")
    c.ann("000002").write_text("<annotation><size>")
    return ["build", "--data", str(c.voc), "--checkpoint", str(c.ckpt), "--out", str(out)], str(c.ann("000002"))


# --- prune plans (library: load_plan, apply_plan_structure)

def _plan(layers: Dict[str, Any], **top: Any) -> Dict[str, Any]:
    return {"format": PLAN_FORMAT, "format_version": 1, "layers": layers, **top}


def _first_conv(model: torch.nn.Module) -> Tuple[str, torch.nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1)


def _plan_case(c: Ctx, plan: Any, raw: Optional[bytes] = None) -> Callable[[], Any]:
    path = c.tmp / "plan.json"
    path.write_bytes(raw if raw is not None else json.dumps(plan).encode())

    def call():
        apply_plan_structure(tiny_detector(), load_plan(path))
    return call


def plan_not_json(c: Ctx) -> Made:
    return _plan_case(c, None, raw=b"layers: {conv: 8}\n"), str(c.tmp / "plan.json")


def plan_no_format_marker(c: Ctx) -> Made:
    return _plan_case(c, {"layers": {}}), str(c.tmp / "plan.json")


def plan_newer_format_version(c: Ctx) -> Made:
    return _plan_case(c, _plan({}, format_version=99)), str(c.tmp / "plan.json")


def plan_format_version_not_a_number(c: Ctx) -> Made:
    return _plan_case(c, _plan({}, format_version="one")), str(c.tmp / "plan.json")


def plan_wrong_layer_name(c: Ctx) -> Made:
    plan = _plan({"neck.does_not_exist": {"kind": "conv", "in": 8, "out": 8, "keep_in": None, "keep_out": [0, 1]}})
    return _plan_case(c, plan), "neck.does_not_exist"


def plan_wrong_out_channels(c: Ctx) -> Made:
    name, conv = _first_conv(tiny_detector())
    plan = _plan({name: {"kind": "conv", "in": conv.in_channels, "out": conv.out_channels + 5, "keep_in": None,
                         "keep_out": [0, 1]}})
    return _plan_case(c, plan), name


def plan_wrong_in_channels(c: Ctx) -> Made:
    name, conv = _first_conv(tiny_detector())
    plan = _plan({name: {"kind": "conv", "in": conv.in_channels + 13, "out": conv.out_channels,
                         "keep_in": [0, conv.in_channels + 12], "keep_out": None}})
    return _plan_case(c, plan), name


def plan_index_out_of_range(c: Ctx) -> Made:
    name, conv = _first_conv(tiny_detector())
    plan = _plan({name: {"kind": "conv", "in": conv.in_channels, "out": conv.out_channels, "keep_in": None,
                         "keep_out": [0, conv.out_channels]}})
    return _plan_case(c, plan), name


def plan_layer_spec_not_a_mapping(c: Ctx) -> Made:
    name, _ = _first_conv(tiny_detector())
    return _plan_case(c, _plan({name: [0, 1, 2]})), name


# --- ONNX files and the TensorRT 8.2 lint (`jetson-compress lint`: 2 unreadable, 1 rule violated)

def _onnx_bytes() -> bytes:
    from tests.test_export_helpers import clean_conv_model
    return clean_conv_model().SerializeToString()


def onnx_garbage(c: Ctx) -> Made:
    p = c.tmp / "garbage.onnx"
    p.write_bytes(b"\x08\x07\x12\xff" + os.urandom(2000))
    return ["lint", str(p)], str(p)


def onnx_text(c: Ctx) -> Made:
    p = c.tmp / "model.onnx"
    p.write_text("this is not an ONNX model\n")
    return ["lint", str(p)], str(p)


def onnx_zero_bytes(c: Ctx) -> Made:
    p = c.tmp / "empty.onnx"
    p.write_bytes(b"")
    return ["lint", str(p)], str(p)


def onnx_truncated(c: Ctx) -> Made:
    p = c.tmp / "truncated.onnx"
    data = _onnx_bytes()
    p.write_bytes(data[: len(data) // 2])
    return ["lint", str(p)], str(p)


def onnx_missing(c: Ctx) -> Made:
    return ["lint", str(c.tmp / "nope.onnx")], str(c.tmp / "nope.onnx")


def _lint_bad(c: Ctx, name: str) -> Made:
    from tests.test_export_helpers import bad_models
    model, _, node = bad_models()[name]
    p = c.tmp / f"{name}.onnx"
    onnx.save(model, str(p))
    return ["lint", str(p)], node


def onnx_nonzero(c: Ctx) -> Made:
    return _lint_bad(c, "nonzero")


def onnx_nms(c: Ctx) -> Made:
    return _lint_bad(c, "nms")


def onnx_opset17(c: Ctx) -> Made:
    argv, _ = _lint_bad(c, "opset17")
    return argv, argv[-1]


def onnx_dynamic_input(c: Ctx) -> Made:
    return _lint_bad(c, "dynamic_batch")


def onnx_lint_json_unwritable(c: Ctx) -> Made:
    p = c.tmp / "ok.onnx"
    p.write_bytes(_onnx_bytes())
    blocker = c.tmp / "reports.txt"
    blocker.write_text("a file, not a folder")
    return ["lint", str(p), "--json", str(blocker / "lint.json")], str(blocker)


# --- deploy bundles (device-side validator, runtime.bundle.load_bundle)

def _manifest(c: Ctx) -> Tuple[Path, Dict[str, Any]]:
    path = c.bundle / "manifest.json"
    return path, json.loads(path.read_text())


def bundle_wrong_sha256(c: Ctx) -> Made:
    path, m = _manifest(c)
    m["variants"]["baseline"]["sha256"] = "0" * 64
    path.write_text(json.dumps(m))
    return (lambda: load_bundle(c.bundle)), str(c.bundle / m["variants"]["baseline"]["file"])


def bundle_tampered_onnx(c: Ctx) -> Made:
    _, m = _manifest(c)
    onnx_path = c.bundle / m["variants"]["baseline"]["file"]
    data = bytearray(onnx_path.read_bytes())
    data[-20] ^= 0xFF  # same size, different bytes
    onnx_path.write_bytes(bytes(data))
    return (lambda: load_bundle(c.bundle)), str(onnx_path)


def bundle_missing_onnx(c: Ctx) -> Made:
    _, m = _manifest(c)
    onnx_path = c.bundle / m["variants"]["baseline"]["file"]
    onnx_path.unlink()
    return (lambda: load_bundle(c.bundle)), str(onnx_path)


def bundle_truncated_onnx(c: Ctx) -> Made:
    _, m = _manifest(c)
    onnx_path = c.bundle / m["variants"]["baseline"]["file"]
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    return (lambda: load_bundle(c.bundle)), str(onnx_path)


def bundle_malformed_manifest(c: Ctx) -> Made:
    path, _ = _manifest(c)
    path.write_text(path.read_text()[:-40])
    return (lambda: load_bundle(c.bundle)), str(path)


def bundle_manifest_missing(c: Ctx) -> Made:
    (c.bundle / "manifest.json").unlink()
    return (lambda: load_bundle(c.bundle)), str(c.bundle / "manifest.json")


def bundle_manifest_wrong_field(c: Ctx) -> Made:
    path, m = _manifest(c)
    m["nms"]["iou_threshold"] = 7
    path.write_text(json.dumps(m))
    return (lambda: load_bundle(c.bundle)), str(path)


# --- video sources (jetson/camera.py)

def video_missing_file(c: Ctx) -> Made:
    p = c.tmp / "clip.mp4"
    return (lambda: Camera(parse_source(str(p))).open()), str(p)


def video_garbage_mp4(c: Ctx) -> Made:
    p = c.tmp / "clip.mp4"
    p.write_bytes(os.urandom(5000))
    return (lambda: Camera(parse_source(str(p))).open()), str(p)


def video_text_renamed_mp4(c: Ctx) -> Made:
    p = c.tmp / "notes.mp4"
    p.write_text("ftyp? no, just text\n" * 50)
    return (lambda: Camera(parse_source(str(p))).open()), str(p)


# --- flags: impossible targets and settings (`prune` checks them before touching anything)

def _prune_flags(c: Ctx, *flags: str) -> List[str]:
    out = c.earlier_run(c.tmp / "runs" / "p", "plan.json")
    return ["prune", "--checkpoint", str(c.ckpt), "--data", str(c.voc), "--out", str(out), *flags]


def prune_flag(flag: str, value: str) -> Callable[[Ctx], Made]:
    """A case maker: ``prune FLAG VALUE``; the culprit is the flag and value as the error quotes them."""
    def make(c: Ctx) -> Made:
        return _prune_flags(c, flag, value), f"{flag} {value}"
    return make


def flag_export_variant_malformed(c: Ctx) -> Made:
    for f in c.bundle.iterdir():
        c.keep(f)
    return ["export", "--checkpoint", str(c.ckpt), "--variant", "pruned", "--bundle", str(c.bundle)], "--variant"


# --- configuration: --config YAML and --set (through `train`, whose earlier run must survive)

def _train_with_config(c: Ctx, *extra: str) -> List[str]:
    out = c.earlier_run(c.tmp / "runs" / "t", "config.resolved.yaml", "final.pt")
    return ["train", "--data", str(c.voc), "--out", str(out), "--epochs", "1", "--no-eval", *extra]


def config_file(text: str) -> Callable[[Ctx], Made]:
    """A case maker: ``train --config FILE`` with FILE holding ``text``; the culprit is FILE."""
    def make(c: Ctx) -> Made:
        p = c.tmp / "user.yaml"
        p.write_text(text)
        return _train_with_config(c, "--config", str(p)), str(p)
    return make


def config_set(assignment: str) -> Callable[[Ctx], Made]:
    """A case maker: ``train --set ASSIGNMENT``; the culprit is the flag as the error quotes it."""
    def make(c: Ctx) -> Made:
        return _train_with_config(c, "--set", assignment), f"--set '{assignment}'"
    return make


def config_file_missing(c: Ctx) -> Made:
    return _train_with_config(c, "--config", str(c.tmp / "nope.yaml")), str(c.tmp / "nope.yaml")


# --- outputs that cannot be written

def out_train_under_a_file(c: Ctx) -> Made:
    blocker = c.tmp / "out.txt"
    blocker.write_text("a file, not a folder")
    c.keep(blocker)
    return ["train", "--data", str(c.voc), "--out", str(blocker / "sub"), "--epochs", "1", "--no-eval"], str(blocker)


def out_build_under_a_file(c: Ctx) -> Made:
    blocker = c.tmp / "out.txt"
    blocker.write_text("a file, not a folder")
    c.keep(blocker)
    return (["build", "--data", str(c.voc), "--checkpoint", str(c.ckpt), "--out", str(blocker / "run")],
            str(blocker))


def config_build_keep_whole_unknown(c: Ctx) -> Made:
    # A wrong name in build.keep_whole stops the build before its first stage: nothing is written.
    out = c.tmp / "run"
    return (["build", "--data", str(c.voc), "--checkpoint", str(c.ckpt), "--out", str(out),
             "--set", "build.keep_whole=[backbone.features.2.conv]"], "build.keep_whole")


def config_build_channel_criterion_unknown(c: Ctx) -> Made:
    # An unknown build.channel_criterion stops the build before its first stage too.
    out = c.tmp / "run"
    return (["build", "--data", str(c.voc), "--checkpoint", str(c.ckpt), "--out", str(out),
             "--set", "build.channel_criterion=l2"], "build.channel_criterion")


def out_eval_json_under_a_file(c: Ctx) -> Made:
    blocker = c.tmp / "out.txt"
    blocker.write_text("a file, not a folder")
    return c.eval_argv() + ["--json", str(blocker / "ap.json")], str(blocker)


def out_permission_denied(c: Ctx) -> Made:
    # As root chmod 0500 does not stop writes: refuse the temporary file the atomic writer creates instead.
    out = c.earlier_run(c.tmp / "runs" / "e", "ap.json")
    real = tempfile.mkstemp

    def denied(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))
        return real(*args, **kwargs)
    c.monkeypatch.setattr(tempfile, "mkstemp", denied)
    return c.eval_argv() + ["--json", str(out / "ap.json")], str(out)


def out_disk_full_eval_json(c: Ctx) -> Made:
    out = c.earlier_run(c.tmp / "runs" / "e", "ap.json")
    c.disk_full()
    return c.eval_argv() + ["--json", str(out / "ap.json")], str(out / "ap.json")


def out_disk_full_checkpoint(c: Ctx) -> Made:
    out = c.earlier_run(c.tmp / "runs" / "t", "final.pt")
    model = tiny_detector()
    c.disk_full()
    return (lambda: save_checkpoint(out / "final.pt", model, ["person"])), str(out / "final.pt")


def out_disk_full_plan(c: Ctx) -> Made:
    out = c.earlier_run(c.tmp / "runs" / "p", "plan.json")
    c.disk_full()
    return (lambda: save_plan(_plan({}), out / "plan.json")), str(out / "plan.json")


def out_disk_full_lint_report(c: Ctx) -> Made:
    p = c.tmp / "ok.onnx"
    p.write_bytes(_onnx_bytes())
    out = c.earlier_run(c.tmp / "reports", "lint.json")
    c.disk_full()
    return ["lint", str(p), "--json", str(out / "lint.json")], str(out / "lint.json")


# ------------------------------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Ctx], Made]
    expect: Union[int, type]  # exit code of the CLI, or the exception a library call raises
    pattern: str  # regex that must appear in the message; {culprit} is what make() returned


CASES = [
    # data (eval / train / prune on a tiny VOC)
    Case("malformed-xml", data_malformed_xml, 2, "{culprit}: malformed XML"),
    Case("truncated-xml", data_truncated_xml, 2, "{culprit}: malformed XML"),
    Case("missing-annotation", data_missing_annotation, 2, "{culprit}: annotation file missing"),
    Case("missing-image", data_missing_image, 2, "{culprit}: image file missing"),
    Case("garbage-image", data_garbage_image, 2, "{culprit}: unreadable image"),
    Case("zero-byte-image", data_zero_byte_image, 2, "{culprit}: unreadable image"),
    Case("jpeg-header-garbage-body", data_jpeg_header_garbage_body, 2, "{culprit}: unreadable image"),
    Case("image-size-differs-from-xml", data_image_size_differs_from_xml, 2, "{culprit}: image is 64x48 but"),
    Case("empty-split", data_empty_split, 2, "{culprit}: split 'trainval' is empty"),
    Case("missing-split-file", data_missing_split_file, 2, "{culprit}: split file for split 'val' not found"),
    Case("split-lists-missing-id", data_split_lists_missing_id, 2, "{culprit}: lists image id '000099'"),
    Case("split-bad-line", data_split_bad_line, 2, "{culprit}: line 2"),
    Case("unknown-class", data_unknown_class, 2, "{culprit}: object 0: unknown class 'spaceship'"),
    Case("box-outside-image", data_box_outside_image, 2, "{culprit}: object 0 .person.: box .* outside the 64x48"),
    Case("negative-box", data_negative_box, 2, "{culprit}: object 0 .person.: box .*-30.* outside"),
    Case("zero-size-box", data_zero_size_box, 2, "{culprit}: object 0 .person.: empty box"),
    Case("box-not-a-number", data_box_not_a_number, 2, "{culprit}: <ymax> is not a number: 'forty'"),
    Case("zero-image-size", data_zero_image_size, 2, "{culprit}: invalid image size 64x0"),
    Case("data-root-missing", data_root_missing, 2, "{culprit}: data root does not exist"),
    Case("data-env-is-a-file", data_env_points_to_file, 2, "{culprit}: data root is not a folder"),
    Case("data-root-not-vocdevkit", data_root_not_a_vocdevkit, 2, "{culprit}: no VOC year folder"),
    Case("train-bad-data-keeps-earlier-run", data_train_keeps_earlier_run, 2, "{culprit}: malformed XML"),
    Case("prune-bad-data-keeps-earlier-plan", data_prune_keeps_earlier_plan, 2, "{culprit}: image file missing"),
    # checkpoints
    Case("ckpt-garbage", ckpt_garbage, 2, "{culprit}: corrupt or truncated checkpoint"),
    Case("ckpt-zero-bytes", ckpt_zero_bytes, 2, "{culprit}: corrupt or truncated checkpoint"),
    Case("ckpt-truncated", ckpt_truncated, 2, "{culprit}: corrupt or truncated checkpoint"),
    Case("ckpt-missing", ckpt_missing, 2, "{culprit}: checkpoint file not found"),
    Case("ckpt-plain-state-dict", ckpt_plain_state_dict, 2, "{culprit}: not a jetson-compress checkpoint"),
    Case("ckpt-other-architecture", ckpt_other_architecture, 2, "{culprit}: architecture 'resnet18-fpn' is not"),
    Case("ckpt-missing-keys", ckpt_missing_keys, 2, "{culprit}: weights do not fit .*Missing key"),
    Case("ckpt-weights-of-another-width", ckpt_weights_of_another_width, 2, "{culprit}: weights do not fit"),
    Case("ckpt-nan-weights", ckpt_nan_weights, 2, "{culprit}: tensor .* has NaN"),
    Case("ckpt-state-dict-not-tensors", ckpt_state_dict_not_tensors, 2,
         r"{culprit}: state_dict entry backbone\.features\.0\.0\.weight is a list"),
    Case("ckpt-unbuildable-model-config", ckpt_unbuildable_model_config, 2, "{culprit}: model_config .* buildable"),
    Case("ckpt-prune-plan-wrong-layer", ckpt_prune_plan_names_missing_layer, 2,
         r"{culprit}: its prune plan does not fit the model: .*layer 'backbone\.no_such_layer'"),
    Case("prune-bad-ckpt-keeps-earlier-plan", ckpt_prune_keeps_earlier_plan, 2,
         "{culprit}: corrupt or truncated checkpoint"),
    Case("train-resume-from-corrupt-last", ckpt_train_resume_from_corrupt_last, 2,
         "{culprit}: corrupt or truncated checkpoint"),
    Case("export-bad-variant-keeps-bundle", ckpt_export_keeps_existing_bundle, 2,
         "{culprit}: corrupt or truncated checkpoint"),
    Case("build-bad-ckpt-keeps-earlier-stage", ckpt_build_keeps_earlier_stage, 2,
         "stage baseline failed: {culprit}: corrupt or truncated checkpoint"),
    Case("build-bad-data-keeps-earlier-stage", data_build_keeps_earlier_stage, 2,
         "stage prune failed: {culprit}: malformed XML"),
    # prune plans
    Case("plan-not-json", plan_not_json, PlanError, "{culprit}: not a JSON prune plan"),
    Case("plan-no-format-marker", plan_no_format_marker, PlanError, "{culprit}: not a jetson-compress prune plan"),
    Case("plan-newer-format", plan_newer_format_version, PlanError,
         "{culprit}: plan format 99 is newer than this code"),
    Case("plan-version-not-a-number", plan_format_version_not_a_number, PlanError,
         "{culprit}: plan format_version 'one' is not a version number"),
    Case("plan-wrong-layer-name", plan_wrong_layer_name, PlanError, "layer '{culprit}', which the model does not have"),
    Case("plan-wrong-out-channels", plan_wrong_out_channels, PlanError, "layer {culprit}: plan expects .* output"),
    Case("plan-wrong-in-channels", plan_wrong_in_channels, PlanError, "layer {culprit}: plan expects .* input"),
    Case("plan-index-out-of-range", plan_index_out_of_range, PlanError, "layer {culprit} 'keep_out' must be"),
    Case("plan-layer-not-a-mapping", plan_layer_spec_not_a_mapping, PlanError, "layer {culprit}: expected a mapping"),
    # ONNX and the lint
    Case("onnx-garbage", onnx_garbage, 2, "{culprit}: not a readable ONNX model"),
    Case("onnx-text", onnx_text, 2, "{culprit}: not a readable ONNX model"),
    Case("onnx-zero-bytes", onnx_zero_bytes, 2, "{culprit}: empty file, not an ONNX model"),
    Case("onnx-truncated", onnx_truncated, 2, "{culprit}: not a readable ONNX model"),
    Case("onnx-missing", onnx_missing, 2, "{culprit}: ONNX file not found"),
    Case("onnx-nonzero", onnx_nonzero, 1, "forbidden-op +{culprit} .*NonZero"),
    Case("onnx-nms", onnx_nms, 1, "forbidden-op +{culprit} .*NonMaxSuppression"),
    Case("onnx-opset17", onnx_opset17, 1, "{culprit}: FAILED.*opset 17 > 13"),
    Case("onnx-dynamic-input", onnx_dynamic_input, 1, "dynamic-shape +{culprit}: graph input 'x' has shape"),
    Case("onnx-lint-json-unwritable", onnx_lint_json_unwritable, 2, "{culprit}: exists and is not a folder"),
    # deploy bundles
    Case("bundle-wrong-sha256", bundle_wrong_sha256, BundleError, "{culprit}: sha256 .* does not match"),
    Case("bundle-tampered-onnx", bundle_tampered_onnx, BundleError, "{culprit}: sha256 .* does not match"),
    Case("bundle-missing-onnx", bundle_missing_onnx, BundleError, "{culprit}: file of variant 'baseline' is missing"),
    Case("bundle-truncated-onnx", bundle_truncated_onnx, BundleError, "{culprit}: 1000 bytes, the manifest says"),
    Case("bundle-malformed-manifest", bundle_malformed_manifest, BundleError, "{culprit}: not valid JSON"),
    Case("bundle-manifest-missing", bundle_manifest_missing, BundleError, "{culprit}: manifest not found"),
    Case("bundle-manifest-wrong-field", bundle_manifest_wrong_field, BundleError, "{culprit}.*iou_threshold"),
    # video
    Case("video-missing-file", video_missing_file, SourceOpenError, "{culprit}: video file not found"),
    Case("video-garbage-mp4", video_garbage_mp4, SourceOpenError, "{culprit}: cannot (open|decode)"),
    Case("video-text-renamed-mp4", video_text_renamed_mp4, SourceOpenError, "{culprit}: cannot (open|decode)"),
    # flags
    Case("target-flops-1.5", prune_flag("--target-flops", "1.5"), 2, "{culprit}: must be a fraction"),
    Case("target-flops--0.1", prune_flag("--target-flops", "-0.1"), 2, "{culprit}: must be a fraction"),
    Case("target-flops-0", prune_flag("--target-flops", "0"), 2, "{culprit}(.0)?: must be a fraction"),
    Case("target-params-1", prune_flag("--target-params", "1"), 2, "{culprit}(.0)?: must be a fraction"),
    Case("target-flops-nan", prune_flag("--target-flops", "nan"), 2, "{culprit}: must be a fraction"),
    Case("round-to-0", prune_flag("--round-to", "0"), 2, "{culprit}: must be >= 1"),
    Case("min-channels-negative", prune_flag("--min-channels", "-4"), 2, "{culprit}: must be >= 1"),
    Case("export-variant-malformed", flag_export_variant_malformed, 2, "{culprit} 'pruned': expected NAME=CHECKPOINT"),
    # configuration
    Case("config-malformed-yaml", config_file("train:\n  epochs: [3\n  lr: : 0.1\n"), 2, "{culprit}: not valid YAML"),
    Case("config-unknown-section", config_file("trian:\n  epochs: 3\n"), 2, "{culprit}: unknown section.*'trian'"),
    Case("config-unknown-key", config_file("train:\n  epochz: 3\n"), 2, r"{culprit}: unknown key\(s\) train\.epochz"),
    Case("config-wrong-type", config_file("train:\n  epochs: ten\n"), 2,
         "{culprit}: train.epochs must be an integer, got 'ten'"),
    Case("config-section-not-a-mapping", config_file("model: 0.35\n"), 2, "{culprit}: model must be a mapping"),
    Case("config-file-missing", config_file_missing, 2, "{culprit}: configuration file not found"),
    Case("set-unknown-key", config_set("train.epochz=3"), 2, "{culprit}: unknown key 'train.epochz'"),
    Case("set-unknown-section", config_set("trian.epochs=3"), 2, "{culprit}: no section 'trian'"),
    Case("set-wrong-type", config_set("model.width_mult=wide"), 2,
         "{culprit}: model.width_mult must be a number, got 'wide'"),
    Case("set-whole-section", config_set("train=3"), 2, "{culprit}: expected section.key=value"),
    Case("set-no-equals", config_set("train.epochs"), 2, "{culprit}: expected section.key=value"),
    # outputs
    Case("train-out-under-a-file", out_train_under_a_file, 2,
         r"{culprit}/sub: output folder is not writable \(Not a directory\)"),
    Case("build-out-under-a-file", out_build_under_a_file, 2, "{culprit}/run: output folder is not writable"),
    Case("config-build-keep-whole-unknown", config_build_keep_whole_unknown, 2,
         "{culprit}: not the producer of a prunable channel group: .*backbone.features.2.conv'.*prunable producers"),
    Case("config-build-channel-criterion-unknown", config_build_channel_criterion_unknown, 2,
         "{culprit} 'l2': choose from l1, entropy, group-l1"),
    Case("eval-json-under-a-file", out_eval_json_under_a_file, 2, "{culprit}: exists and is not a folder"),
    Case("eval-json-permission-denied", out_permission_denied, 2, "{culprit}: Permission denied"),
    Case("disk-full-eval-json", out_disk_full_eval_json, 2, "{culprit}: No space left on device"),
    Case("disk-full-checkpoint", out_disk_full_checkpoint, OSError, "No space left on device.*: '{culprit}'"),
    Case("disk-full-plan", out_disk_full_plan, OSError, "No space left on device.*: '{culprit}'"),
    Case("disk-full-lint-report", out_disk_full_lint_report, 2, "{culprit}: No space left on device"),
]


def test_corpus_is_large_and_ids_unique():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def _snapshot(paths: List[Path]) -> Dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def _temp_files(folders) -> List[Path]:
    return sorted(p for d in folders if d.is_dir() for p in d.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, templates, monkeypatch):
    monkeypatch.delenv("JETSON_COMPRESS_DATA", raising=False)
    ctx = Ctx(tmp_path, templates, monkeypatch)
    action, culprit = case.make(ctx)
    assert "{culprit}" in case.pattern, "test bug: every pattern names the culprit"
    pattern = case.pattern.replace("{culprit}", re.escape(culprit))
    before = _snapshot(ctx.kept)
    if isinstance(case.expect, int):
        assert isinstance(action, list), "test bug: a CLI case makes an argv list"
        rc, out, err = run_cli(action)
        message = err if case.expect == 2 else out + err
        assert rc == case.expect, f"exit code {rc}, expected {case.expect}\nstdout: {out}\nstderr: {err}"
        assert "Traceback" not in err
    else:
        assert callable(action), "test bug: a library case makes a callable"
        with pytest.raises(case.expect) as info:
            action()
        message = str(info.value)
    assert re.search(pattern, message, re.S), f"message does not name the culprit ({pattern!r}):\n{message}"
    after = _snapshot(ctx.kept)
    for p in ctx.kept:
        assert after[p] == before[p], f"{p}: an earlier artefact was changed by a failed run"
    assert _temp_files({p.parent for p in ctx.kept}) == [], "a temporary file was left behind"

