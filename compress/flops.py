"""FLOP and parameter counting for torch models (host side).

`count_flops_params` runs one dummy input through the model in eval mode under ``torch.no_grad()`` with forward
hooks on the layers that dominate the cost, and returns a `ModelCost`. Host side: torch only, never imported by
device code.

Conventions (the numbers go into the deploy manifest and the benchmark report, so they are fixed here):

- **MACs** are multiply-accumulates; **FLOPs = 2 × MACs**. Both are reported, and named so.
- Counts are for the whole ``input_shape``, batch included (batch 2 counts twice the MACs of batch 1).
- Convolutions (1d/2d/3d, any ``groups``, depthwise included): ``output elements × in_channels / groups ×
  kernel elements``. Transposed convolutions: ``input elements × out_channels / groups × kernel elements``
  (each input element is scattered over a kernel window). Linear: ``rows × in_features × out_features``.
  The bias add is not a multiply-accumulate and is not counted (fvcore's convention); its parameters are.
- Batch norm (1d/2d/3d) is counted only with ``include_bn=True``, as one MAC per output element (it is an affine
  ``x * a + b`` in eval mode). The default is False because BN is folded into the preceding convolution before
  export, so it costs nothing on the device.
- Ignored: activations, pooling, upsampling/resize, concatenation, element-wise adds, and anything computed by
  functional calls rather than by calling a module (e.g. ``F.conv2d`` inside a custom ``forward``). These are
  memory-bound and small next to the convolutions of a detector.
- ``params`` is the number of elements of the model's unique parameter tensors (shared tensors counted once;
  buffers such as BN running statistics are not parameters). ``per_layer`` lists every counted call, in execution
  order: a module called twice appears twice, with its own parameters each time.
"""

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["LayerCost", "ModelCost", "count_flops_params"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class LayerCost(NamedTuple):
    """The cost of one counted module call."""

    name: str  # qualified module name from ``model.named_modules()`` ("" for the model itself)
    type: str  # class name, e.g. "Conv2d"
    macs: int
    params: int  # parameters owned directly by this module (weight, bias)
    output_shape: Tuple[int, ...]


class ModelCost(NamedTuple):
    """Totals and per-layer breakdown returned by `count_flops_params`."""

    macs: int  # multiply-accumulates of the counted layers
    flops: int  # 2 * macs
    params: int  # elements of the unique parameter tensors of the whole model
    per_layer: List[LayerCost]


def _layer_macs(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> Optional[int]:
    """MACs of one call of ``module``, or None when the module type is not counted."""
    if isinstance(module, _CONV_TYPES):
        kernel_elements = 1
        for size in module.kernel_size:
            kernel_elements *= int(size)
        return output.numel() * (module.in_channels // module.groups) * kernel_elements
    if isinstance(module, _CONV_TRANSPOSE_TYPES):
        kernel_elements = 1
        for size in module.kernel_size:
            kernel_elements *= int(size)
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel_elements
    if isinstance(module, nn.Linear):
        rows = output.numel() // module.out_features
        return rows * module.in_features * module.out_features
    if isinstance(module, _BN_TYPES):
        return output.numel()
    return None


def _dummy_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), None)
    if reference is None or not reference.is_floating_point():
        return torch.zeros(tuple(input_shape))
    return torch.zeros(tuple(input_shape), dtype=reference.dtype, device=reference.device)


def count_flops_params(
    model: nn.Module,
    input_shape: Sequence[int] = (1, 3, 320, 320),
    include_bn: bool = False,
) -> ModelCost:
    """Count MACs, FLOPs and parameters of ``model`` for one input of ``input_shape``.

    The model is run once on zeros (same dtype and device as its parameters) in eval mode under
    ``torch.no_grad()``; each module's train/eval flag is restored afterwards, also when the forward raises.

    Args:
        model: the network; called as ``model(x)`` with a single tensor.
        input_shape: shape of the dummy input, batch included.
        include_bn: also count batch norm layers (one MAC per output element); off by default because BN is folded
            away before export.

    Returns:
        `ModelCost` with ``macs``, ``flops`` (= 2 × macs), ``params`` and ``per_layer``.
    """
    counted_types = _CONV_TYPES + _CONV_TRANSPOSE_TYPES + (nn.Linear,) + (_BN_TYPES if include_bn else ())
    per_layer: List[LayerCost] = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            macs = _layer_macs(module, inputs, output)
            if macs is None:
                return
            own_params = sum(p.numel() for p in module.parameters(recurse=False))
            per_layer.append(LayerCost(name, type(module).__name__, int(macs), int(own_params), tuple(output.shape)))

        return hook

    training_flags = [(module, module.training) for module in model.modules()]
    handles = [
        module.register_forward_hook(make_hook(name))
        for name, module in model.named_modules()
        if isinstance(module, counted_types)
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(_dummy_input(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()
        for module, was_training in training_flags:
            module.training = was_training

    macs = sum(layer.macs for layer in per_layer)
    # model.parameters() already yields each shared tensor once.
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(macs=macs, flops=2 * macs, params=params, per_layer=per_layer)
