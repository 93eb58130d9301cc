"""The slim ONNX of a pruned checkpoint (`export.slim`): densify -> fuse -> dense export -> surgery -> verify,
for channel plans and for plans that also remove layers (M5), and the ``export --plan`` / plan-carrying variants."""
from __future__ import annotations

import json

import onnx
import pytest
import torch

from tests.test_surgery import _random_detector as _he_random_detector


def _random_detector():
    """He-scaled random detector with tame prediction convs: boxes stay within a few image sizes, so float32
    parity checks on the export measure the export, not cancellation in exp(huge) - centre."""
    model = _he_random_detector()
    for head in model.heads:
        head.pred.weight.data *= 0.05
    return model


@pytest.fixture(scope="module")
def pruned_pair(tmp_path_factory):
    """A random detector, its channel-pruned (l1) and its layer+channel-pruned (layer+richness) checkpoints."""
    from compress.checkpoint import save_checkpoint
    from compress.prune_pipeline import layer_prune_detector, plan_pruning, prune_detector
    from compress.pruning import save_plan

    out = tmp_path_factory.mktemp("slim")
    model = _random_detector()
    save_checkpoint(out / "base.pt", model, ["person"])
    decision = plan_pruning(model, "l1", 0.5, round_to=8)
    res = prune_detector(model, decision, "l1", {"kind": "flops", "reduction": 0.5}, 8)
    save_plan(res["plan"], out / "plan.json")
    save_checkpoint(out / "channel.pt", res["model"], ["person"], extra={"prune_plan": res["plan"]})
    calib = torch.randn(4, 3, 128, 128)
    lres = layer_prune_detector(model, "layer+richness", 0.5, calib, layer_score="scale")
    save_checkpoint(out / "layer.pt", lres["model"], ["person"], extra={"prune_plan": lres["plan"]})
    return {"dir": out, "channel": res, "layer": lres}


@pytest.mark.parametrize("variant", ["channel", "layer"])
def test_slim_onnx_matches_the_pruned_torch_model(pruned_pair, variant) -> None:
    from compress.flops import count_flops_params
    from export.lint import lint_onnx
    from export.slim import slim_onnx_from_checkpoint

    d = pruned_pair["dir"]
    result = slim_onnx_from_checkpoint(d / f"{variant}.pt", d / f"{variant}.onnx", d / f"{variant}.work",
                                       log=lambda s: None)
    assert result["verify"]["ok"] and result["verify"]["max_rel"] <= 1e-4
    slim = onnx.load(str(d / f"{variant}.onnx"))
    ops = [n.op_type for n in slim.graph.node]
    assert "BatchNormalization" not in ops
    pruned = pruned_pair[variant]["model"]
    sizes = {t.name: int(torch.tensor(list(t.dims)).prod()) for t in slim.graph.initializer}
    params = sum(sizes[i] for n in slim.graph.node if n.op_type == "Conv" for i in n.input[1:] if i in sizes)
    # Every parameter of the pruned torch model, conv-BN folded: conv weights + one bias per output channel.
    expected = sum(m.weight.numel() + m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))
    assert params == expected
    assert result["surgery"]["macs_after"] == pytest.approx(
        count_flops_params(pruned, (1, 3, 128, 128)).macs, rel=0.02)
    assert lint_onnx(str(d / f"{variant}.onnx")).ok
    if variant == "layer":
        removed = pruned_pair["layer"]["plan"]["removed_layers"]
        assert removed and result["removed_layers"] == removed
        base_convs = sum(isinstance(m, torch.nn.Conv2d) for m in _random_detector().modules())
        assert ops.count("Conv") == sum(isinstance(m, torch.nn.Conv2d) for m in pruned.modules()) < base_convs
        # Fused ResConvs leave no Mul (scale) or Add (identity) behind: the graph has the baseline's Muls (box
        # decoding) and at most its Adds (the MobileNetV2 shortcuts, fewer where a block was removed).
        from compress.fusion import fuse_model
        from export.onnx_export import export_onnx

        export_onnx(fuse_model(_random_detector()), d / "base.onnx", 128, verify=False)  # op counts only
        base_ops = [n.op_type for n in onnx.load(str(d / "base.onnx")).graph.node]
        assert ops.count("Mul") == base_ops.count("Mul")
        assert ops.count("Add") <= base_ops.count("Add")


def test_export_command_bundles_slim_variants_and_a_plan(pruned_pair, tmp_path, capsys) -> None:
    from jetson_compress.cli import main

    d = pruned_pair["dir"]
    rc = main(["export", "--checkpoint", str(d / "base.pt"), "--variant", f"layered={d / 'layer.pt'}",
               "--plan", str(d / "plan.json"), "--bundle", str(tmp_path / "b")])
    assert rc == 0, capsys.readouterr()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert sorted(manifest["variants"]) == ["baseline", "layered", "pruned"]
    base = manifest["variants"]["baseline"]
    for name in ("layered", "pruned"):
        entry = manifest["variants"][name]
        assert entry["flops"] < 0.6 * base["flops"] and entry["bytes"] < 0.7 * base["bytes"]
    # The --plan variant is the baseline's weights cut by the plan: the torch model of the same cut has its params.
    assert manifest["variants"]["pruned"]["params"] == pruned_pair["channel"]["plan"]["achieved"]["params"]
    assert manifest["variants"]["pruned"]["flops"] == pytest.approx(
        2 * pruned_pair["channel"]["plan"]["achieved"]["macs"], rel=0.01)


def test_export_plan_that_removes_layers_is_refused(pruned_pair, tmp_path, capsys) -> None:
    from compress.pruning import save_plan
    from jetson_compress.cli import main

    d = pruned_pair["dir"]
    save_plan(pruned_pair["layer"]["plan"], tmp_path / "layer_plan.json")
    rc = main(["export", "--checkpoint", str(d / "base.pt"), "--plan", str(tmp_path / "layer_plan.json"),
               "--bundle", str(tmp_path / "b")])
    assert rc == 2
    assert "removes layers" in capsys.readouterr().err
    assert not (tmp_path / "b" / "manifest.json").exists()
