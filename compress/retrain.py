"""Retraining of a pruned detector: plain fine-tuning, grafting (M2), distillation, adversarial alignment with
multi-indicator architecture selection (M3). Selected with ``jetson-compress prune --finetune``.

All four share one loop (:func:`_loop`) bounded by a number of steps and/or a wall-clock budget, so that the
benchmark can compare them at an equal wall-clock budget. Learning rate: cosine over the budget consumed
(``max(step / steps, elapsed / seconds)``), AdamW with the training configuration's lr and weight decay, the
training augmentation, the frozen early backbone blocks of the training configuration.

- **plain**: the detection loss.
- **graft** (M2): two copies of the pruned network trained side by side (different data order; learning rate of
  the second scaled by ``lr2_ratio``); every ``graft_every`` steps, for every convolution l,
  ``W1 <- a_l W1 + (1 - a_l) W2`` with ``a_l = A arctan(c (H(W1,l) - H(W2,l))) + 0.5`` (H: entropy of the layer's
  weight histogram; A = 0.4, c = 500). *Joint*: the same ``a_l`` mixes the layer's BatchNorm affine parameters and
  running statistics (and the layer scale of a ResConv). ``a`` is clipped to [0, 1] by default (the formula
  reaches -0.13 .. 1.13; extrapolating BN running variances can make them negative). *Adaptive* (choice made
  here): the layer entropy of M1, in its weight-histogram form, sets the grafting strength
  ``g_l = clip(1 - minmax_l(H(W1,l)), g_min, 1)`` and ``a_l <- 1 - g_l (1 - a_l)``: layers that carry little
  information take more from the other network, information-rich layers are left closer to themselves.
  On by default in :func:`finetune` (``options={"adaptive": False}`` for the plain formula).
  Only the first network is grafted (the second keeps its own trajectory, so the two stay different); it is the
  result. Costs two trainings per step.
- **distill**: detection loss + ``w`` x (Bernoulli KL between teacher and student class probabilities, MSE of the
  log-distances weighted by the teacher's score, MSE of the neck features through 1x1 adapters where channel
  counts differ). Zero for identical networks.
- **adversarial** (M3): BN scaling factors of the prunable channel groups as learnable channel scales with an L1
  penalty; a small per-point discriminator on the head outputs (teacher = real, student = fake, non-saturating GAN
  loss) plus the direct alignment loss of ``distill`` and the detection loss. Afterwards, candidate architectures
  are cut at thresholds on the scales; each is scored by channels kept and accuracy, and
  :func:`select_candidate` picks from the Pareto front under the budget.

Host side: imports torch.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.detector import Detector

METHODS = ("plain", "graft", "distill", "adversarial")


# -- data and loop ----------------------------------------------------------------------------------------------

def batch_stream(train_set, input_size: int, cfg: Dict[str, Any], seed: int) -> Iterator[Tuple[torch.Tensor, List]]:
    """Endless augmented training batches (a new shuffled epoch each time the data runs out)."""
    from compress.train import TrainSet, collate

    data = TrainSet(train_set, input_size, cfg, seed)
    bs = int(cfg.get("batch_size", 16))
    gen = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        data.epoch = epoch
        loader = torch.utils.data.DataLoader(data, batch_size=bs, shuffle=True, collate_fn=collate,
                                             drop_last=len(data) > bs, generator=gen)
        for batch in loader:
            yield batch
        epoch += 1


class _Budget:
    def __init__(self, steps: Optional[int], seconds: Optional[float]) -> None:
        if steps is None and seconds is None:
            raise ValueError("retraining needs a budget: steps and/or seconds")
        self.steps, self.seconds = steps, seconds
        self.t0 = time.perf_counter()

    def fraction(self, step: int) -> float:
        f = 0.0
        if self.steps:
            f = max(f, step / self.steps)
        if self.seconds:
            f = max(f, (time.perf_counter() - self.t0) / self.seconds)
        return min(f, 1.0)

    def done(self, step: int) -> bool:
        return self.fraction(step) >= 1.0


def _cosine(base: float, frac: float, min_ratio: float) -> float:
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _optimizer(model: nn.Module, cfg: Dict[str, Any], extra: Sequence[nn.Parameter] = ()) -> torch.optim.Optimizer:
    from compress.train import param_groups

    groups = param_groups(model, float(cfg.get("weight_decay", 0.05)), float(cfg.get("backbone_lr_mult", 1.0)))
    if extra:
        groups.append({"params": list(extra), "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=float(cfg.get("lr", 2e-3)))


def forward_with_features(model: Detector, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(head outputs, neck features) of one forward pass."""
    feats = model.neck(model.backbone(x))
    return [head(f) for head, f in zip(model.heads, feats)], feats


