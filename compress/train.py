"""Training of the detector: augmentation pipeline, AdamW with warm-up and cosine decay, EMA of weights,
deterministic seeds, a progress bar with loss and ETA, per-epoch resumable state, and a final evaluation.

The same loop fine-tunes pruned models (``compress.pruning`` passes a smaller model and a shorter schedule).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from compress.augment import maybe, paste_instances, to_tensor_layout, train_sample
from compress.checkpoint import atomic_write_bytes, read_checkpoint, save_checkpoint
from compress.detector import Detector
from compress.loss import ASSIGNERS, DetectionLoss
from compress.voc import VOCDataset, load_image
from compress.voc_eval import source_of


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ImageCache:
    """Decoded training images kept in memory (the pedestrian set is ~1 GB decoded); decoding once per run."""

    def __init__(self, dataset: VOCDataset) -> None:
        self.dataset = dataset
        self._images: Dict[int, np.ndarray] = {}

    def get(self, i: int) -> np.ndarray:
        img = self._images.get(i)
        if img is None:
            ann = self.dataset[i]
            img = load_image(ann.image_path, (ann.width, ann.height))
            self._images[i] = img
        return img


class TrainSet(torch.utils.data.Dataset):
    def __init__(self, dataset: VOCDataset, input_size: int, cfg: Dict[str, Any], seed: int) -> None:
        self.dataset = dataset
        self.cache = ImageCache(dataset)
        self.size = input_size
        self.cfg = cfg
        self.seed = seed
        self.epoch = 0
        # Images with no box of the selected classes are kept as negatives.
        self.copy_paste_prob = float(cfg.get("copy_paste_prob", 0.0) or 0.0)
        self.copy_paste_max = int(cfg.get("copy_paste_max", 3))
        # false: images with no box of the selected classes (COCO's negatives) are never pasted into
        self.copy_paste_negatives = cfg.get("copy_paste_negatives", True)
        if not 0.0 <= self.copy_paste_prob <= 1.0 or self.copy_paste_max < 1 \
                or not isinstance(self.copy_paste_negatives, bool):
            from jetson_compress.config import ConfigError

            raise ConfigError(f"train.copy_paste_prob must be within [0, 1] (got {self.copy_paste_prob}), "
                              f"train.copy_paste_max at least 1 (got {self.copy_paste_max}) and "
                              f"train.copy_paste_negatives true or false (got {self.copy_paste_negatives!r})")
        self.donors = donor_index(dataset) if self.copy_paste_prob > 0 else []

    def pick_donors(self, rng: np.random.Generator) -> list:
        """Instances to paste into one sample: 1..copy_paste_max of them, each from a source drawn uniformly (so the
        few COCO and Penn-Fudan people are drawn as often as the many MOT15 ones), then an instance of it."""
        if not self.donors:
            return []
        picked = []
        for _ in range(int(rng.integers(1, self.copy_paste_max + 1))):
            group = self.donors[int(rng.integers(0, len(self.donors)))]
            i, k = group[int(rng.integers(0, len(group)))]
            ann = self.dataset[i]
            picked.append((self.cache.get(i), ann.boxes[k], ann.labels[k]))
        return picked

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, self.epoch, i))
        ann = self.dataset[i]
        extra = None
        mosaic_prob = float(self.cfg.get("mosaic_prob", 0.0))
        if mosaic_prob > 0:
            others = rng.integers(0, len(self.dataset), 3)
            extra = [(self.cache.get(int(j)), self.dataset[int(j)].boxes, self.dataset[int(j)].labels) for j in others]
        image, boxes, labels = self.cache.get(i), ann.boxes, ann.labels
        if maybe(rng, self.copy_paste_prob) and (self.copy_paste_negatives or len(boxes) > 0):
            image, boxes, labels = paste_instances(image, boxes, labels, self.pick_donors(rng), rng)
        img, boxes, labels = train_sample(
            image, boxes, labels, self.size, rng,
            scale_range=tuple(self.cfg.get("scale_range", (0.5, 1.5))),
            flip_prob=float(self.cfg.get("flip_prob", 0.5)),
            jitter=bool(self.cfg.get("jitter", True)),
            extra=extra, mosaic_prob=mosaic_prob,
        )
        return (torch.from_numpy(to_tensor_layout(img)),
                {"boxes": torch.from_numpy(boxes.astype(np.float32)), "labels": torch.from_numpy(labels.astype(np.int64))})


def donor_index(dataset: VOCDataset, min_height: float = 16.0, min_width: float = 4.0) -> List[List[Tuple[int, int]]]:
    """The instances copy-paste may take, grouped by source (the id prefix, as in the per-source evaluation):
    ``(image index, box index)`` of every box at least ``min_height`` x ``min_width`` pixels and not ``difficult``."""
    groups: Dict[str, List[Tuple[int, int]]] = {}
    for i, ann in enumerate(dataset.annotations):
        for k, (box, hard) in enumerate(zip(ann.boxes, ann.difficult)):
            if not hard and box[3] - box[1] >= min_height and box[2] - box[0] >= min_width:
                groups.setdefault(source_of(ann.image_id) or "", []).append((i, k))
    return [groups[key] for key in sorted(groups)]


class DeviceError(ValueError):
    """``train.device`` names a device that torch does not have."""


def resolve_device(name: Optional[str]) -> torch.device:
    """``train.device``: ``auto`` (default; CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    Asking for CUDA where torch sees none is an error, not a silent fall-back to the CPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"train.device {name!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"train.device is {name!r} but torch {torch.__version__} sees no CUDA device "
                          f"(--set train.device=cpu, or auto)")
    return dev


