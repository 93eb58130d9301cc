"""Channel pruning of the detector end to end: scores -> keep ratios -> physical pruning -> compensation ->
fine-tuning, with the plan, the pruned checkpoint and a metrics JSON written atomically.

Layer pruning (M5, ``--method layer``) and depth + width under one target (``--method layer+richness``) go through
:func:`layer_prune_detector`; the retraining methods (``finetune``: plain, graft, distill, adversarial) through
:mod:`compress.retrain`.

Used by ``jetson-compress prune``, ``benchmarks/prune_compare.py``, ``benchmarks/layer_vs_channel.py`` and the
``build`` pipeline.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from compress.augment import letterbox, to_tensor_layout
from compress.checkpoint import atomic_write_bytes, save_checkpoint
from compress.compensation import compensate
from compress.criteria import (LATENCY_MODELS, activation_entropy, allocate, bn_gamma, channel_activations, filter_l1,
                               group_l1, layer_richness, reconstruction, select_channels)
from compress.depgraph import DependencyGraph, build_dependency_graph
from compress.detector import Detector
from compress.flops import count_flops_params
from compress.pruning import make_plan, prune_groups, save_plan
from compress.voc import VOCDataset, load_image

METHODS = ("richness", "entropy", "l1", "bn")
# Which channels a group keeps, once its count is set: filter L1 of the producers (default), per-channel activation
# entropy, the group-aggregated magnitude over every layer touching the channels (compress.criteria.group_l1), or
# the channels from which least squares best rebuilds the next layers' outputs (compress.criteria.reconstruction).
CHANNEL_CRITERIA = ("l1", "entropy", "group-l1", "reconstruction")
LAYER_METHODS = ("layer", "layer+richness")


def calibration_batch(dataset: VOCDataset, size: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` letterboxed training images (no augmentation), evenly spread over the split."""
    idx = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int)
    arrs = []
    for i in idx:
        ann = dataset[int(i)]
        img, _ = letterbox(load_image(ann.image_path, (ann.width, ann.height)), size)
        arrs.append(to_tensor_layout(img))
    return torch.from_numpy(np.stack(arrs))


FINE_STREAMS = "fine-streams"


def expand_keep_whole(model: Detector, names: Sequence[str]) -> List[str]:
    """``names`` with the alias ``fine-streams`` replaced by the backbone's residual streams at strides 4 and 8
    (:meth:`MobileNetV2Features.residual_streams`: ``backbone.features.2.conv.2`` and ``backbone.features.4.conv.2``);
    order kept, duplicates dropped."""
    out: List[str] = []
    for n in names:
        for m in (["backbone." + s for s in model.backbone.residual_streams(8)] if n == FINE_STREAMS else [n]):
            if m not in out:
                out.append(m)
    return out


def groups_of(dg: DependencyGraph, names: Sequence[str]) -> List[int]:
    """The prunable channel groups that the convolutions ``names`` open (as producers); an unknown or unprunable
    name is an error that lists what can be named."""
    by_producer = {p: g.gid for g in dg.prunable_groups() for p in g.producers}
    bad = [n for n in names if n not in by_producer]
    if bad:
        raise ValueError(f"not the producer of a prunable channel group: {bad}; prunable producers: "
                         f"{sorted(by_producer)}")
    return sorted({by_producer[n] for n in names})


def resolve_keep_whole(model: Detector, names: Sequence[str]) -> List[str]:
    """``names`` expanded (:func:`expand_keep_whole`) and checked against ``model``'s pruning graph before any work
    is spent; ValueError (listing the names that can be used) if one opens no prunable channel group."""
    names = expand_keep_whole(model, names)
    if names:
        groups_of(build_dependency_graph(model.eval(), model.config.input_size), names)
    return names