def _prepare(model: Detector, cfg: Dict[str, Any]) -> List[nn.Module]:
    from compress.train import freeze_early_blocks, set_train_mode

    frozen = freeze_early_blocks(model, int(cfg.get("freeze_blocks", 0)))
    set_train_mode(model, frozen)
    return frozen


def _finish(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, where: str) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{where}: loss became {float(loss)}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 10.0)
    opt.step()


# -- distillation ---------------------------------------------------------------------------------------------

class FeatureAdapters(nn.Module):
    """1x1 convs from student to teacher neck channels, only where the counts differ (else the identity)."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> None:
        super().__init__()
        self.maps = nn.ModuleList([
            nn.Identity() if s == t else nn.Conv2d(s, t, 1, bias=False)
            for s, t in zip(student_channels, teacher_channels)])

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [m(f) for m, f in zip(self.maps, feats)]


def distill_loss(student_outs: Sequence[torch.Tensor], teacher_outs: Sequence[torch.Tensor], num_classes: int,
                 student_feats: Optional[Sequence[torch.Tensor]] = None,
                 teacher_feats: Optional[Sequence[torch.Tensor]] = None,
                 adapters: Optional[FeatureAdapters] = None, w_cls: float = 1.0, w_box: float = 1.0,
                 w_feat: float = 1.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Head-output (and neck-feature) distillation; exactly 0 when student and teacher compute the same thing."""
    cls_terms, box_terms = [], []
    for s, t in zip(student_outs, teacher_outs):
        t = t.detach()
        s_logit, t_logit = s[:, :num_classes], t[:, :num_classes]
        p_t = torch.sigmoid(t_logit)
        # KL(Bernoulli(p_t) || Bernoulli(p_s)) = BCE(s, p_t) - H(p_t)
        kl = (F.binary_cross_entropy_with_logits(s_logit, p_t, reduction="none")
              - F.binary_cross_entropy_with_logits(t_logit, p_t, reduction="none"))
        cls_terms.append(kl.sum(1).mean())
        w = p_t.max(1, keepdim=True).values
        err = (s[:, num_classes:] - t[:, num_classes:]).pow(2).sum(1, keepdim=True)
        box_terms.append((w * err).sum() / w.sum().clamp(min=1e-6))
    loss_cls = torch.stack(cls_terms).mean()
    loss_box = torch.stack(box_terms).mean()
    total = w_cls * loss_cls + w_box * loss_box
    parts = {"kd_cls": float(loss_cls.detach()), "kd_box": float(loss_box.detach())}
    if student_feats is not None and teacher_feats is not None:
        mapped = adapters(student_feats) if adapters is not None else list(student_feats)
        loss_feat = torch.stack([(a - b.detach()).pow(2).mean() for a, b in zip(mapped, teacher_feats)]).mean()
        total = total + w_feat * loss_feat
        parts["kd_feat"] = float(loss_feat.detach())
    return total, parts


# -- grafting -------------------------------------------------------------------------------------------------

