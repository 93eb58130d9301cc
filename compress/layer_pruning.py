"""Layer pruning with fusible residual convolution blocks (method M5).

1. **Conversion.** Every eligible ``conv -> BN -> act`` (a ``ConvBNAct``-like ``nn.Sequential``: same input and
   output channels, stride 1, plain or depthwise, and an activation that is a no-op on the layer's input) becomes a
   :class:`ResConv` ``y = act(s * BN(conv(x)) + x)`` with a trainable layer scale ``s``. MobileNetV2 inverted
   residuals that already have a shortcut become :class:`ScaledInvertedResidual` ``y = x + s * F(x)``.
   Module paths are kept (``ResConv`` is a ``Sequential`` with the conv at index 0 and the BN at 1), so the prune
   plan, the state dict keys and the ONNX names of the convolutions do not change.

   On a *trained* model the conversion is made function-preserving (:func:`preserve_function`): the ResConv's conv
   becomes ``a*W - I`` (``a`` the BN's per-channel scale, ``I`` the identity kernel) and its BN is set so that
   ``s * BN'(conv'(x)) + x == BN(conv(x))`` exactly in eval mode, with running statistics measured on calibration
   images so that train-mode BN behaves the same. Block scales start at 1, which is exact by construction.

2. **Sparsity.** :class:`LayerScaleL1` is an ``extra_loss`` for :func:`compress.train.train`:
   ``lambda * sum_l w_l |s_l|`` (``w_l`` the layer's share of the MACs relative to the mean, optional).

3. **Removal.** :func:`select_layers` removes the layers whose ``|s|`` is under a threshold, or -- for a FLOPs
   target -- the lowest-scored layers first until enough MACs are saved; :func:`remove_layers` replaces them with
   ``nn.Identity`` (exact: ``act(0 * ... + x) = x`` because the activation is a no-op on the layer's input, checked
   at conversion time).

4. **Fusion** into one ordinary convolution lives in :mod:`compress.fusion`.

The plan fields ``resconv_layers`` and ``removed_layers`` (see :mod:`compress.pruning`) rebuild the structure on
load: :func:`apply_layer_structure` converts, then removes.

Host side: imports torch.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from compress.mobilenetv2 import InvertedResidual

_ACTS = (nn.ReLU, nn.ReLU6)


class LayerPruningError(ValueError):
    pass


class ResConv(nn.Sequential):
    """``y = act(s * BN(conv(x)) + x)``; indices 0/1/2 = conv/BN/act like ``ConvBNAct``, plus the scalar ``scale``."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                 scale: float = 1.0) -> None:
        layers: List[nn.Module] = [conv, bn] + ([act] if act is not None else [])
        super().__init__(*layers)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        # Set by `scalar_scales`: the dependency-graph tracer then sees a constant, i.e. a channel-wise op.
        self._traced_scale: Optional[float] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale if self._traced_scale is None else self._traced_scale
        y = s * self[1](self[0](x)) + x
        return self[2](y) if len(self) > 2 else y


class ScaledInvertedResidual(InvertedResidual):
    """A MobileNetV2 block with a shortcut and a scale on its residual branch: ``y = x + s * F(x)``."""

    def __init__(self, block: InvertedResidual, scale: float = 1.0) -> None:
        if not block.use_res_connect:
            raise LayerPruningError("ScaledInvertedResidual needs a block with a shortcut (stride 1, cin == cout)")
        nn.Module.__init__(self)
        self.conv = block.conv
        self.use_res_connect = True
        self.out_channels = block.out_channels
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self._traced_scale: Optional[float] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale if self._traced_scale is None else self._traced_scale
        return x + s * self.conv(x)


SCALED_TYPES = (ResConv, ScaledInvertedResidual)


# -- finding and converting -----------------------------------------------------------------------------------

def _is_conv_bn_act(mod: nn.Module) -> bool:
    if not isinstance(mod, nn.Sequential) or isinstance(mod, ResConv) or len(mod) not in (2, 3):
        return False
    if not (isinstance(mod[0], nn.Conv2d) and isinstance(mod[1], nn.BatchNorm2d)):
        return False
    return len(mod) == 2 or isinstance(mod[2], _ACTS)


