"""The deploy bundle: written by export.bundle, read and validated by the device-side runtime.bundle."""
from __future__ import annotations

import ast
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import runtime.bundle as rb
from runtime.onnx_wire import read_onnx_signature
from compress.flops import count_flops_params
from export.bundle import RECORD_NAME, BundleWriteError, write_bundle
from export.lint import ERROR, Finding, LintReport
from export.onnx_export import run_onnxruntime
from tests.nets import torch_threads
from tests.test_export_helpers import randomized_detector

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
META = {"classes": ["person"], "input_size": 320, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
TOP_KEYS = {"format", "format_version", "created", "code_version", "classes", "input", "outputs", "decoding", "nms",
            "variants"}
VARIANT_KEYS = {"file", "sha256", "flops", "macs", "params", "opset", "bytes"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    with torch_threads(1):
        baseline = randomized_detector(seed=10)
        pruned = randomized_detector(seed=11, width_mult=0.5)  # a smaller model with the same contract
        out = tmp_path_factory.mktemp("bundles") / "bundle"
        manifest = write_bundle(out, {"baseline": (baseline, META), "pruned": (pruned, META)},
                                nms={"score_threshold": 0.25}, sources={"baseline": "ckpt/a.pt"})
    return out, manifest, {"baseline": baseline, "pruned": pruned}


@pytest.fixture()
def bundle_copy(bundle, tmp_path):
    src, _, _ = bundle
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


def _rewrite_manifest(bundle_dir, edit):
    path = bundle_dir / rb.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------------------------------- writing

def test_bundle_written_and_valid(bundle):
    out, manifest, models = bundle
    assert rb.validate_bundle(out, check_onnx=True) == []
    assert rb.load_bundle(out) == manifest == rb.load_manifest(out)
    assert set(manifest) == TOP_KEYS
    assert manifest["format"] == "jetson-compress-bundle" and manifest["format_version"] == 1
    assert manifest["input"] == {
        "name": "images", "shape": [1, 3, 320, 320], "layout": "NCHW", "dtype": "float32", "colour_order": "RGB",
        "pixel_scale": 0.00392156862745098, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "letterbox": {"pad_value": 114, "align": "center"}}
    assert manifest["outputs"] == {
        "boxes": {"name": "boxes", "shape": [1, 2100, 4], "format": "xyxy", "units": "input_pixels"},
        "scores": {"name": "scores", "shape": [1, 2100, 1], "activation": "sigmoid"}}
    assert manifest["decoding"] == {"in_graph": True, "strides": [8, 16, 32]}
    assert manifest["nms"] == {"score_threshold": 0.25, "iou_threshold": 0.6, "max_detections": 100,
                               "pre_nms_topk": 1000, "class_wise": True}
    assert sorted(os.listdir(out)) == ["baseline.onnx", RECORD_NAME, "manifest.json", "pruned.onnx"]
    assert not [p for p in os.listdir(out.parent) if "staging" in p]


def test_variant_entries(bundle):
    out, manifest, models = bundle
    assert set(manifest["variants"]) == {"baseline", "pruned"}
    for name, entry in manifest["variants"].items():
        assert set(entry) == VARIANT_KEYS
        path = out / entry["file"]
        assert entry["file"] == f"{name}.onnx"
        assert entry["sha256"] == rb.sha256_file(path) and entry["bytes"] == path.stat().st_size
        cost = count_flops_params(models[name], (1, 3, 320, 320))
        assert (entry["flops"], entry["macs"], entry["params"]) == (cost.flops, cost.macs, cost.params)
        assert entry["flops"] == 2 * entry["macs"] and entry["opset"] == 13
    assert manifest["variants"]["pruned"]["flops"] < 0.5 * manifest["variants"]["baseline"]["flops"]


def test_bundled_onnx_matches_torch(bundle):
    import torch

    out, manifest, models = bundle
    x = np.random.default_rng(7).normal(size=(1, 3, 320, 320)).astype(np.float32)
    for name, model in models.items():
        model.export_mode = True
        try:
            with torch.no_grad():
                ref_boxes, ref_scores = (t.numpy() for t in model(torch.from_numpy(x)))
        finally:
            model.export_mode = False
        got = run_onnxruntime(out / manifest["variants"][name]["file"], {manifest["input"]["name"]: x})
        assert np.abs(got["boxes"] - ref_boxes).max() < 1e-4
        assert np.abs(got["scores"] - ref_scores).max() < 1e-4
        assert ref_scores.std() > 0.01


def test_export_record(bundle):
    out, manifest, _ = bundle
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["manifest_sha256"] == rb.sha256_file(out / "manifest.json")
    assert record["variants"]["baseline"]["source"] == "ckpt/a.pt"
    for name in ("baseline", "pruned"):
        assert record["variants"][name]["parity"]["max_abs_diff"] < 1e-4
        assert record["variants"][name]["lint"]["ok"] is True


def test_refuses_lint_errors_and_keeps_old_bundle(bundle_copy, monkeypatch):
    import export.bundle as eb

    before = {p: p.read_bytes() for p in bundle_copy.iterdir()}
    bad = LintReport(path="x.onnx", opset=13, ir_version=7, ops={},
                     findings=[Finding("forbidden-op", ERROR, "planted", "nz", "NonZero")])
    monkeypatch.setattr(eb, "lint_onnx", lambda *a, **k: bad)
    model = randomized_detector(seed=12, width_mult=0.35, neck_channels=32, head_channels=32, input_size=128)
    with pytest.raises(BundleWriteError, match="fails the TensorRT 8.2 lint") as err:
        write_bundle(bundle_copy, {"baseline": (model, {"classes": ["person"]})})
    assert "forbidden-op" in str(err.value)
    assert {p: p.read_bytes() for p in bundle_copy.iterdir()} == before
    assert not [p for p in os.listdir(bundle_copy.parent) if "staging" in p]


def test_refuses_foreign_folder_and_mismatched_variants(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    small = {"width_mult": 0.35, "neck_channels": 32, "head_channels": 32, "input_size": 128}
    model = randomized_detector(seed=13, **small)
    with pytest.raises(BundleWriteError, match="not empty"):
        write_bundle(foreign, {"baseline": (model, {"classes": ["person"]})})
    with pytest.raises(BundleWriteError, match="differ in input_size"):
        write_bundle(tmp_path / "b", {"baseline": (model, {"classes": ["person"]}),
                                      "pruned": (model, {"classes": ["person"], "input_size": 160})})
    with pytest.raises(ValueError, match="unknown NMS"):
        write_bundle(tmp_path / "b", {"baseline": (model, {})}, nms={"iou": 0.5})
    assert not (tmp_path / "b").exists()


def test_rewrite_over_existing_bundle(tmp_path):
    model = randomized_detector(seed=14, width_mult=0.35, neck_channels=32, head_channels=32, input_size=128)
    first = write_bundle(tmp_path / "b", {"baseline": (model, {})}, nms={"iou_threshold": 0.5})
    second = write_bundle(tmp_path / "b", {"baseline": (model, {})}, nms={"iou_threshold": 0.7}, opset=11)
    assert first["nms"]["iou_threshold"] == 0.5 and second["nms"]["iou_threshold"] == 0.7
    assert rb.load_bundle(tmp_path / "b", check_onnx=True)["variants"]["baseline"]["opset"] == 11
    assert sorted(os.listdir(tmp_path)) == ["b"]


# ------------------------------------------------------------------------------------------- device-side checks

def test_tampered_onnx_fails_with_file_named(bundle_copy):
    path = bundle_copy / "pruned.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = rb.validate_bundle(bundle_copy)
    assert len(problems) == 1
    assert problems[0].startswith(str(path)) and "sha256" in problems[0]
    with pytest.raises(rb.BundleError, match="pruned.onnx"):
        rb.load_bundle(bundle_copy)


def test_missing_and_truncated_files(bundle_copy):
    (bundle_copy / "pruned.onnx").unlink()
    base = bundle_copy / "baseline.onnx"
    base.write_bytes(base.read_bytes()[:1000])
    problems = rb.validate_bundle(bundle_copy, check_onnx=True)
    assert any("pruned.onnx" in p and "missing" in p for p in problems)
    assert any(p.startswith(str(base)) and "1000 bytes" in p for p in problems)
    with pytest.raises(rb.BundleError) as err:
        rb.load_bundle(bundle_copy)
    assert err.value.problems == problems[:len(err.value.problems)]


@pytest.mark.parametrize("key", ["format", "format_version", "classes", "input", "input.shape", "input.mean",
                                 "input.letterbox.pad_value", "outputs.boxes.name", "outputs.scores.shape",
                                 "decoding.strides", "nms.iou_threshold", "nms.class_wise", "variants",
                                 "variants.baseline.sha256", "variants.pruned.flops"])
def test_missing_key_fails(bundle, key):
    _, manifest, _ = bundle
    broken = copy.deepcopy(manifest)
    *parents, last = key.split(".")
    node = broken
    for part in parents:
        node = node[part]
    del node[last]
    problems = rb.validate_manifest(broken)
    assert f"missing key '{key}'" in " | ".join(problems)
    assert all(p.startswith("manifest.json: ") for p in problems)


def test_missing_key_on_disk_names_the_manifest(bundle_copy):
    _rewrite_manifest(bundle_copy, lambda m: m["nms"].pop("score_threshold"))
    with pytest.raises(rb.BundleError) as err:
        rb.load_bundle(bundle_copy)
    assert str(bundle_copy / "manifest.json") in str(err.value)
    assert "missing key 'nms.score_threshold'" in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="something-else"), "not a jetson-compress deploy bundle"),
    (lambda m: m.update(format_version=2), "newer than this code"),
    (lambda m: m["nms"].update(iou_threshold=1.5), "nms.iou_threshold must be in (0, 1]"),
    (lambda m: m["nms"].update(score_threshold=-0.1), "nms.score_threshold must be in [0, 1]"),
    (lambda m: m["nms"].update(pre_nms_topk=10), "smaller than nms.max_detections"),
    (lambda m: m["nms"].update(class_wise=1), "'nms.class_wise' must be true or false"),
    (lambda m: m["input"].update(shape=[1, 3, 320, 256]), "gives 1680"),
    (lambda m: m["input"].update(shape=[1, 3, 300, 300]), "not a multiple of the largest stride"),
    (lambda m: m["outputs"]["scores"].update(shape=[1, 2100, 2]), "does not end in 1"),
    (lambda m: m["outputs"]["boxes"].update(shape=[1, 2000, 4]), "disagree on the number of points"),
    (lambda m: m["input"].update(std=[0.2, 0.0, 0.2]), "'input.std' must be positive"),
    (lambda m: m["input"].update(layout="NHWC"), "input.layout 'NHWC' is not supported"),
    (lambda m: m["variants"]["pruned"].update(file="../baseline.onnx"), "plain .onnx file name"),
    (lambda m: m["variants"]["pruned"].update(sha256="abc"), "64 lowercase hex digits"),
    (lambda m: m["variants"]["pruned"].update(flops=1), "must be 2 x macs"),
    (lambda m: m["variants"]["pruned"].update(opset=17), "TensorRT 8.2 cannot parse it"),
    (lambda m: m.update(variants={}), "'variants' is empty"),
    (lambda m: m.update(classes=[]), "non-empty list of class names"),
])
def test_invalid_values(bundle, edit, message):
    _, manifest, _ = bundle
    broken = copy.deepcopy(manifest)
    edit(broken)
    problems = rb.validate_manifest(broken)
    assert any(message in p for p in problems), problems