def weight_entropy(weight: torch.Tensor, bins: int = 10) -> float:
    """Shannon entropy (nats) of the histogram of a tensor's values over its own [min, max] range."""
    w = weight.detach().double().flatten()
    lo, hi = float(w.min()), float(w.max())
    if hi <= lo:
        return 0.0
    counts = torch.histc(w, bins=bins, min=lo, max=hi)
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def graft_alpha(h1: float, h2: float, A: float = 0.4, c: float = 500.0, clip: bool = True) -> float:
    """``A * arctan(c * (h1 - h2)) + 0.5`` (optionally clipped to [0, 1])."""
    a = A * math.atan(c * (h1 - h2)) + 0.5
    return min(max(a, 0.0), 1.0) if clip else a


def graft_units(model: nn.Module) -> List[Tuple[str, List[str]]]:
    """Per convolution: (conv name, [the conv's and its joint partners' tensor names]): the BN right after it in
    a Sequential (affine and running statistics) and the scale of the ResConv whose conv it is."""
    from compress.layer_pruning import ResConv

    units = []
    modules = dict(model.named_modules())
    for name, mod in modules.items():
        if not isinstance(mod, nn.Conv2d):
            continue
        tensors = [f"{name}.weight"] + ([f"{name}.bias"] if mod.bias is not None else [])
        parent_name, _, idx = name.rpartition(".")
        parent = modules.get(parent_name)
        if isinstance(parent, nn.Sequential) and idx.isdigit() and int(idx) + 1 < len(parent) and isinstance(
                parent[int(idx) + 1], nn.BatchNorm2d):
            bn = f"{parent_name}.{int(idx) + 1}"
            tensors += [f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var"]
        if isinstance(parent, ResConv) and idx == "0":
            tensors.append(f"{parent_name}.scale")
        units.append((name, tensors))
    return units


@torch.no_grad()
def graft(model1: nn.Module, model2: nn.Module, A: float = 0.4, c: float = 500.0, bins: int = 10,
          adaptive: bool = False, g_min: float = 0.25, clip: bool = True) -> Dict[str, float]:
    """Graft ``model2`` into ``model1`` in place, unit by unit (joint conv + BN); returns the alpha of each conv."""
    s1, s2 = model1.state_dict(), model2.state_dict()
    units = graft_units(model1)
    h1 = {n: weight_entropy(s1[f"{n}.weight"], bins) for n, _ in units}
    h2 = {n: weight_entropy(s2[f"{n}.weight"], bins) for n, _ in units}
    strength = {n: 1.0 for n, _ in units}
    if adaptive and units:
        v = np.array([h1[n] for n, _ in units])
        span = v.max() - v.min()
        norm = (v - v.min()) / span if span > 0 else np.zeros_like(v)
        strength = {n: float(np.clip(1.0 - x, g_min, 1.0)) for (n, _), x in zip(units, norm)}
    alphas = {}
    for name, tensors in units:
        a = graft_alpha(h1[name], h2[name], A, c, clip)
        a = 1.0 - strength[name] * (1.0 - a)
        alphas[name] = a
        for t in tensors:
            if s1[t].shape != s2[t].shape:
                raise ValueError(f"graft: tensor {t} has shape {tuple(s1[t].shape)} in the first network and "
                                 f"{tuple(s2[t].shape)} in the second; graft copies of one pruned network")
            s1[t].mul_(a).add_(s2[t], alpha=1.0 - a)
    return alphas


# -- adversarial (M3) -----------------------------------------------------------------------------------------

class OutputDiscriminator(nn.Module):
    """Per grid point: real (baseline) or fake (pruned) head output? Input: class probabilities + log-distances."""

    def __init__(self, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Conv2d(num_classes + 4, hidden, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.2), nn.Conv2d(hidden, 1, 1))

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        return self.net(torch.cat([torch.sigmoid(out[:, :c]), out[:, c:].clamp(-4, 8)], 1))


def pareto_front(candidates: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Candidates not dominated in (fewer ``channels``, higher ``accuracy``)."""
    front = []
    for a in candidates:
        dominated = any((b["channels"] <= a["channels"] and b["accuracy"] >= a["accuracy"])
                        and (b["channels"] < a["channels"] or b["accuracy"] > a["accuracy"]) for b in candidates)
        if not dominated:
            front.append(a)
    return sorted(front, key=lambda r: r["channels"])


def select_candidate(candidates: Sequence[Dict[str, Any]], max_channels: Optional[int] = None,
                     max_flops: Optional[float] = None, tolerance: float = 0.0) -> Dict[str, Any]:
    """Multi-indicator choice: among the candidates within the budget, the Pareto front of (channels, accuracy);
    from it the candidate with the fewest channels whose accuracy is within ``tolerance`` of the best."""
    ok = [c for c in candidates if (max_channels is None or c["channels"] <= max_channels)
          and (max_flops is None or c.get("flops", 0) <= max_flops)]
    if not ok:
        raise ValueError(f"no candidate architecture meets the budget (channels <= {max_channels}, "
                         f"flops <= {max_flops}); candidates: {[(c['channels'], c.get('flops')) for c in candidates]}")
    front = pareto_front(ok)
    best = max(c["accuracy"] for c in front)
    return min((c for c in front if c["accuracy"] >= best - tolerance), key=lambda c: c["channels"])


def compose_layer_plans(first: Dict[str, Dict], second: Dict[str, Dict]) -> Dict[str, Dict]:
    """Per-layer plan of pruning with ``first`` and then with ``second`` (whose indices refer to ``first``'s result)."""
    out = {k: dict(v) for k, v in first.items()}
    for name, spec in second.items():
        base = first.get(name)
        if base is None:
            out[name] = dict(spec)
            continue
        merged = dict(base)
        for key in ("keep_in", "keep_out"):
            prev = base[key] if base[key] is not None else list(range(base["in" if key == "keep_in" else "out"]))
            merged[key] = None if spec[key] is None else [prev[i] for i in spec[key]]
            if merged[key] is None and base[key] is not None:
                merged[key] = list(base[key])
        out[name] = merged
    return out


def _prunable_bns(model: nn.Module, input_size: int):
    from compress.depgraph import build_dependency_graph
    from compress.layer_pruning import scalar_scales

    with scalar_scales(model):
        dg = build_dependency_graph(model.eval(), input_size)
    modules = dict(model.named_modules())
    bns = []
    for name, info in dg.layers.items():
        if info.kind == "bn" and info.in_segments and len(info.in_segments) == 1:
            if dg.groups[dg.space_group[info.in_segments[0][0]]].prunable:
                bns.append(modules[name])
    return dg, bns


def candidate_architectures(model: Detector, thresholds: Sequence[float], round_to: int = 8,
                            min_channels: int = 8) -> List[Dict[str, Any]]:
    """One physically pruned copy per threshold on the |BN scale| of each prunable group (channel scores summed
    over the group's BNs); rows carry the model, its layer plan, channels kept and FLOPs."""
    from compress.criteria import bn_gamma, round_channels, select_channels
    from compress.flops import count_flops_params
    from compress.layer_pruning import scalar_scales
    from compress.pruning import prune_groups

    size = model.config.input_size
    dg, _ = _prunable_bns(model, size)
    modules = dict(model.named_modules())
    scores = bn_gamma(dg, modules)
    rows = []
    for t in thresholds:
        counts = {}
        for g in dg.prunable_groups():
            s = scores[g.gid]
            n_bn = max(sum(1 for name, info in dg.layers.items() if info.kind == "bn" and info.in_segments
                           and len(info.in_segments) == 1 and dg.space_group[info.in_segments[0][0]] == g.gid), 1)
            counts[g.gid] = round_channels(float((s / n_bn > t).sum()), g.size, round_to, min_channels)
        keep = select_channels(scores, counts)
        cand = copy.deepcopy(model).eval()
        with scalar_scales(cand):
            layers = prune_groups(cand, dg, keep) if keep else {}
        cost = count_flops_params(cand, (1, 3, size, size))
        rows.append({"threshold": float(t), "model": cand, "layers": layers,
                     "channels": int(sum(counts.values())), "flops": cost.flops, "params": cost.params})
    return rows


# -- the loop -------------------------------------------------------------------------------------------------

def finetune(
    model: Detector,
    train_set,
    cfg: Dict[str, Any],
    method: str = "plain",
    *,
    teacher: Optional[Detector] = None,
    steps: Optional[int] = None,
    seconds: Optional[float] = None,
    options: Optional[Dict[str, Any]] = None,
    accuracy_fn: Optional[Callable[[Detector], float]] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Retrain ``model`` in place (graft: the first network; adversarial: possibly replaced by a smaller candidate,
    returned as ``result["model"]``). ``cfg`` is the ``train`` configuration; ``options`` the method's settings."""
    if method not in METHODS:
        raise ValueError(f"unknown retraining method {method!r}; choose from {METHODS}")
    if method in ("distill", "adversarial") and teacher is None:
        raise ValueError(f"--finetune {method} needs the baseline model as teacher")
    opt_cfg = dict(options or {})
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    size = model.config.input_size
    num_classes = model.config.num_classes
    from compress.train import loss_from_config

    loss_fn = loss_from_config(model, cfg)
    base_lr, min_ratio = float(cfg.get("lr", 2e-3)), float(cfg.get("min_lr_ratio", 0.05))
    budget = _Budget(steps, seconds)
    stream = batch_stream(train_set, size, cfg, seed)
    _prepare(model, cfg)
    history: List[Dict[str, float]] = []
    info: Dict[str, Any] = {"method": method}
    step = 0

    if teacher is not None:
        teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    extra_params: List[nn.Parameter] = []
    adapters = None
    if method in ("distill", "adversarial") and opt_cfg.get("features", True):
        with torch.no_grad():
            probe = torch.zeros(1, 3, size, size)
            s_ch = [f.shape[1] for f in forward_with_features(model.eval(), probe)[1]]
            t_ch = [f.shape[1] for f in forward_with_features(teacher, probe)[1]]
        _prepare(model, cfg)
        adapters = FeatureAdapters(s_ch, t_ch)
        extra_params = list(adapters.parameters())
    opt = _optimizer(model, cfg, extra_params)
    params = [p for g in opt.param_groups for p in g["params"]]

    model2 = opt2 = stream2 = None
    if method == "graft":
        model2 = copy.deepcopy(model)
        _prepare(model2, cfg)
        opt2 = _optimizer(model2, cfg)
        stream2 = batch_stream(train_set, size, cfg, seed + 1)
        info["alphas"] = []
    disc = opt_d = l1 = None
    if method == "adversarial":
        from compress.sparsity import AdaptiveBNL1

        disc = OutputDiscriminator(num_classes, int(opt_cfg.get("disc_hidden", 32)))
        opt_d = torch.optim.Adam(disc.parameters(), lr=float(opt_cfg.get("disc_lr", 1e-3)), betas=(0.5, 0.999))
        dg, _ = _prunable_bns(model, size)  # leaves the model in eval mode
        _prepare(model, cfg)
        l1 = AdaptiveBNL1(model, dg, lambda0=float(opt_cfg.get("l1", 1e-4)))

    w_kd = float(opt_cfg.get("distill_weight", 1.0))
    while not budget.done(step):
        frac = budget.fraction(step)
        lr = _cosine(base_lr, frac, min_ratio)
        for o in (opt, opt2):
            if o is not None:
                for g in o.param_groups:
                    g["lr"] = lr * g.get("lr_mult", 1.0) * (float(opt_cfg.get("lr2_ratio", 1.0)) if o is opt2 else 1.0)
        images, targets = next(stream)
        rec: Dict[str, float] = {}
        if method in ("plain", "graft"):
            outs = model.raw_outputs(images)
            loss, parts = loss_fn(model, outs, targets)
        else:
            outs, feats = forward_with_features(model, images)
            with torch.no_grad():
                t_outs, t_feats = forward_with_features(teacher, images)
            det, parts = loss_fn(model, outs, targets)
            kd, kd_parts = distill_loss(outs, t_outs, num_classes, feats if adapters else None,
                                        t_feats if adapters else None, adapters)
            loss = det + w_kd * kd
            rec.update(kd_parts)
            if method == "adversarial":
                # Discriminator step on detached outputs, then the student tries to fool it.
                d_real = torch.cat([disc(t).flatten() for t in t_outs])
                d_fake = torch.cat([disc(o.detach()).flatten() for o in outs])
                loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                          + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
                _step(opt_d, loss_d, list(disc.parameters()), "adversarial discriminator")
                g_fake = torch.cat([disc(o).flatten() for o in outs])
                adv = F.binary_cross_entropy_with_logits(g_fake, torch.ones_like(g_fake))
                loss = loss + float(opt_cfg.get("adv_weight", 0.1)) * adv + l1(model)
                rec.update(disc=float(loss_d.detach()), adv=float(adv.detach()))
        _step(opt, loss, params, f"{method} fine-tuning step {step}")
        rec.update(loss=float(loss.detach()), cls=parts["cls"], box=parts["box"], lr=lr)
        if method == "graft":
            images2, targets2 = next(stream2)
            outs2 = model2.raw_outputs(images2)
            loss2, _ = loss_fn(model2, outs2, targets2)
            _step(opt2, loss2, list(model2.parameters()), f"graft second network step {step}")
            if (step + 1) % int(opt_cfg.get("graft_every", 20)) == 0:
                alphas = graft(model, model2, float(opt_cfg.get("A", 0.4)), float(opt_cfg.get("c", 500.0)),
                               int(opt_cfg.get("bins", 10)), bool(opt_cfg.get("adaptive", True)))
                info["alphas"].append(float(np.mean(list(alphas.values()))))
        history.append(rec)
        step += 1
    _finish(model)
    info.update(steps=step, seconds=time.perf_counter() - budget.t0,
                final_loss=float(np.mean([h["loss"] for h in history[-10:]])) if history else None)
    log(f"{method} retraining: {step} steps in {info['seconds']:.1f} s")
    result: Dict[str, Any] = {"model": model, "info": info, "history": history}
    if method == "adversarial":
        result.update(_select_architecture(model, opt_cfg, accuracy_fn, log))
    return result


def _select_architecture(model: Detector, opt_cfg: Dict[str, Any],
                         accuracy_fn: Optional[Callable[[Detector], float]],
                         log: Callable[[str], None]) -> Dict[str, Any]:
    _, bns = _prunable_bns(model, model.config.input_size)
    gammas = torch.cat([bn.weight.detach().abs().flatten() for bn in bns]) if bns else torch.zeros(1)
    quantiles = opt_cfg.get("candidate_quantiles", (0.0, 0.1, 0.2, 0.3))
    thresholds = sorted({float(torch.quantile(gammas, q)) if q > 0 else 0.0 for q in quantiles})
    cands = candidate_architectures(model, thresholds, int(opt_cfg.get("round_to", 8)),
                                    int(opt_cfg.get("min_channels", 8)))
    if accuracy_fn is None:
        raise ValueError("adversarial selection needs accuracy_fn (AP50 on held-out images or -alignment loss)")
    for c in cands:
        c["accuracy"] = float(accuracy_fn(c["model"]))
    chosen = select_candidate(cands, max_flops=opt_cfg.get("max_flops"), tolerance=float(opt_cfg.get("tolerance",
                                                                                                      0.005)))
    table = [{k: v for k, v in c.items() if k not in ("model", "layers")} for c in cands]
    log("adversarial selection: " + ", ".join(f"t={c['threshold']:.3g} ch={c['channels']} acc={c['accuracy']:.4f}"
                                              for c in table) + f" -> t={chosen['threshold']:.3g}")
    return {"model": chosen["model"], "candidates": table, "chosen": {k: v for k, v in chosen.items()
                                                                      if k not in ("model", "layers")},
            "extra_layers": chosen["layers"]}