def _same_shape_conv(conv: nn.Conv2d) -> bool:
    k = conv.kernel_size
    return (conv.in_channels == conv.out_channels and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and conv.groups in (1, conv.in_channels) and conv.padding_mode == "zeros"
            and all(ki % 2 == 1 and p == ki // 2 for ki, p in zip(k, conv.padding)))


def _act_is_noop(act: nn.Module, x: torch.Tensor) -> bool:
    return bool(torch.equal(act(x.clone()), x))


def find_eligible(model: nn.Module, example: torch.Tensor) -> List[str]:
    """Names of the layers that can become ResConvs or scaled blocks, in module order.

    A probe forward pass on ``example`` checks that the activation is a no-op on each candidate's input (so that
    removing the layer is exactly the identity) and that its output has the input's shape.
    """
    modules = dict(model.named_modules())
    candidates = []
    for name, mod in modules.items():
        if isinstance(mod, ScaledInvertedResidual) or (isinstance(mod, InvertedResidual) and mod.use_res_connect):
            candidates.append(name)
        elif isinstance(mod, ResConv) or (_is_conv_bn_act(mod) and _same_shape_conv(mod[0])):
            candidates.append(name)
    ok: Dict[str, bool] = {}

    def hook(name: str):
        def fn(mod: nn.Module, inputs, output) -> None:
            x = inputs[0]
            good = isinstance(output, torch.Tensor) and output.shape == x.shape
            if good and isinstance(mod, nn.Sequential) and len(mod) > 2:
                good = _act_is_noop(mod[2], x)
            ok[name] = ok.get(name, True) and good
        return fn

    with _hooked_eval(model, [(modules[n], hook(n)) for n in candidates]), torch.no_grad():
        model(example)
    return [n for n in candidates if ok.get(n, False)]


@contextlib.contextmanager
def _hooked_eval(model: nn.Module, hooks: Iterable[Tuple[nn.Module, Callable]]) -> Iterator[None]:
    """While active, ``model`` is in eval mode with the forward ``hooks`` (module, hook) registered; afterwards the
    hooks are removed and every module's training flag is restored."""
    handles = [mod.register_forward_hook(fn) for mod, fn in hooks]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for h in handles:
            h.remove()
        for m, t in flags:
            m.training = t


def _forward_batches(model: nn.Module, calibration: torch.Tensor, batch: int) -> None:
    for i in range(0, len(calibration), batch):
        model(calibration[i:i + batch])


def _parent(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    if not name:
        raise LayerPruningError("the model itself cannot be converted or removed")
    parent_name, _, attr = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    except (AttributeError, IndexError) as exc:
        raise LayerPruningError(f"layer {name!r}: not found in the model ({exc})") from None
    return parent, attr


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise LayerPruningError(f"layer {name!r}: not found in the model") from None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, attr = _parent(model, name)
    if attr.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def convert_to_resconv(model: nn.Module, names: Iterable[str], scale: float = 1.0) -> List[str]:
    """Replace the named layers with ResConv / ScaledInvertedResidual in place (structure only; no weight change).

    Returns the converted names. Raises naming the layer when one is not convertible.
    """
    done = []
    for name in names:
        mod = _get(model, name)
        if isinstance(mod, SCALED_TYPES):
            done.append(name)
            continue
        if isinstance(mod, InvertedResidual):
            if not mod.use_res_connect:
                raise LayerPruningError(f"layer {name}: inverted residual without a shortcut cannot be scaled")
            _replace(model, name, ScaledInvertedResidual(mod, scale))
        elif _is_conv_bn_act(mod):
            if not _same_shape_conv(mod[0]):
                c = mod[0]
                raise LayerPruningError(
                    f"layer {name}: conv {c.in_channels}->{c.out_channels} stride {tuple(c.stride)} groups {c.groups} "
                    f"does not keep channels and size, so it has no identity shortcut")
            act = mod[2] if len(mod) > 2 else None
            _replace(model, name, ResConv(mod[0], mod[1], act, scale))
        else:
            raise LayerPruningError(f"layer {name}: {type(mod).__name__} is not a conv-BN-act or inverted residual")
        done.append(name)
    return done


def identity_kernel(conv: nn.Conv2d) -> torch.Tensor:
    """The kernel of ``conv``'s shape that maps channel c to channel c unchanged (1 at the kernel centre)."""
    w = torch.zeros_like(conv.weight)
    kh, kw = conv.kernel_size
    idx = torch.arange(conv.out_channels)
    if conv.groups == 1:
        w[idx, idx, kh // 2, kw // 2] = 1.0
    else:  # depthwise: one input channel per filter, the identity is per channel
        w[idx, 0, kh // 2, kw // 2] = 1.0
    return w


@torch.no_grad()
def preserve_function(model: nn.Module, calibration: Optional[torch.Tensor] = None, batch: int = 16) -> None:
    """Make every freshly converted ResConv compute exactly what its conv-BN-act did (eval mode).

    With BN's eval-mode affine ``a*z + b``: conv' = a*W - I, s = 1, BN' = (gamma' = sqrt(var'+eps), beta' = b + mu'),
    so ``s*BN'(conv'(x)) + x = a*conv(x) + b``. ``mu', var'`` are free for eval mode; they are set to the statistics
    of conv'(x) on ``calibration`` (when given) so that train-mode BN starts where eval mode is.
    """
    resconvs = [(n, m) for n, m in model.named_modules() if isinstance(m, ResConv)]
    for _, m in resconvs:
        conv, bn = m[0], m[1]
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        b = bn.bias - a * bn.running_mean
        conv.weight.copy_(conv.weight * a.view(-1, 1, 1, 1) - identity_kernel(conv))
        if conv.bias is not None:
            b = b + a * conv.bias
            conv.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(float(torch.sqrt(torch.tensor(1.0 + bn.eps))))
        bn.bias.copy_(b)
        m.scale.fill_(1.0)
    for m in model.modules():
        if isinstance(m, ScaledInvertedResidual):
            m.scale.fill_(1.0)
    if calibration is None or not resconvs:
        return
    sums: Dict[str, List[torch.Tensor]] = {n: [] for n, _ in resconvs}

    def hook(name: str):
        def fn(mod, inputs, output) -> None:
            sums[name].append(output.detach().double().transpose(0, 1).flatten(1))
        return fn

    with _hooked_eval(model, [(m[0], hook(n)) for n, m in resconvs]):
        _forward_batches(model, calibration, batch)
    for name, m in resconvs:
        z = torch.cat(sums[name], 1)
        mu, var = z.mean(1), z.var(1, unbiased=False)
        bn = m[1]
        bn.running_mean.copy_(mu.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_(torch.sqrt(var + bn.eps).float())
        bn.bias.add_(mu.float())


@contextlib.contextmanager
def scalar_scales(model: nn.Module) -> Iterator[None]:
    """While active, layer scales enter the forward pass as Python floats: ``torch.fx`` (the dependency graph,
    channel analysis) then sees ``s * t`` as a channel-wise op instead of an op on an unknown tensor."""
    scaled = [m for m in model.modules() if isinstance(m, SCALED_TYPES)]
    for m in scaled:
        m._traced_scale = float(m.scale.detach())
    try:
        yield
    finally:
        for m in scaled:
            m._traced_scale = None


# -- sparsity and selection -----------------------------------------------------------------------------------

def scaled_layers(model: nn.Module) -> Dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SCALED_TYPES)}


def layer_macs(model: nn.Module, input_size: int) -> Dict[str, int]:
    """MACs of every Conv2d call, by module name (one dummy forward)."""
    from compress.flops import count_flops_params

    cost = count_flops_params(model, (1, 3, input_size, input_size))
    out: Dict[str, int] = {}
    for lc in cost.per_layer:
        out[lc.name] = out.get(lc.name, 0) + lc.macs
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class LayerScaleL1:
    """Extra loss for :func:`compress.train.train`: ``lambda * sum_l w_l * |s_l|`` over the layer scales.

    ``flops_weighted``: ``w_l`` = the MACs the layer's removal saves divided by the mean over layers, so that the
    costly layers are pushed harder (a FLOPs target is met by fewer, bigger removals); else ``w_l = 1``.
    """

    def __init__(self, model: nn.Module, input_size: int, lam: float = 1e-3, flops_weighted: bool = True) -> None:
        self.layers = scaled_layers(model)
        if not self.layers:
            raise LayerPruningError("the model has no ResConv / scaled blocks: convert it first")
        macs = layer_macs(model, input_size)
        saved = {n: sum(v for k, v in macs.items() if _under(k, n)) for n in self.layers}
        mean = sum(saved.values()) / len(saved) or 1.0
        self.weight = {n: (saved[n] / mean if flops_weighted and saved[n] > 0 else 1.0) for n in self.layers}
        self.lam = lam

    def __call__(self, model: nn.Module) -> torch.Tensor:
        terms = [self.weight[n] * m.scale.abs() for n, m in self.layers.items()]
        return self.lam * torch.stack(terms).sum()


@torch.no_grad()
def branch_ratio(model: nn.Module, calibration: torch.Tensor, batch: int = 16) -> Dict[str, float]:
    """Per scaled layer: mean ||s * branch(x)|| / ||x|| on calibration images (how far it is from the identity)."""
    layers = scaled_layers(model)
    acc: Dict[str, List[float]] = {n: [0.0, 0.0] for n in layers}

    def hook(name: str):
        def fn(mod, inputs, output) -> None:
            x = inputs[0]
            if isinstance(mod, ResConv):
                delta = mod.scale * mod[1](mod[0](x))
            else:
                delta = output - x
            acc[name][0] += float(delta.norm())
            acc[name][1] += float(x.norm())
        return fn

    with _hooked_eval(model, [(m, hook(n)) for n, m in layers.items()]):
        _forward_batches(model, calibration, batch)
    return {n: a / max(b, 1e-12) for n, (a, b) in acc.items()}


def layer_table(model: nn.Module, input_size: int, calibration: Optional[torch.Tensor] = None) -> List[Dict]:
    """One row per scaled layer: name, type, |s|, score (|s|, or |s| x branch ratio with calibration), MACs under it."""
    macs = layer_macs(model, input_size)
    ratio = branch_ratio(model, calibration) if calibration is not None else None
    rows = []
    for n, m in scaled_layers(model).items():
        s = abs(float(m.scale.detach()))
        rows.append({"name": n, "type": type(m).__name__, "scale": s,
                     "score": ratio[n] if ratio is not None else s,
                     "macs": int(sum(v for k, v in macs.items() if _under(k, n)))})
    return rows


def select_layers(table: Sequence[Dict], *, threshold: Optional[float] = None,
                  macs_to_save: Optional[float] = None) -> List[str]:
    """The layers to remove: all with ``score < threshold``, or the lowest scores first until ``macs_to_save``.

    Nested layers (a ResConv inside a removed block) are never counted twice; the result holds no name under
    another. With a MACs target the last layer may overshoot it (removal is all or nothing).
    """
    if (threshold is None) == (macs_to_save is None):
        raise LayerPruningError("give exactly one of threshold or macs_to_save")
    order = sorted(table, key=lambda r: (r["score"], -r["macs"]))
    chosen: List[str] = []
    saved = 0.0
    for row in order:
        name = row["name"]
        if any(_under(name, c) for c in chosen):
            continue  # inside a removed block already
        if threshold is not None:
            if row["score"] >= threshold:
                break
        elif saved >= macs_to_save:
            break
        inner = [c for c in chosen if _under(c, name)]
        inner_macs = sum(r["macs"] for r in table if r["name"] in inner)
        chosen = [c for c in chosen if c not in inner] + [name]
        saved += row["macs"] - inner_macs
    if macs_to_save is not None and saved < macs_to_save:
        total = sum(r["macs"] for r in table if not any(_under(r["name"], o["name"]) and r is not o for o in table))
        raise LayerPruningError(
            f"removing every eligible layer saves {total} MACs, less than the {int(macs_to_save)} the target needs: "
            f"lower the target or combine with channel pruning (--method layer+richness)")
    return sorted(chosen)


def remove_layers(model: nn.Module, names: Iterable[str]) -> List[str]:
    """Replace each named layer with ``nn.Identity`` in place; parents before children, nested names skipped.

    Every name must be a layer with an identity shortcut (ResConv, scaled block, or a still-unconverted eligible
    conv-BN-act / inverted residual), else the removal would change shapes -- that raises naming the layer.
    """
    removed: List[str] = []
    for name in sorted(set(names), key=lambda n: (n.count("."), n)):
        if any(_under(name, r) for r in removed):
            continue
        mod = _get(model, name)
        if isinstance(mod, nn.Identity):
            removed.append(name)
            continue
        ok = isinstance(mod, SCALED_TYPES) or (isinstance(mod, InvertedResidual) and mod.use_res_connect) or (
            _is_conv_bn_act(mod) and _same_shape_conv(mod[0]))
        if not ok:
            raise LayerPruningError(
                f"layer {name}: {type(mod).__name__} has no identity shortcut; it cannot be removed")
        _replace(model, name, nn.Identity())
        removed.append(name)
    return removed


def apply_layer_structure(model: nn.Module, plan: Dict) -> nn.Module:
    """Rebuild the layer-pruned structure of a plan on a fresh dense model: convert, then remove."""
    resconv = plan.get("resconv_layers") or []
    removed = plan.get("removed_layers") or []
    try:
        convert_to_resconv(model, [n for n in resconv if not any(_under(n, r) for r in removed)])
        remove_layers(model, removed)
    except LayerPruningError as exc:
        raise LayerPruningError(f"prune plan does not fit the model: {exc}") from None
    return model


def count_layers(model: nn.Module) -> int:
    """Number of convolution layers (what the device launches kernels for, before TensorRT's own fusions)."""
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))