def plan_pruning(
    model: Detector,
    method: str,
    target_reduction: float,
    calibration: Optional[torch.Tensor] = None,
    target_kind: str = "flops",
    round_to: int = 8,
    min_channels: int = 8,
    alpha: float = 0.5,
    channel_criterion: str = "l1",
    latency_model: Optional[str] = None,
    latency_tilt: float = 0.0,
    keep_whole: Sequence[str] = (),
    capacity_tilt: float = 0.0,
) -> Dict[str, Any]:
    """Decide what to keep. Returns dg, keep (group -> indices), allocation info and per-group diagnostics.
    ``latency_model`` (a key of :data:`compress.criteria.LATENCY_MODELS`) serves a ``"latency"`` target and the
    latency-aware ``latency_tilt`` of the richness allocation. ``keep_whole``: module names (convolutions) whose
    channel groups keep every channel, or ``fine-streams`` (:func:`expand_keep_whole`); the target is met by cutting
    the others. ``capacity_tilt``: :func:`compress.criteria.allocate`'s, keeping the low-resolution layers (and
    their parameters) wider at the same FLOPs. ``channel_criterion``: which channels a group keeps once its count is
    set (:data:`CHANNEL_CRITERIA`)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {METHODS}")
    if channel_criterion not in CHANNEL_CRITERIA:
        raise ValueError(f"unknown channel criterion {channel_criterion!r}; choose from {CHANNEL_CRITERIA}")
    size = model.config.input_size
    model.eval()
    dg = build_dependency_graph(model, size)
    modules = dict(model.named_modules())
    richness = None
    entropy_scores = None
    if method in ("richness", "entropy") or channel_criterion == "entropy":
        if calibration is None:
            raise ValueError(f"method {method} needs calibration images")
        acts = channel_activations(model, dg, [calibration[i:i + 16] for i in range(0, len(calibration), 16)])
        entropy_scores = activation_entropy(acts, dg)
        richness = layer_richness(dg, modules, entropy_scores, alpha=1.0 if method == "entropy" else alpha)
    bn_scores = bn_gamma(dg, modules)
    alloc_method = {"l1": "uniform", "bn": "bn", "richness": "richness", "entropy": "entropy"}[method]
    if latency_model is not None and latency_model not in LATENCY_MODELS:
        raise ValueError(f"unknown latency model {latency_model!r}; choose from {sorted(LATENCY_MODELS)}")
    whole = groups_of(dg, expand_keep_whole(model, keep_whole))
    counts, info = allocate(dg, modules, alloc_method, target_reduction, target_kind, round_to, min_channels,
                            richness=richness, bn_scores=bn_scores, latency_tilt=latency_tilt, keep_whole=whole,
                            capacity_tilt=capacity_tilt,
                            latency_model=LATENCY_MODELS[latency_model] if latency_model else None)
    if method == "bn":
        scores = bn_scores
    elif channel_criterion == "entropy":
        scores = entropy_scores
    elif channel_criterion == "group-l1":
        scores = group_l1(dg, modules)
    elif channel_criterion == "reconstruction":
        if calibration is None:
            raise ValueError("channel criterion reconstruction needs calibration images")
        scores = reconstruction(model, dg, counts, calibration)
    else:
        scores = filter_l1(dg, modules)
    keep = select_channels(scores, counts)
    return {"dg": dg, "keep": keep, "counts": counts, "allocation": info, "richness": richness}


def prune_detector(
    model: Detector,
    decision: Dict[str, Any],
    method: str,
    target: Dict[str, Any],
    round_to: int,
    compensate_with: Optional[torch.Tensor] = None,
) -> Dict[str, Any]:
    """Physically prune a copy of ``model``; optionally compensate. Returns the pruned model and its plan."""
    dg, keep = decision["dg"], decision["keep"]
    pruned = copy.deepcopy(model).eval()
    layers = prune_groups(pruned, dg, keep)
    comp_report = None
    if compensate_with is not None:
        comp_report = compensate(model, pruned, layers, compensate_with)
    size = model.config.input_size
    base = count_flops_params(model, (1, 3, size, size))
    after = count_flops_params(pruned, (1, 3, size, size))
    achieved = {"macs": after.macs, "flops": after.flops, "params": after.params, "baseline_macs": base.macs,
                "baseline_flops": base.flops, "baseline_params": base.params,
                "flops_reduction": 1 - after.macs / base.macs, "params_reduction": 1 - after.params / base.params}
    meta = {"architecture": model.config.architecture, "input_size": size, "model_config": model.config.to_dict()}
    groups_diag = None
    if decision.get("richness"):
        groups_diag = {str(k): v for k, v in decision["richness"].items()}
    plan = make_plan(meta, layers, dg, keep, method, target, round_to, achieved,
                     extra={"richness": groups_diag} if groups_diag else None)
    return {"model": pruned, "plan": plan, "compensation": comp_report}


def layer_prune_detector(
    model: Detector,
    method: str,
    target_reduction: float,
    calibration: torch.Tensor,
    *,
    train_set: Optional[VOCDataset] = None,
    out_dir: Optional[Path] = None,
    sparsity_epochs: int = 0,
    layer_lambda: float = 1e-3,
    layer_share: float = 0.5,
    layer_threshold: Optional[float] = None,
    layer_score: str = "effective",
    round_to: int = 8,
    min_channels: int = 8,
    alpha: float = 0.5,
    train_cfg: Optional[Dict[str, Any]] = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """M5 on a copy of ``model``: convert eligible layers to ResConvs (function-preserving), optional L1 sparsity
    training of the layer scales, removal of the lowest-scored layers (or those under ``layer_threshold``) until
    the FLOPs target (``layer`` method) or ``layer_share`` of it (``layer+richness``, which then prunes channels of
    the layer-pruned model with the richness path to reach the whole target). Returns model, plan, layer table.

    ``layer_score``: ``scale`` ranks by |s| (the method as published; meaningful after sparsity training);
    ``effective`` by |s| x ||branch(x)|| / ||x|| on the calibration images, i.e. how far the layer is from the
    identity, which also ranks a converted pretrained model that had no sparsity training.
    """
    from compress.layer_pruning import (LayerScaleL1, convert_to_resconv, find_eligible, layer_table,
                                        preserve_function, remove_layers, scalar_scales, scaled_layers)

    if method not in LAYER_METHODS:
        raise ValueError(f"unknown layer-pruning method {method!r}; choose from {LAYER_METHODS}")
    if layer_score not in ("scale", "effective"):
        raise ValueError(f"layer_score must be 'scale' or 'effective', got {layer_score!r}")
    size = model.config.input_size
    base = count_flops_params(model, (1, 3, size, size))
    work = copy.deepcopy(model).eval()
    names = find_eligible(work, calibration[:1])
    convert_to_resconv(work, names)
    preserve_function(work, calibration)
    info: Dict[str, Any] = {"eligible": len(names)}
    if sparsity_epochs > 0:
        if train_set is None:
            raise ValueError("layer-scale sparsity training needs the training set")
        from compress.train import train

        penalty = LayerScaleL1(work, size, lam=layer_lambda)
        cfg = dict(train_cfg or {})
        cfg.update(epochs=sparsity_epochs, warmup_epochs=0)
        t = time.perf_counter()
        train(work, train_set, Path(out_dir or ".") / "layer_sparsity", cfg, resume=False, progress=progress,
              extra_loss=penalty, log=log)
        info["sparsity_seconds"] = time.perf_counter() - t
    table = layer_table(work, size, calibration[:16] if layer_score == "effective" else None)
    share = 1.0 if method == "layer" else layer_share
    if layer_threshold is not None:
        removed = remove_layers(work, [r["name"] for r in table if r["score"] < layer_threshold])
    else:
        from compress.layer_pruning import select_layers

        removed = remove_layers(work, select_layers(table, macs_to_save=share * target_reduction * base.macs))
    resconv = sorted(scaled_layers(work))
    after_layers = count_flops_params(work, (1, 3, size, size))
    log(f"layer pruning: removed {len(removed)} of {len(names)} eligible layers, MACs "
        f"{base.macs / 1e6:.1f} M -> {after_layers.macs / 1e6:.1f} M")
    layers: Dict[str, Dict] = {}
    keep: Dict[int, List[int]] = {}
    with scalar_scales(work):
        dg = build_dependency_graph(work.eval(), size)
        channel_reduction = 1.0 - (1.0 - target_reduction) * base.macs / max(after_layers.macs, 1)
        if method == "layer+richness" and channel_reduction > 0.005:
            decision = plan_pruning(work, "richness", channel_reduction, calibration, "flops", round_to,
                                    min_channels, alpha)
            dg, keep = decision["dg"], decision["keep"]
            layers = prune_groups(work, dg, keep)
            info["channel_reduction_of_layer_pruned"] = channel_reduction
    after = count_flops_params(work, (1, 3, size, size))
    achieved = {"macs": after.macs, "flops": after.flops, "params": after.params, "baseline_macs": base.macs,
                "baseline_flops": base.flops, "baseline_params": base.params,
                "flops_reduction": 1 - after.macs / base.macs, "params_reduction": 1 - after.params / base.params,
                "layer_flops_reduction": 1 - after_layers.macs / base.macs}
    meta = {"architecture": model.config.architecture, "input_size": size, "model_config": model.config.to_dict()}
    target = {"kind": "flops", "reduction": target_reduction}
    plan = make_plan(meta, layers, dg, keep, method, target, round_to, achieved, removed_layers=removed,
                     extra={"resconv_layers": resconv, "layer_table": table,
                            "layer_settings": {"score": layer_score, "share": share, "threshold": layer_threshold,
                                               "sparsity_epochs": sparsity_epochs, "lambda": layer_lambda}})
    return {"model": work.eval(), "plan": plan, "table": table, "info": info}


def alignment_accuracy(teacher: Detector, images: torch.Tensor) -> Callable[[Detector], float]:
    """Accuracy proxy for architecture selection: minus the distillation loss to the baseline on held-out images."""
    from compress.retrain import distill_loss

    with torch.no_grad():
        t_outs = teacher.eval().raw_outputs(images)

    def score(candidate: Detector) -> float:
        with torch.no_grad():
            loss, _ = distill_loss(candidate.eval().raw_outputs(images), t_outs, teacher.config.num_classes)
        return -float(loss)

    return score


def run_prune(
    model: Detector,
    ckpt_meta: Dict[str, Any],
    train_set: VOCDataset,
    test_set: Optional[VOCDataset],
    out_dir: Path,
    *,
    method: str = "richness",
    target_reduction: float = 0.5,
    target_kind: str = "flops",
    round_to: int = 8,
    min_channels: int = 8,
    alpha: float = 0.5,
    compensate_flag: bool = False,
    finetune_epochs: int = 0,
    train_cfg: Optional[Dict[str, Any]] = None,
    eval_cfg: Optional[Dict[str, Any]] = None,
    resolved_config: Optional[Dict[str, Any]] = None,
    calibration_images: int = 64,
    sparsity_epochs: int = 0,
    sparsity_lambda: float = 1e-4,
    baseline_ap: Optional[Dict[str, float]] = None,
    latency_model: Optional[str] = None,
    latency_tilt: float = 0.0,
    keep_whole: Sequence[str] = (),
    channel_criterion: str = "l1",
    progress: bool = True,
    log: Callable[[str], None] = print,
    finetune: str = "plain",
    finetune_seconds: Optional[float] = None,
    retrain_options: Optional[Dict[str, Any]] = None,
    layer_options: Optional[Dict[str, Any]] = None,
    kernel_sparsity: float = 0.0,
) -> Dict[str, Any]:
    """The whole ``prune`` command; writes ``pruned.pt``, ``plan.json`` and ``metrics.json`` into ``out_dir``.

    ``kernel_sparsity`` > 0 (channel methods, plain fine-tune): after the channel cut, M4's fine granularity zeroes
    that fraction of the k x k kernels of every dimension-matched convolution and keeps them zero through the
    fine-tune; the metrics report its paper FLOPs/params next to the dense ones (what actually runs).

    ``finetune`` picks the retraining method (``compress.retrain``); ``plain`` with epochs and no seconds budget is
    the original EMA training loop. ``layer_options`` go to :func:`layer_prune_detector` (layer methods only).
    """
    from compress.retrain import METHODS as RETRAIN_METHODS

    if method not in METHODS + LAYER_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {METHODS + LAYER_METHODS}")
    if finetune not in RETRAIN_METHODS:
        raise ValueError(f"unknown retraining method {finetune!r}; choose from {RETRAIN_METHODS}")
    if not 0.0 <= kernel_sparsity < 1.0:
        raise ValueError(f"kernel sparsity {kernel_sparsity}: must be a fraction of kernels in [0, 1)")
    if kernel_sparsity and (method in LAYER_METHODS or finetune != "plain"):
        raise ValueError("kernel sparsity applies to the channel methods with the plain fine-tune")
    if latency_model is None and (target_kind == "latency" or latency_tilt):
        latency_model = "ort-cpu"
    if method in LAYER_METHODS and (target_kind != "flops" or compensate_flag):
        raise ValueError(f"--method {method} supports a FLOPs target only and no --compensate")
    if keep_whole:
        if method in LAYER_METHODS:
            raise ValueError(f"--method {method} takes no --keep-whole (channel methods only)")
        keep_whole = resolve_keep_whole(model, keep_whole)  # names checked before any work
    from compress.inference import evaluate_model, summary_ap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = model.config.input_size
    timings: Dict[str, float] = {}
    metrics: Dict[str, Any] = {"method": method, "target": {"kind": target_kind, "reduction": target_reduction},
                               "compensate": compensate_flag, "finetune_epochs": finetune_epochs,
                               "finetune": finetune, "finetune_seconds": finetune_seconds}
    teacher = model

    t = time.perf_counter()
    calib = calibration_batch(train_set, size, calibration_images)
    timings["calibration_images"] = time.perf_counter() - t

    if test_set is not None and baseline_ap is None:
        t = time.perf_counter()
        baseline_ap = summary_ap(evaluate_model(model, test_set, size, eval_cfg))
        timings["eval_baseline"] = time.perf_counter() - t
    metrics["ap50_baseline"] = baseline_ap

    if sparsity_epochs > 0 and method not in LAYER_METHODS:
        # M4: adaptive-L1 sparsity training on BN scaling factors before deciding what to cut.
        from compress.depgraph import build_dependency_graph as _bdg
        from compress.sparsity import AdaptiveBNL1
        from compress.train import train

        t = time.perf_counter()
        model = copy.deepcopy(model)
        penalty = AdaptiveBNL1(model, _bdg(model.eval(), size), lambda0=sparsity_lambda)
        l1_before = penalty.gamma_l1()
        cfg = dict(train_cfg or {})
        cfg.update(epochs=sparsity_epochs, warmup_epochs=0)
        train(model, train_set, out_dir / "sparsity", cfg, resume=False, progress=progress, extra_loss=penalty,
              log=log)
        metrics["bn_sparsity_after"] = penalty.sparsity()
        metrics["bn_gamma_l1"] = {"before": l1_before, "after": penalty.gamma_l1()}
        timings["sparsity_training"] = time.perf_counter() - t

    if method in LAYER_METHODS:
        t = time.perf_counter()
        result = layer_prune_detector(model, method, target_reduction, calib, train_set=train_set, out_dir=out_dir,
                                      sparsity_epochs=sparsity_epochs, round_to=round_to, min_channels=min_channels,
                                      alpha=alpha, train_cfg=train_cfg, progress=progress, log=log,
                                      **(layer_options or {}))
        timings["analyse"] = 0.0
        timings["prune"] = time.perf_counter() - t
        metrics["layers_removed"] = len(result["plan"]["removed_layers"])
    else:
        t = time.perf_counter()
        decision = plan_pruning(model, method, target_reduction, calib, target_kind, round_to, min_channels, alpha,
                                latency_model=latency_model, latency_tilt=latency_tilt, keep_whole=keep_whole,
                                channel_criterion=channel_criterion)
        timings["analyse"] = time.perf_counter() - t
        t = time.perf_counter()
        target = {"kind": target_kind, "reduction": target_reduction}
        if target_kind == "latency" or latency_tilt:
            target.update(latency_model=latency_model, latency_tilt=latency_tilt)
        if keep_whole:
            target["keep_whole"] = list(keep_whole)
        target["channel_criterion"] = channel_criterion
        if "modelled_latency_reduction" in decision["allocation"]:
            metrics["modelled_latency_reduction"] = decision["allocation"]["modelled_latency_reduction"]
        result = prune_detector(model, decision, method, target, round_to,
                                compensate_with=calib[:32] if compensate_flag else None)
        timings["prune" + ("+compensate" if compensate_flag else "")] = time.perf_counter() - t
    pruned, plan = result["model"], result["plan"]
    metrics.update({k: plan["achieved"][k] for k in ("flops", "params", "baseline_flops", "baseline_params",
                                                     "flops_reduction", "params_reduction")})
    log(f"pruned with {method}: FLOPs {plan['achieved']['baseline_flops'] / 1e9:.3f} G -> "
        f"{plan['achieved']['flops'] / 1e9:.3f} G (-{100 * plan['achieved']['flops_reduction']:.1f}%), params "
        f"{plan['achieved']['baseline_params'] / 1e6:.3f} M -> {plan['achieved']['params'] / 1e6:.3f} M")

    if test_set is not None:
        t = time.perf_counter()
        metrics["ap50_before_finetune"] = summary_ap(evaluate_model(pruned, test_set, size, eval_cfg))
        timings["eval_pruned"] = time.perf_counter() - t
    kernel_mask = None
    if kernel_sparsity > 0:
        from compress.sparsity import sparsify_dimension_matched

        t = time.perf_counter()
        kernel_mask, ks = sparsify_dimension_matched(pruned, kernel_sparsity, size)
        metrics["kernel_sparsity"] = ks
        timings["kernel_sparsity"] = time.perf_counter() - t
        log(f"kernel sparsity {kernel_sparsity:g} in {len(ks['layers'])} dimension-matched convs: "
            f"{ks['kernels_zeroed']} kernels zeroed; paper FLOPs {ks['paper_flops'] / 1e9:.3f} G, "
            f"dense (what runs) {ks['dense_flops'] / 1e9:.3f} G")
        if test_set is not None:
            metrics["ap50_channel_cut_only"] = metrics["ap50_before_finetune"]
            metrics["ap50_before_finetune"] = summary_ap(evaluate_model(pruned, test_set, size, eval_cfg))
    if finetune != "plain" or (finetune_seconds and finetune_epochs <= 0):
        if finetune_epochs <= 0 and not finetune_seconds:
            raise ValueError(f"--finetune {finetune} needs --finetune-epochs or --finetune-seconds")
        from compress.retrain import finetune as retrain

        cfg = dict(train_cfg or {})
        steps = finetune_epochs * max(len(train_set) // int(cfg.get("batch_size", 16)), 1) if finetune_epochs else None
        t = time.perf_counter()
        res = retrain(pruned, train_set, cfg, finetune, teacher=teacher, steps=steps, seconds=finetune_seconds,
                      options=retrain_options, accuracy_fn=alignment_accuracy(teacher, calib[-16:]), log=log)
        timings["finetune"] = time.perf_counter() - t
        metrics["retrain"] = res["info"]
        if finetune == "adversarial":
            pruned = res["model"]
            from compress.pruning import validate_plan
            from compress.retrain import compose_layer_plans

            plan["layers"] = compose_layer_plans(plan["layers"], res["extra_layers"])
            after = count_flops_params(pruned, (1, 3, size, size))
            plan["achieved"].update(macs=after.macs, flops=after.flops, params=after.params,
                                    flops_reduction=1 - after.macs / plan["achieved"]["baseline_macs"],
                                    params_reduction=1 - after.params / plan["achieved"]["baseline_params"])
            plan["adversarial_selection"] = {"candidates": res["candidates"], "chosen": res["chosen"]}
            validate_plan(plan)
            metrics.update({k: plan["achieved"][k] for k in ("flops", "params", "flops_reduction",
                                                             "params_reduction")})
        if test_set is not None:
            metrics["ap50_after_finetune"] = summary_ap(evaluate_model(pruned, test_set, size, eval_cfg))
    elif finetune_epochs > 0:
        from compress.train import train

        cfg = dict(train_cfg or {})
        cfg["epochs"] = finetune_epochs
        # The caller's warm-up where it gives one (the build and `prune` pass the configuration's
        # train.warmup_epochs, 1 by default); none where it gives none.
        cfg.setdefault("warmup_epochs", 0)
        t = time.perf_counter()
        summary = train(pruned, train_set, out_dir / "finetune", cfg, eval_set=test_set, eval_cfg=eval_cfg,
                        resolved_config=resolved_config, resume=False, progress=progress,
                        checkpoint_extra={"prune_plan": plan}, log=log, after_step=kernel_mask)
        timings["finetune"] = time.perf_counter() - t - (summary.get("eval", {}).get("timing", {}).get("seconds", 0))
        if "ap50" in summary:
            metrics["ap50_after_finetune"] = summary["ap50"]
    metrics["seconds"] = timings
    save_plan(plan, out_dir / "plan.json")
    save_checkpoint(out_dir / "pruned.pt", pruned, ckpt_meta.get("classes", ["person"]),
                    metrics={"ap50_voc07": metrics.get("ap50_after_finetune", metrics.get("ap50_before_finetune"))},
                    split_hashes=ckpt_meta.get("split_hashes"), config=resolved_config,
                    extra={"prune_plan": plan, "parent_checkpoint_sha256": ckpt_meta.get("_sha256")})
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=float).encode())
    return {"metrics": metrics, "plan": plan, "model": pruned}
