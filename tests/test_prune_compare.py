"""The Torch-Pruning arm of benchmarks/prune_compare.py: it must land as close to the FLOPs target as a uniform
ratio allows, so the head-to-head compares models of (nearly) the same cost."""
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
