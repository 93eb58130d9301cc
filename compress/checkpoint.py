"""Detector checkpoints: the weights plus the metadata every later stage needs, written atomically.

A checkpoint is a ``torch.save`` dict:

    format: "jetson-compress-checkpoint", format_version: 1,
    architecture, model_config (DetectorConfig as dict), classes, input_size, mean, std,
    code_version, created, split_hashes {split: sha256}, metrics {...}, config (resolved run configuration),
    state_dict (weights; fp16 when saved for shipping), dtype,
    prune_plan (optional; the structure of a pruned model), train_state (optional; optimizer/EMA/epoch for resume)

Loading validates all of it and names the file in every error.
"""
from __future__ import annotations

import datetime as _dt
import io
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from compress.detector import ARCHITECTURE, Detector, DetectorConfig
from jetson_compress.version import __version__
from runtime.fileio import atomic_write_bytes  # noqa: F401  (the one atomic write; re-exported for compress/)

FORMAT = "jetson-compress-checkpoint"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "baseline_person_320.pt"


class CheckpointError(ValueError):
    def __init__(self, path: os.PathLike | str, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


def stored_state(model: Detector, half: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict as a checkpoint stores it: detached copies, floating-point tensors in fp16 when ``half``."""
    return {k: (v.half() if half and v.is_floating_point() else v).detach().clone()
            for k, v in model.state_dict().items()}


def save_checkpoint(
    path: os.PathLike | str,
    model: Detector,
    classes,
    *,
    metrics: Optional[Dict[str, Any]] = None,
    split_hashes: Optional[Dict[str, str]] = None,
    config: Optional[Dict[str, Any]] = None,
    train_state: Optional[Dict[str, Any]] = None,
    half: bool = False,
    mean=None,
    std=None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    from compress.augment import IMAGENET_MEAN, IMAGENET_STD

    state = stored_state(model, half)
    ckpt: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.config.architecture,
        "model_config": model.config.to_dict(),
        "classes": list(classes),
        "input_size": model.config.input_size,
        "mean": list(mean or IMAGENET_MEAN),
        "std": list(std or IMAGENET_STD),
        "code_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "split_hashes": dict(split_hashes or {}),
        "metrics": dict(metrics or {}),
        "config": dict(config or {}),
        "dtype": "float16" if half else "float32",
        "state_dict": state,
    }
    if extra:
        ckpt.update(extra)
    if train_state is not None:
        ckpt["train_state"] = train_state
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())
    return ckpt


def read_checkpoint(path: os.PathLike | str) -> Dict[str, Any]:
    """Load and validate a checkpoint dict (no model built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise CheckpointError(path, f"corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(path, "not a jetson-compress checkpoint (missing 'format' marker)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            path, f"checkpoint format {ckpt['format_version']} is newer than this code ({FORMAT_VERSION}): upgrade"
        )
    if ckpt.get("architecture") != ARCHITECTURE:
        raise CheckpointError(path, f"architecture {ckpt.get('architecture')!r} is not {ARCHITECTURE!r}")
    for key in ("model_config", "state_dict", "classes"):
        if key not in ckpt:
            raise CheckpointError(path, f"missing '{key}'")
    if not isinstance(ckpt["model_config"], dict):
        raise CheckpointError(path, "'model_config' is not a mapping")
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(path, "'state_dict' is not a mapping of tensors")
    for name, tensor in ckpt["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(path, f"state_dict entry {name} is a {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(path, f"tensor {name} has NaN or infinite values")
    return ckpt


def load_model(path: os.PathLike | str, *, for_training: bool = False) -> tuple[Detector, Dict[str, Any]]:
    """Build the detector described by a checkpoint and load its weights (fp32)."""
    ckpt = read_checkpoint(path)
    try:
        config = DetectorConfig.from_dict(ckpt["model_config"])
        model = Detector(config)
    except (TypeError, ValueError, KeyError, ZeroDivisionError, RuntimeError) as exc:
        raise CheckpointError(path, f"model_config {ckpt['model_config']} does not describe a buildable model "
                                    f"({type(exc).__name__}: {exc})") from None
    if ckpt.get("prune_plan") is not None:
        from compress.pruning import PlanError, apply_plan_structure

        try:
            apply_plan_structure(model, ckpt["prune_plan"])
        except PlanError as exc:
            raise CheckpointError(path, f"its prune plan does not fit the model: {exc}") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(path, f"weights do not fit the {config.architecture} model: {' '.join(first)}") from None
    if not for_training:
        model.eval()
    return model, ckpt


def default_checkpoint() -> Path:
    if not DEFAULT_CHECKPOINT.is_file():
        raise CheckpointError(
            DEFAULT_CHECKPOINT, "the shipped default baseline checkpoint is missing; pass --checkpoint or train one"
        )
    return DEFAULT_CHECKPOINT