def epochs_within_budget(seconds_per_epoch: float, seconds_left: float, done: int, epochs: int) -> int:
    """Epochs in all when ``done`` are over and ``seconds_left`` remain at ``seconds_per_epoch``: at least ``done``,
    at most ``epochs``."""
    more = int(seconds_left // max(seconds_per_epoch, 1e-9)) if seconds_left > 0 else 0
    return max(done, min(epochs, done + more))


def collate(batch):
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


def source_balance_weights(ids: Sequence[str], power: float) -> np.ndarray:
    """Sampling weight of each image: ``n_source ** -power``, normalised to sum 1.

    The source of an image is its id prefix (:func:`compress.voc_eval.source_of`, the same key as the per-source
    evaluation; ids without a prefix form one group). ``power`` 0 samples uniformly over images, 1 gives every
    source the same share of an epoch, 0.5 is in between (square-root balancing).
    """
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"train.source_balance must be within [0, 1], got {power}")
    sources = [source_of(i) or "" for i in ids]
    counts: Dict[str, int] = {}
    for src in sources:
        counts[src] = counts.get(src, 0) + 1
    w = np.array([counts[src] ** -power for src in sources], dtype=np.float64)
    return w / w.sum()


class ModelEMA:
    """Exponential moving average of weights; decay ramps up as d * (1 - exp(-updates / tau))."""

    def __init__(self, model: nn.Module, decay: float = 0.9995, tau: float = 300.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def lr_at(step: int, total: int, warmup: int, base_lr: float, min_ratio: float) -> float:
    if step < warmup:
        return base_lr * (0.01 + 0.99 * step / max(warmup, 1))
    t = (step - warmup) / max(total - warmup, 1)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_mult: float = 1.0) -> List[Dict]:
    """AdamW groups of the trainable parameters: weights decay, biases and BN affine parameters do not.

    ``backbone_lr_mult`` != 1 (discriminative fine-tuning) splits each group in two, backbone and the rest; every
    group carries ``lr_mult``, the factor the schedule's learning rate is multiplied by. With the default 1 the two
    groups are the same as ever, so resuming an older run's optimiser state still matches.
    """
    mult = float(backbone_lr_mult)
    if not mult > 0:
        from jetson_compress.config import ConfigError

        raise ConfigError(f"train.backbone_lr_mult must be > 0 (got {backbone_lr_mult}); "
                          "freeze blocks with train.freeze_blocks instead")
    split = mult != 1.0
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (split and name.startswith("backbone."), p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    out = []
    for in_backbone in ((False, True) if split else (False,)):
        for no_decay in (False, True):
            params = groups.get((in_backbone, no_decay), [])
            if params or not split:
                out.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
                            "lr_mult": mult if in_backbone else 1.0})
    return out


