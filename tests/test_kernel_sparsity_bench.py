"""The ONNX facts of ``benchmarks/kernel_sparsity.py`` on a hand-made convolution with known zero kernels."""
from __future__ import annotations

import gzip
import warnings

import torch
from torch import nn

from benchmarks.kernel_sparsity import onnx_file_facts


def test_onnx_file_facts_counts_the_zero_kernels(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False)).eval()
    with torch.no_grad():
        net[0].weight.add_(torch.sign(net[0].weight) * 0.01)  # no accidental zeros
        net[0].weight[0, 0] = 0  # two whole 3x3 kernels
        net[0].weight[5, 2] = 0
        net[0].weight[7, 1, 1, 1] = 0  # one weight, not a whole kernel
    path = tmp_path / "c.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is the design's choice (dynamo=False): no nagging
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, 4, 6, 6), str(path), opset_version=13, dynamo=False,
                          input_names=["images"], output_names=["y"])
    facts = onnx_file_facts(str(path))
    assert facts["conv_weights"] == 8 * 4 * 9
    assert facts["conv_weights_zero"] == 2 * 9 + 1
    assert facts["conv_kernels_zero"] == 2
    data = path.read_bytes()
    assert facts["onnx_bytes"] == len(data) and facts["onnx_gzip_bytes"] == len(gzip.compress(data, 6))
