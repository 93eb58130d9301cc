"""benchmarks/prune_compare.py: the Torch-Pruning arm must land as close to the FLOPs target as a uniform ratio
allows, so the head-to-head compares models of (nearly) the same cost; method names map to the planner's options;
the unpruned control is the baseline fine-tuned once."""
import json

import numpy as np
import pytest
import torch

from benchmarks.prune_compare import torch_pruning_at, torch_pruning_variant
from compress.flops import count_flops_params
from tests.nets import random_detector, tiny_config

pytest.importorskip("torch_pruning")


@pytest.mark.parametrize("reduction", [0.5, 0.7])
def test_torch_pruning_lands_closest_to_target(reduction: float) -> None:
    size, round_to = 64, 8
    model, _ = random_detector(tiny_config(size))
    base = count_flops_params(model, (1, 3, size, size)).macs
    target = int(base * (1 - reduction))
    pruned, macs, ratio = torch_pruning_variant(model, target, size, round_to=round_to)
    assert macs == count_flops_params(pruned, (1, 3, size, size)).macs < base
    assert 0.0 < ratio < 0.95
    # No uniform ratio on a fine grid gets closer to the target than the one chosen.
    grid = [torch_pruning_at(model, float(r), size, round_to)[1] for r in np.arange(0.0, 0.95, 0.05)]
    assert abs(macs - target) <= min(abs(g - target) for g in grid)
    # The pruned model is physically smaller and still runs.
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    outs = pruned.raw_outputs(torch.zeros(1, 3, size, size))
    assert [o.shape[-1] for o in outs] == [size // 8, size // 16, size // 32]


def test_torch_pruning_keeps_the_fine_streams_whole_when_asked() -> None:
    """``torch-pruning+streams``: the residual streams that ours keep whole are ignored layers for Torch-Pruning;
    every convolution of their channel groups keeps its channels, the rest is still cut to the target."""
    from compress.depgraph import build_dependency_graph
    from compress.prune_pipeline import expand_keep_whole

    size, round_to = 64, 8
    model, _ = random_detector(tiny_config(size))
    whole = expand_keep_whole(model, ["fine-streams"])
    assert len(whole) == 2
    dg = build_dependency_graph(model, size)
    streams = [g for g in dg.prunable_groups() if set(g.producers) & set(whole)]
    assert len(streams) == 2
    base = count_flops_params(model, (1, 3, size, size)).macs
    pruned, macs, _ = torch_pruning_variant(model, int(base * 0.5), size, round_to=round_to, keep_whole=whole)
    before, after = dict(model.named_modules()), dict(pruned.named_modules())
    for g in streams:
        for name in g.producers:
            assert after[name].out_channels == before[name].out_channels
    plain, _, _ = torch_pruning_variant(model, int(base * 0.5), size, round_to=round_to)
    assert any(dict(plain.named_modules())[n].out_channels < before[n].out_channels for n in whole)
    assert sum(after[n].out_channels < m.out_channels for n, m in before.items()
               if isinstance(m, torch.nn.Conv2d)) > 10
    assert macs < 0.6 * base


def test_method_names_map_to_the_planner_options() -> None:
    from benchmarks.prune_compare import METHODS, method_options

    assert method_options("richness+comp+streams+gl1", "ort-cpu", 0.5, 0.25) == (
        "richness", ["comp", "streams", "gl1"], {"channel_criterion": "group-l1"})
    assert method_options("richness+comp+lat", "ort-cpu", 0.5, 0.25) == (
        "richness", ["comp", "lat"], {"latency_model": "ort-cpu", "latency_tilt": 0.5})
    assert method_options("l1+comp+streams", "ort-cpu", 0.5, 0.25) == ("l1", ["comp", "streams"], {})
    assert method_options("l1+comp+streams+gl1", "ort-cpu", 0.5, 0.25) == (
        "l1", ["comp", "streams", "gl1"], {"channel_criterion": "group-l1"})
    for m in METHODS:  # every offered method parses
        if not m.startswith("torch-pruning"):
            method_options(m, "ort-cpu", 0.5, 0.25)
    with pytest.raises(ValueError, match="unknown option"):
        method_options("richness+gl2", "ort-cpu", 0.5, 0.25)


def test_the_unpruned_control_is_the_baseline_fine_tuned_once(tmp_path, voc_sample) -> None:
    # The control row: the baseline's FLOPs and parameters, its AP50 before fine-tuning, no FLOPs target, and one row
    # however many targets are asked for (a pruned method gets one per target).
    from benchmarks.prune_compare import main

    out = tmp_path / "pc"
    assert main(["--data", str(voc_sample), "--targets", "0.5", "0.7", "--methods", "unpruned", "l1",
                 "--finetune-epochs", "1", "--finetune-warmup", "0.5", "--set", "train.batch_size=4",
                 "--set", "train.ema_decay=0.999", "--latency-rounds", "0", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads((out / "prune_compare.json").read_text())
    assert (result["finetune_warmup_epochs"], result["ema_decay"]) == (0.5, 0.999)  # the recipe, as run, recorded
    rows = result["rows"]
    assert [r["variant"] for r in rows] == ["baseline", "unpruned", "l1@50", "l1@70"]
    base, ctrl = rows[0], rows[1]
    assert ctrl["target"] == 0.0 and ctrl["finetune_epochs"] == 1
    assert (ctrl["flops"], ctrl["params"]) == (base["flops"], base["params"])
    assert ctrl["ap50_before"] == pytest.approx(base["ap50_after"], abs=1e-9)
    assert rows[2]["flops"] < base["flops"] / 1.9 and rows[3]["flops"] < base["flops"] / 3.0