def loss_from_config(model: Detector, cfg: Dict) -> DetectionLoss:
    """The detection loss of a ``train`` configuration; an unknown ``train.assigner`` is a configuration error."""
    from jetson_compress.config import ConfigError

    assigner = str(cfg.get("assigner", "fcos"))
    if assigner not in ASSIGNERS:
        raise ConfigError(f"train.assigner {assigner!r}: choose from {', '.join(ASSIGNERS)}")
    return DetectionLoss(model, box_weight=float(cfg.get("box_weight", 2.0)), assigner=assigner)


def freeze_early_blocks(model: Detector, n_blocks: int) -> List[nn.Module]:
    """Freeze the first ``n_blocks`` of the backbone (weights and BN statistics).

    The stride-2/4 layers hold most of the activation memory traffic of backward on a CPU; their ImageNet
    features transfer well, so freezing them roughly halves training time at little accuracy cost.
    """
    frozen = list(model.backbone.features[:n_blocks])
    for mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)
    return frozen


def set_train_mode(model: nn.Module, frozen: List[nn.Module]) -> None:
    model.train()
    for mod in frozen:
        mod.eval()


def train(
    model: Detector,
    train_set: VOCDataset,
    out_dir: os.PathLike | str,
    cfg: Dict[str, Any],
    *,
    eval_set: Optional[VOCDataset] = None,
    eval_cfg: Optional[Dict[str, Any]] = None,
    resolved_config: Optional[Dict[str, Any]] = None,
    resume: bool = True,
    progress: bool = True,
    extra_loss: Optional[Callable[[Detector], torch.Tensor]] = None,
    teacher: Optional[Detector] = None,
    checkpoint_extra: Optional[Dict[str, Any]] = None,
    log: Callable[[str], None] = print,
    after_step: Optional[Callable[[Detector], None]] = None,
) -> Dict[str, Any]:
    """Train ``model`` in place; write ``last.pt`` (resumable) each epoch and ``final.pt`` (EMA weights) at the end.

    ``teacher`` (optional, e.g. the unpruned baseline when fine-tuning a pruned model): adds
    ``cfg["distill_weight"]`` x the head-output distillation loss of :func:`compress.retrain.distill_loss` (Bernoulli
    KL of the class probabilities, score-weighted MSE of the box regressions; no feature terms, so it applies to any
    architecture without extra parameters). The teacher runs in eval mode on the same augmented batch.

    ``after_step`` (optional) is called with the model after every optimiser step, before the EMA update: e.g. a
    :class:`compress.sparsity.KernelMask` that keeps zeroed kernels zero.

    Returns a summary dict (throughput, losses, evaluation if ``eval_set`` given).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    epochs = int(cfg.get("epochs", 30))
    bs = int(cfg.get("batch_size", 16))
    size = model.config.input_size
    data = TrainSet(train_set, size, cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    loader_kwargs = dict(batch_size=bs, collate_fn=collate, drop_last=len(data) > bs)
    balance = float(cfg.get("source_balance", 0.0) or 0.0)
    if balance > 0:
        weights = source_balance_weights([a.image_id for a in train_set.annotations], balance)
        loader_kwargs["sampler"] = torch.utils.data.WeightedRandomSampler(
            weights.tolist(), num_samples=len(data), replacement=True, generator=gen)
    else:
        loader_kwargs.update(shuffle=True, generator=gen)
    workers = int(cfg.get("workers", 0))
    if workers > 0:
        loader_kwargs.update(num_workers=workers, persistent_workers=False)
        # Workers are forked afresh every epoch (they must see the new epoch's seed): decode the images once here,
        # so that every worker inherits them instead of decoding the whole set again each epoch.
        for i in range(len(data)):
            data.cache.get(i)
    device = resolve_device(cfg.get("device"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
        loader_kwargs["pin_memory"] = True
        model.to(device)
    frozen = freeze_early_blocks(model, int(cfg.get("freeze_blocks", 0)))
    # NOTE: channels_last makes CPU convolutions (depthwise ones above all) markedly faster in training.
    model.to(memory_format=torch.channels_last)
    loss_fn = loss_from_config(model, cfg)
    opt = torch.optim.AdamW(param_groups(model, float(cfg.get("weight_decay", 0.05)),
                                         float(cfg.get("backbone_lr_mult", 1.0))), lr=float(cfg.get("lr", 2e-3)))
    steps_per_epoch = max(len(data) // bs, 1) if len(data) > bs else 1
    total_steps = epochs * steps_per_epoch
    warmup = int(float(cfg.get("warmup_epochs", 1)) * steps_per_epoch)
    if teacher is not None:
        from compress.retrain import distill_loss

        w_kd = float(cfg.get("distill_weight", 1.0))
        # A private channels_last copy (faster on CPU); the caller's model is left as it was.
        teacher = copy.deepcopy(teacher).eval().to(device, memory_format=torch.channels_last)
    ema = ModelEMA(model, float(cfg.get("ema_decay", 0.9995)), float(cfg.get("ema_tau", 300)))
    start_epoch = 0
    history: List[Dict[str, float]] = []
    last_path = out_dir / "last.pt"
    classes = list(train_set.classes)
    split_hashes = {train_set.split: train_set.split_sha256()}
    if eval_set is not None:
        split_hashes[eval_set.split] = eval_set.split_sha256()

    budget = cfg.get("time_budget_s")
    epochs_requested = epochs
    if resume and last_path.is_file():
        ck = read_checkpoint(last_path)
        ts = ck.get("train_state") or {}
        if ts.get("epochs_requested", ts.get("epochs")) == epochs:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
            opt.load_state_dict(ts["optimizer"])
            ema.ema.load_state_dict(ts["ema"])
            ema.updates = ts["ema_updates"]
            start_epoch = ts["epoch"] + 1
            if ts["epochs"] != epochs:  # fitted to a time budget in the run being resumed
                epochs, budget = ts["epochs"], None
                total_steps = epochs * steps_per_epoch
            history = ts.get("history", [])
            torch.set_rng_state(ts["torch_rng"])
            gen.set_state(ts["loader_rng"])
            log(f"resuming from {last_path} at epoch {start_epoch + 1}/{epochs}")
        else:
            log(f"{last_path} was written for {ts.get('epochs')} epochs, not {epochs}: starting afresh")

    images_seen, t_train = 0, 0.0
    step = start_epoch * steps_per_epoch
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="train", unit="it", dynamic_ncols=True)
    try:
        epoch = start_epoch
        while epoch < epochs:
            data.epoch = epoch
            set_train_mode(model, frozen)
            loader = torch.utils.data.DataLoader(data, **loader_kwargs)
            sums = {"loss": 0.0, "cls": 0.0, "box": 0.0}
            if teacher is not None:
                sums["kd"] = 0.0
            n_batches = 0
            t_epoch = time.perf_counter()
            for images, targets in loader:
                lr = lr_at(step, total_steps, warmup, float(cfg.get("lr", 2e-3)), float(cfg.get("min_lr_ratio", 0.05)))
                for g in opt.param_groups:
                    g["lr"] = lr * g.get("lr_mult", 1.0)
                images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                if device.type != "cpu":
                    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
                outs = model.raw_outputs(images)
                loss, parts = loss_fn(model, outs, targets)
                if teacher is not None:
                    with torch.no_grad():
                        t_outs = teacher.raw_outputs(images)
                    kd, _ = distill_loss(outs, t_outs, model.config.num_classes)
                    sums["kd"] += float(kd.detach())
                    loss = loss + w_kd * kd
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1} step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                if after_step is not None:
                    after_step(model)
                ema.update(model)
                step += 1
                n_batches += 1
                images_seen += images.shape[0]
                sums["loss"] += float(loss.detach())
                sums["cls"] += parts["cls"]
                sums["box"] += parts["box"]
                if bar is not None:
                    bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{sums['loss'] / n_batches:.3f}",
                                    box=f"{sums['box'] / n_batches:.3f}", lr=f"{lr:.1e}")
                    bar.update(1)
            dt = time.perf_counter() - t_epoch
            t_train += dt
            if budget and epoch == start_epoch + 1:
                # Fit the epochs to the budget, timed on the second epoch (the first also pays for start-up: CUDA
                # kernels loaded, cuDNN's choice of algorithms). After two epochs the cosine has hardly begun,
                # so the schedule simply becomes that of the shorter run.
                fitted = epochs_within_budget(dt, float(budget) - history[-1]["seconds"] - dt, epoch + 1, epochs)
                if fitted != epochs:
                    log(f"time budget {float(budget):.0f} s at {dt:.1f} s per epoch: {fitted} epochs instead of {epochs}")
                    epochs, total_steps = fitted, fitted * steps_per_epoch
                    if bar is not None:
                        bar.total = total_steps
                        bar.refresh()
            rec = {k: v / max(n_batches, 1) for k, v in sums.items()}
            rec.update(epoch=epoch + 1, seconds=dt, images_per_second=n_batches * bs / max(dt, 1e-9))
            history.append(rec)
            if bar is None:
                log(f"epoch {epoch + 1}/{epochs} loss {rec['loss']:.4f} {rec['images_per_second']:.1f} img/s")
            train_state = {
                "epoch": epoch, "epochs": epochs, "epochs_requested": epochs_requested, "optimizer": opt.state_dict(),
                "ema": ema.ema.state_dict(),
                "ema_updates": ema.updates, "history": history, "torch_rng": torch.get_rng_state(),
                "loader_rng": gen.get_state(),
            }
            save_checkpoint(last_path, model, classes, split_hashes=split_hashes, config=resolved_config,
                            train_state=train_state, extra=checkpoint_extra)
            epoch += 1
    finally:
        if bar is not None:
            bar.close()

    final = ema.ema
    model.load_state_dict(final.state_dict())
    model.to("cpu", memory_format=torch.contiguous_format)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    summary: Dict[str, Any] = {
        "epochs": epochs,
        "epochs_requested": epochs_requested,
        "device": str(device),
        "history": history,
        "train_seconds_this_run": t_train,
        "images_per_second": images_seen / t_train if t_train > 0 else None,
    }
    if eval_set is not None:
        from compress.inference import evaluate_model, summary_ap

        res = evaluate_model(model, eval_set, size, eval_cfg, progress=progress)
        summary["eval"] = res
        summary["ap50"] = summary_ap(res)
        log(f"AP50 (VOC07 11-point) on {eval_set.split}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["ap50"].items()))
    metrics = {"ap50_voc07": summary.get("ap50"), "train_images_per_second": summary["images_per_second"]}
    save_checkpoint(out_dir / "final.pt", model, classes, metrics=metrics, split_hashes=split_hashes,
                    config=resolved_config, extra=checkpoint_extra)
    atomic_write_bytes(out_dir / "train_summary.json", json.dumps(summary, indent=2, default=float).encode())
    return summary
