"""Writing the deploy bundle (host side): ONNX per variant + ``manifest.json`` in the format of `runtime.bundle`.

`write_bundle(bundle_dir, {name: (model, ckpt_meta)}, nms=...)` exports every variant with `export_onnx`, lints it
for TensorRT 8.2 (a bundle with lint errors is refused), counts FLOPs/MACs/params (`compress.flops`), writes the
manifest (format v1, see `runtime.bundle`) and validates the result with the device-side reader. Everything is
produced in a staging folder first; only a complete, valid bundle is moved into ``bundle_dir`` (ONNX files by
atomic rename, the manifest last), so a failure leaves an existing bundle untouched. A sidecar
``export_record.json`` keeps what the manifest does not: parity figures, lint findings, sources, versions, timings.

Host side: imports torch, onnx (through `export.onnx_export`, `export.lint`). Device code must not import it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from export.lint import lint_onnx
from export.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx, resolve_export_meta
from jetson_compress.version import __version__
from runtime.bundle import (
    DEFAULT_NMS, FORMAT, FORMAT_VERSION, MANIFEST_NAME, validate_bundle, validate_manifest, validate_nms,
)
from runtime.fileio import atomic_write_bytes, sha256_file

__all__ = ["BundleWriteError", "RECORD_NAME", "build_manifest_base", "write_bundle"]

RECORD_NAME = "export_record.json"
PIXEL_SCALE = 1.0 / 255.0

VariantSpec = Tuple[torch.nn.Module, Mapping[str, Any]]


class BundleWriteError(ValueError):
    """The bundle was not written; the message names the bundle (and the variant / file at fault)."""

    def __init__(self, path: os.PathLike | str, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _variant_meta(model: torch.nn.Module, ckpt_meta: Mapping[str, Any]) -> Dict[str, Any]:
    meta = resolve_export_meta(model, ckpt_meta.get("classes"), ckpt_meta.get("mean"), ckpt_meta.get("std"))
    config = getattr(model, "config", None)
    meta["input_size"] = int(ckpt_meta.get("input_size") or getattr(config, "input_size", 0))
    if meta["input_size"] <= 0:
        raise ValueError("input size unknown: put input_size in the checkpoint metadata")
    return meta


def build_manifest_base(meta: Mapping[str, Any], num_points: int, nms: Mapping[str, Any]) -> Dict[str, Any]:
    """Everything of the manifest except ``variants`` (shared by all variants of one bundle)."""
    from compress.augment import PAD_VALUE

    size = int(meta["input_size"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _utc_now(),
        "code_version": __version__,
        "classes": list(meta["classes"]),
        "input": {
            "name": INPUT_NAME,
            "shape": [1, 3, size, size],
            "layout": "NCHW",
            "dtype": "float32",
            "colour_order": "RGB",
            "pixel_scale": PIXEL_SCALE,
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "letterbox": {"pad_value": int(PAD_VALUE), "align": "center"},
        },
        "outputs": {
            "boxes": {"name": OUTPUT_NAMES[0], "shape": [1, int(num_points), 4], "format": "xyxy",
                      "units": "input_pixels"},
            "scores": {"name": OUTPUT_NAMES[1], "shape": [1, int(num_points), len(meta["classes"])],
                       "activation": "sigmoid"},
        },
        "decoding": {"in_graph": True, "strides": list(meta["strides"])},
        "nms": dict(nms),
    }


def _resolve_nms(nms: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    merged = dict(DEFAULT_NMS)
    unknown = sorted(set(nms or {}) - set(DEFAULT_NMS))
    if unknown:
        raise ValueError(f"unknown NMS settings {unknown}: known are {sorted(DEFAULT_NMS)}")
    merged.update(nms or {})
    problems = validate_nms(merged, "nms")
    if problems:
        raise ValueError("; ".join(problems))
    return merged


def write_bundle(
    bundle_dir: os.PathLike | str,
    variants: Mapping[str, VariantSpec],
    nms: Optional[Mapping[str, Any]] = None,
    *,
    opset: int = 13,
    sources: Optional[Mapping[str, str]] = None,
    fold: str = "auto",
    onnx_files: Optional[Mapping[str, os.PathLike]] = None,
) -> Dict[str, Any]:
    """Export, lint, measure and bundle every variant; returns the manifest written to ``bundle_dir``.

    ``variants`` maps a name ("baseline", "pruned", ...) to ``(model, ckpt_meta)``, where ``ckpt_meta`` carries
    ``classes``, ``input_size``, ``mean``, ``std`` (a checkpoint dict fits). All variants must share them: one
    manifest describes one input and output contract. ``sources`` (variant -> checkpoint path) goes to the record.

    ``bundle_dir`` must be absent, empty, or an earlier bundle (a folder with a manifest.json): a folder with other
    content is refused rather than mixed into.

    ``onnx_files`` (variant -> ONNX path) bundles an ONNX made elsewhere (the slim ONNX of channel surgery) instead
    of exporting the variant's model; the model is then used for its FLOPs and parameter counts only.
    """
    started = time.perf_counter()
    bundle_dir = Path(bundle_dir)
    if not variants:
        raise BundleWriteError(bundle_dir, "no variants to bundle")
    if bundle_dir.exists():
        if not bundle_dir.is_dir():
            raise BundleWriteError(bundle_dir, "exists and is not a folder")
        if any(bundle_dir.iterdir()) and not (bundle_dir / MANIFEST_NAME).is_file():
            raise BundleWriteError(bundle_dir, "folder is not empty and holds no manifest.json: refusing to write a "
                                               "bundle into it (choose an empty or new folder)")
    nms = _resolve_nms(nms)

    metas: Dict[str, Dict[str, Any]] = {}
    for name, (model, ckpt_meta) in variants.items():
        try:
            metas[name] = _variant_meta(model, ckpt_meta)
        except ValueError as exc:
            raise BundleWriteError(bundle_dir, f"variant {name!r}: {exc}") from None
    first_name = next(iter(metas))
    for name, meta in metas.items():
        for key in ("classes", "input_size", "mean", "std", "strides"):
            if meta[key] != metas[first_name][key]:
                raise BundleWriteError(bundle_dir, f"variants {first_name!r} and {name!r} differ in {key}: "
                                                   f"{metas[first_name][key]} vs {meta[key]}; one bundle has one "
                                                   f"input/output contract")
    meta = metas[first_name]
    size = meta["input_size"]

    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}.staging-", dir=bundle_dir.parent))
    try:
        entries: Dict[str, Dict[str, Any]] = {}
        record_variants: Dict[str, Dict[str, Any]] = {}
        num_points: Optional[int] = None
        for name, (model, _) in variants.items():
            filename = f"{name}.onnx"
            if onnx_files and name in onnx_files:
                info = _given_onnx(Path(onnx_files[name]), staging / filename)
            else:
                info = export_onnx(model, staging / filename, size, opset=opset, classes=meta["classes"],
                                   mean=meta["mean"], std=meta["std"], strides=meta["strides"], fold=fold)
            report = lint_onnx(staging / filename, path=str(bundle_dir / filename))
            if not report.ok:
                raise BundleWriteError(bundle_dir, f"variant {name!r} fails the TensorRT 8.2 lint, bundle not "
                                                   f"written:\n{report.format()}")
            if num_points is not None and info["num_points"] != num_points:
                raise BundleWriteError(bundle_dir, f"variant {name!r} has {info['num_points']} output points, "
                                                   f"others {num_points}")
            num_points = info["num_points"]
            from compress.flops import count_flops_params

            cost = count_flops_params(model, (1, 3, size, size))
            entries[name] = {
                "file": filename,
                "sha256": sha256_file(staging / filename),
                "flops": int(cost.flops),
                "macs": int(cost.macs),
                "params": int(cost.params),
                "opset": int(info["opset"]),
                "bytes": (staging / filename).stat().st_size,
            }
            record_variants[name] = {
                "source": (sources or {}).get(name),
                "parity": info["parity"],
                "folding": info["folding"],
                "ops": info["ops"],
                "lint": report.to_dict(),
                "export_seconds": info["seconds"],
            }

        manifest = build_manifest_base(meta, int(num_points or 0), nms)
        manifest["variants"] = entries
        problems = validate_manifest(manifest, str(bundle_dir / MANIFEST_NAME))
        if problems:
            raise BundleWriteError(bundle_dir, "the manifest would be invalid:\n  " + "\n  ".join(problems))
        atomic_write_bytes(staging / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
        problems = validate_bundle(staging, check_onnx=True)
        if problems:
            raise BundleWriteError(bundle_dir, "the staged bundle does not validate:\n  " + "\n  ".join(problems))

        record = {
            "stage": "export",
            "created": manifest["created"],
            "code_version": __version__,
            "versions": _versions(),
            "settings": {"opset": opset, "fold": fold, "nms": nms},
            "manifest_sha256": sha256_file(staging / MANIFEST_NAME),
            "variants": record_variants,
            "seconds": round(time.perf_counter() - started, 3),
        }
        atomic_write_bytes(staging / RECORD_NAME, (json.dumps(record, indent=2) + "\n").encode())

        # Publish: variant files first (each an atomic rename), the manifest last, so a reader sees either the
        # old manifest (with sha256 checks that catch the new files) or the complete new bundle.
        bundle_dir.mkdir(parents=True, exist_ok=True)
        for entry in entries.values():
            os.replace(staging / entry["file"], bundle_dir / entry["file"])
        os.replace(staging / RECORD_NAME, bundle_dir / RECORD_NAME)
        os.replace(staging / MANIFEST_NAME, bundle_dir / MANIFEST_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    problems = validate_bundle(bundle_dir)
    if problems:
        raise BundleWriteError(bundle_dir, "the written bundle does not validate:\n  " + "\n  ".join(problems))
    return manifest


def _given_onnx(src: Path, dst: Path) -> Dict[str, Any]:
    """Copy an ONNX made by another stage into the bundle and describe it like ``export_onnx`` does."""
    import onnx

    from export.onnx_export import onnx_opset

    shutil.copyfile(src, dst)
    model = onnx.load(str(dst))
    boxes = next(o for o in model.graph.output if o.name == OUTPUT_NAMES[0])
    num_points = int(boxes.type.tensor_type.shape.dim[1].dim_value)
    return {"num_points": num_points, "opset": onnx_opset(model), "parity": None, "folding": f"given: {src}",
            "ops": sorted({n.op_type for n in model.graph.node}), "seconds": 0.0}


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnx_graphsurgeon

        versions["onnx_graphsurgeon"] = onnx_graphsurgeon.__version__
    except ImportError:
        pass
    return versions
