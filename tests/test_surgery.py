"""Channel surgery on ONNX (export.surgery, export.onnx_graph, export.verify, ``jetson-compress surgery``).

Exact channel counts on hand-built graphs, left-alone groups with their reasons, fp16, the CLI, and the contract
with compress/: the plan-driven surgery of a dense detector export equals the physically pruned torch model.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import List

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from export.onnx_graph import module_path_from_node_name
from export.surgery import SurgeryError, VerificationError, prune_onnx, surgery, surgery_with_plan, \
    verify_against_torch
from export.verify import masked_model, verify_slim
from tests.nets import seeded_detector
from tests.test_surgery_property import GraphBuilder


def _fixed(values: List[int]):
    it = iter(values)
    return lambda lo, hi: min(max(next(it, lo), lo), hi)


def _conv(b: GraphBuilder, x: str, cin: int, cout: int, k: int = 1, group: int = 1, act: str = "Relu") -> str:
    w = b.rng.standard_normal((cout, cin // group, k, k)) * math.sqrt(2.0 / (cin // group * k * k))
    y = b.node("Conv", [x, b.const(w, "w"), b.const(b.rng.standard_normal(cout) * 0.1, "b")],
               kernel_shape=[k, k], pads=[k // 2] * 4, group=group)[0]
    return b.node(act, [y])[0] if act else y


def _residual_model(opset: int = 13, dtype=np.float32) -> onnx.ModelProto:
    """input(3) -> conv 32 -> [conv 32 -> dw 32 -> conv 32] + skip -> concat(conv 16) -> GAP -> Flatten -> Gemm."""
    b = GraphBuilder(_fixed([]), 0, opset, dtype)
    x = _conv(b, "input", 3, 32, k=3)
    y = _conv(b, x, 32, 32)
    y = _conv(b, y, 32, 32, k=3, group=32)
    y = _conv(b, y, 32, 32, act="")
    s = b.node("Add", [x, y])[0]
    z = _conv(b, s, 32, 16)
    cat = b.node("Concat", [s, z], axis=1)[0]
    g = b.node("GlobalAveragePool", [cat])[0]
    f = b.node("Flatten", [g], axis=1)[0]
    w = b.rng.standard_normal((10, 48)) * 0.2
    out = b.node("Gemm", [f, b.const(w, "fc"), b.const(np.zeros(10), "fcb")], transB=1)[0]
    return b.model([("input", [1, 3, 8, 8])], [(out, [1, 10])])


def test_exact_channel_counts_on_a_residual_graph() -> None:
    model = _residual_model()
    result = prune_onnx(model, ratio=0.5, round_to=8)
    rows = {tuple(r["producers"]): r for r in result.report["groups"]}
    # The add couples the stem conv with the block's last conv; the depthwise conv shares its input's channels.
    assert [(r["channels"], r["kept"], r["status"]) for r in result.report["groups"]] == [
        (3, 3, "left alone"), (32, 16, "pruned"), (32, 16, "pruned"), (16, 8, "pruned"), (10, 10, "left alone")]
    assert len(rows) == 5
    shapes = [list(t.dims) for t in result.model.graph.initializer if t.name.startswith("w_")]
    assert shapes == [[16, 3, 3, 3], [16, 16, 1, 1], [16, 1, 3, 3], [16, 16, 1, 1], [8, 16, 1, 1]]
    fc = [t for t in result.model.graph.initializer if t.name.startswith("fc_")][0]
    assert list(fc.dims) == [10, 24]  # 16 kept channels of the add + 8 of the concat's second input
    dw = [n for n in result.model.graph.node if n.op_type == "Conv"][2]
    assert [a.i for a in dw.attribute if a.name == "group"] == [16]
    left = result.report["left_alone"]
    assert [r["reasons"] for r in left] == [["graph input 'input'"], [f"graph output '{model.graph.output[0].name}'"]]
    check = verify_slim(model, result.model, result.removed_channels)
    assert check["ok"] and check["max_rel"] <= 1e-4
    assert check["masked_vs_original_max_abs"] > 1e-3  # the masks matter: the comparison is not vacuous
    assert result.report["params_after"] < result.report["params_before"] / 2


def test_round_to_and_ratio_zero() -> None:
    model = _residual_model()
    assert prune_onnx(model, ratio=0.0).report["channels"]["kept"] == prune_onnx(model, ratio=0.0).report[
        "channels"]["total"]
    result = prune_onnx(model, ratio=0.3, round_to=1)
    assert [r["kept"] for r in result.report["groups"]] == [3, 22, 22, 11, 10]  # round(32 * 0.7), round(16 * 0.7)
    with pytest.raises(SurgeryError, match="ratio 1.5 must be in"):
        prune_onnx(model, ratio=1.5)


def test_unsupported_ops_leave_their_channels_alone_and_the_rest_is_pruned() -> None:
    b = GraphBuilder(_fixed([]), 1, 13)
    x = _conv(b, "input", 3, 16, k=3)
    t = b.node("Transpose", [_conv(b, x, 16, 16)], perm=[0, 2, 3, 1])[0]        # unknown to the analysis
    sm = b.node("Softmax", [_conv(b, x, 16, 24)], axis=1)[0]                   # mixes channels
    r = b.node("Reshape", [_conv(b, x, 16, 8), b.const(np.array([1, 2, 4, 8, 8], dtype=np.int64))])[0]
    body = _conv(b, _conv(b, x, 16, 32), 32, 16)
    model = b.model([("input", [1, 3, 8, 8])], [(t, [1, 8, 8, 16]), (sm, [1, 24, 8, 8]), (r, [1, 2, 4, 8, 8]),
                                                 (body, [1, 16, 8, 8])])
    result = prune_onnx(model, ratio=0.5, round_to=8)
    left = sorted((r["channels"], r["reasons"][0].split(" ")[0]) for r in result.report["left_alone"])
    assert left == [(3, "graph"), (8, "Reshape"), (16, "Transpose"), (16, "graph"), (24, "Softmax")]
    reasons = [r["reasons"][0] for r in result.report["left_alone"]]
    assert any("moves channels into other axes ([1, 8, 8, 8] -> [1, 2, 4, 8, 8])" in x for x in reasons)
    pruned = [(r["channels"], r["kept"]) for r in result.report["groups"] if r["status"] == "pruned"]
    assert pruned == [(16, 8), (32, 16)]  # the stem conv and the body's inner conv are still pruned
    assert verify_slim(model, result.model, result.removed_channels)["ok"]


def test_split_slice_resize_and_reshape_are_rewritten() -> None:
    for opset in (9, 11, 13, 17):
        b = GraphBuilder(_fixed([]), 2, opset)
        x = _conv(b, "input", 3, 32, k=3)
        p, q = b.split(x, 32, [16, 16])
        s = b.channel_slice(x, 8, 24)
        up = b.node("MaxPool", [b.resize2x(q)], kernel_shape=[2, 2], strides=[2, 2])[0]
        cat = b.node("Concat", [_conv(b, p, 16, 16), up, s], axis=1)[0]
        flat = b.node("Reshape", [b.node("MaxPool", [cat], kernel_shape=[4, 4], strides=[4, 4])[0],
                                  b.const(np.array([1, 48 * 4], dtype=np.int64))])[0]
        out = b.node("MatMul", [flat, b.const(b.rng.standard_normal((192, 5)) * 0.1)])[0]
        model = b.model([("input", [1, 3, 8, 8])], [(out, [1, 5])])
        result = prune_onnx(model, ratio=0.5, round_to=4)
        # The split halves and the slice window are separate groups, each halved.
        kept = sorted((r["channels"], r["kept"]) for r in result.report["groups"] if r["status"] == "pruned")
        assert kept == [(8, 4), (8, 4), (8, 4), (8, 4), (16, 8)], opset
        matmul_w = [t for t in result.model.graph.initializer if list(t.dims)[-1] == 5][0]
        assert list(matmul_w.dims) == [(8 + 8 + 8) * 4, 5], opset  # 24 channels x 2x2 cells
        check = verify_slim(model, result.model, result.removed_channels)
        assert check["ok"], (opset, check)


def test_fp16_model() -> None:
    model = _residual_model(dtype=np.float16)
    result = prune_onnx(model, ratio=0.5, round_to=8)
    assert all(t.data_type == TensorProto.FLOAT16 for t in result.model.graph.initializer
               if t.name.startswith(("w_", "b_")))
    check = verify_slim(model, result.model, result.removed_channels)
    assert check["dtype"] == "float16" and check["tolerance"] == 1e-2
    assert check["ok"] and check["max_rel"] <= 1e-2


def test_verification_fails_on_a_wrong_slim_model() -> None:
    model = _residual_model()
    result = prune_onnx(model, ratio=0.5)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    w = [t for t in broken.graph.initializer if t.name.startswith("w_")][1]
    arr = numpy_helper.to_array(w).copy()
    arr[:, [0, 1]] = arr[:, [1, 0]]  # swap two input channels: what an off-by-one channel map would do
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    with pytest.raises(VerificationError, match="differs from the masked original"):
        verify_slim(model, broken, result.removed_channels)


def test_masked_model_inserts_one_mul_per_mask_point() -> None:
    model = _residual_model()
    result = prune_onnx(model, ratio=0.5)
    masked = masked_model(model, result.removed_channels)
    assert len(masked.graph.node) == len(model.graph.node) + len(result.removed_channels)
    onnx.checker.check_model(masked)


def test_node_name_to_module_path() -> None:
    assert module_path_from_node_name("/backbone/features.1/conv/conv.0/conv.0.0/Conv") == \
        "backbone.features.1.conv.0.0"
    assert module_path_from_node_name("/heads.1/pw1/pw1.0/Conv") == "heads.1.pw1.0"
    assert module_path_from_node_name("/neck/down4/pw/pw.0/Conv") == "neck.down4.pw.0"
    assert module_path_from_node_name("Conv_3") is None


# ------------------------------------------------------------------------------- the detector and the prune plan

def _random_detector() -> nn.Module:
    from benchmarks.common import he_randomise
    from compress.detector import DetectorConfig

    return he_randomise(seeded_detector(DetectorConfig(width_mult=0.35, input_size=128), seed=0), seed=1)


@pytest.fixture(scope="module")
def pruned_detector(tmp_path_factory):
    from compress.checkpoint import save_checkpoint
    from compress.prune_pipeline import plan_pruning, prune_detector
    from compress.pruning import save_plan
    from export.onnx_export import export_onnx
    from export.slim import densify as _densify

    out = tmp_path_factory.mktemp("surgery_detector")
    model = _random_detector()
    decision = plan_pruning(model, "l1", 0.5, round_to=8)
    result = prune_detector(model, decision, "l1", {"kind": "flops", "reduction": 0.5}, 8)
    pruned, plan = result["model"], result["plan"]
    save_plan(plan, out / "plan.json")
    save_checkpoint(out / "pruned.pt", pruned, ["person"], extra={"prune_plan": plan})
    dense = _densify(pruned, plan)
    export_onnx(dense, out / "dense.onnx", 128)
    return {"dir": out, "plan": plan, "dense": dense}


def test_plan_surgery_on_the_detector_matches_the_pruned_torch_model(pruned_detector) -> None:
    from export.lint import lint_onnx

    d = pruned_detector["dir"]
    report = surgery_with_plan(d / "dense.onnx", d / "plan.json", d / "slim.onnx")
    # BN was folded by the exporter: its layers have no node; every conv was matched by node name.
    assert report["matched_layers"] == 85 and report["folded_bn_layers"] == 82
    check = verify_against_torch(d / "slim.onnx", d / "pruned.pt", atol=1e-4)
    assert check["ok"] and check["max_rel"] <= 1e-4 and check["outputs"]["scores"]["max_abs"] <= 1e-4
    assert report["bytes_after"] < 0.6 * report["bytes_before"]
    assert (d / "slim.onnx").stat().st_size == report["bytes_after"]
    plan = pruned_detector["plan"]
    assert report["macs_after"] == pytest.approx(plan["achieved"]["macs"], rel=0.02)
    slim = onnx.load(str(d / "slim.onnx"))
    conv = next(n for n in slim.graph.node if n.name == "/backbone/features.3/conv/conv.0/conv.0.0/Conv")
    w = next(t for t in slim.graph.initializer if t.name == conv.input[1])
    spec = plan["layers"]["backbone.features.3.conv.0.0"]
    assert list(w.dims)[:2] == [len(spec["keep_out"] or range(spec["out"])), len(spec["keep_in"] or range(spec["in"]))]
    assert lint_onnx(str(d / "slim.onnx")).ok
    assert [o.version for o in slim.opset_import if o.domain in ("", "ai.onnx")] == [13]


def test_plan_surgery_with_unfolded_batchnorm(pruned_detector) -> None:
    d = pruned_detector["dir"]
    dense = pruned_detector["dense"]
    dense.export_mode = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(dense, (torch.zeros(1, 3, 128, 128),), str(d / "dense_bn.onnx"), dynamo=False,
                              opset_version=13, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                              input_names=["images"], output_names=["boxes", "scores"])
    finally:
        dense.export_mode = False
    report = surgery_with_plan(d / "dense_bn.onnx", d / "plan.json", d / "slim_bn.onnx")
    assert report["matched_layers"] == 85 + 82 and report["folded_bn_layers"] == 0  # BN nodes matched and checked
    assert verify_against_torch(d / "slim_bn.onnx", d / "pruned.pt")["max_rel"] <= 1e-4


def test_plan_that_contradicts_the_graph_is_rejected(pruned_detector) -> None:
    d = pruned_detector["dir"]
    plan = json.loads((d / "plan.json").read_text())
    # Keep different channels in the first conv of a residual pair than in its partner: coupling is violated.
    name = "backbone.features.2.conv.2"  # its output is added to backbone.features.3.conv.2's
    spec = plan["layers"][name]
    assert plan["layers"]["backbone.features.3.conv.2"]["keep_out"] is None and spec["keep_out"] is None
    spec["keep_out"] = list(range(1, spec["out"]))  # drop channel 0 here only
    with pytest.raises(SurgeryError, match="backbone.features.[23].conv.2 that is coupled .* plan and graph disagree"):
        surgery(d / "dense.onnx", d / "bad.onnx", plan=plan)
    assert not (d / "bad.onnx").exists()


def test_cli_surgery(tmp_path, capsys) -> None:
    from jetson_compress.cli import main

    src = tmp_path / "in.onnx"
    onnx.save(_residual_model(), str(src))
    rc = main(["surgery", str(src), "--out", str(tmp_path / "out.onnx"), "--ratio", "0.5", "--verify",
               "--report", str(tmp_path / "r.json")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verify"]["ok"] and report["channels"] == {"total": 93, "kept": 53}
    assert "left alone: group 0 (3 channels" in capsys.readouterr().out
    assert main(["surgery", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o.onnx"), "--ratio", "0.5"]) == 2
    # A failing verification exits 1 and writes nothing.
    rc = main(["surgery", str(src), "--out", str(tmp_path / "never.onnx"), "--ratio", "0.5", "--verify",
               "--atol", "-1"])
    assert rc == 1 and not (tmp_path / "never.onnx").exists()


def test_plan_surgery_verified_on_real_images(pruned_detector, voc_sample) -> None:
    from compress.pruning import load_plan
    from export.verify import image_inputs

    d = pruned_detector["dir"]
    dense = onnx.load(str(d / "dense.onnx"))
    result = prune_onnx(dense, plan=load_plan(d / "plan.json"))
    images = sorted(voc_sample.glob("*/JPEGImages/*.jpg"))[:2]
    feeds = image_inputs(dense, images)
    assert len(feeds) == 2 and feeds[0]["images"].shape == (1, 3, 128, 128)
    check = verify_slim(dense, result.model, result.removed_channels, inputs=feeds, n_random=1)
    assert check["inputs"] == 3 and check["ok"] and check["max_rel"] <= 1e-4


@pytest.mark.slow
def test_third_party_architectures() -> None:
    """ResNet-18, a YOLOv8n-style net (Split/Concat/SiLU/SPPF) in fp32 and fp16, and the MobileNetV2 detector,
    exported from torch with random weights: ``--ratio 0.5 --verify`` passes on each (benchmarks script)."""
    import importlib.util
    import tempfile

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "surgery_third_party.py"
    spec = importlib.util.spec_from_file_location("surgery_third_party", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_path in module._torch_models(Path(tmp)):
            report = surgery(model_path, Path(tmp) / f"slim_{model_path.name}", ratio=0.5, verify=True)
            assert report["verify"]["ok"], name
            assert report["params_after"] < 0.4 * report["params_before"], name