def test_check_onnx_compares_file_with_manifest(bundle_copy):
    def rename_input(m):
        m["input"]["name"] = "input"

    _rewrite_manifest(bundle_copy, rename_input)
    assert rb.validate_manifest(json.loads((bundle_copy / "manifest.json").read_text())) == []
    assert rb.validate_bundle(bundle_copy) == []  # hashes still fine
    problems = rb.validate_bundle(bundle_copy, check_onnx=True)
    assert len(problems) == 2 and all("ONNX inputs are ['images'], the manifest says ['input']" in p
                                      for p in problems)


def test_onnx_signature_reader_agrees_with_onnx(bundle):
    out, _, _ = bundle
    path = out / "baseline.onnx"
    sig = read_onnx_signature(str(path))
    model = onnx.load(str(path), load_external_data=False)
    expect = lambda vis: [(v.name, v.type.tensor_type.elem_type,  # noqa: E731
                           [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in vis]
    assert sig == {"opset": 13, "inputs": expect(model.graph.input), "outputs": expect(model.graph.output)}
    with pytest.raises(ValueError):
        read_onnx_signature(str(out / "manifest.json"))


def test_missing_bundle_folder_and_manifest(tmp_path):
    assert "bundle folder not found" in rb.validate_bundle(tmp_path / "nope")[0]
    (tmp_path / "empty").mkdir()
    assert "manifest not found" in rb.validate_bundle(tmp_path / "empty")[0]
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(rb.BundleError, match="not valid JSON"):
        rb.load_bundle(tmp_path / "empty")


# -------------------------------------------------------------------------------- the device-side module itself

@pytest.mark.parametrize("module", ["runtime.bundle", "runtime.onnx_wire"])
def test_runtime_bundle_is_python36_stdlib_only(module):
    """The bundle reader and its ONNX reader: Python 3.6 syntax, the stdlib, and each other only."""
    source = (REPO / (module.replace(".", "/") + ".py")).read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        assert not isinstance(node, ast.NamedExpr)
        if isinstance(node, ast.FormattedValue):
            pytest.fail("f-strings avoided in device code for clarity with Python 3.6")
    # so no dataclasses, no __future__, no numpy either
    assert imported <= {"json", "hashlib", "os", "re", "collections", "runtime.onnx_wire"}, imported


def test_runtime_bundle_runs_without_host_packages(bundle):
    out, _, _ = bundle
    code = (
        "import sys\n"
        "for name in ('torch', 'onnx', 'onnxruntime', 'numpy', 'compress', 'export'):\n"
        "    sys.modules[name] = None\n"
        "import runtime.bundle as rb\n"
        f"m = rb.load_bundle({str(out)!r}, check_onnx=True)\n"
        "print(sorted(m['variants']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['baseline', 'pruned']"
