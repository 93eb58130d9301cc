"""``jetson-compress build``: every stage of design.md's data flow, chained, recorded and resumable.

    baseline -> prune (+ compensation, fine-tune) -> export dense ONNX -> channel surgery with the plan -> verify
    -> lint -> bundle -> TensorRT engines (when importable) -> benchmark (all variants, one run) -> accuracy of
    every variant measured on the exported model through ``runtime/`` -> report

Each stage runs through :class:`jetson_compress.stages.StageRunner` (atomic, hashed, skipped when up to date).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from jetson_compress.stages import StageRunner

STAGES = ["baseline", "prune", "export", "surgery", "bundle", "engines", "benchmark", "accuracy", "report"]


def evaluate_bundle_variant(bundle_dir: Path, variant: str, dataset, score_threshold: float = 0.01,
                            threads: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """AP50 of one bundled ONNX variant run by the device runtime (ONNX Runtime), on a VOC split."""
    from compress.voc import load_image
    from compress.voc_eval import Detections, evaluate_all
    from runtime.bundle import load_bundle, variant_path
    from runtime.postprocess import PostprocessConfig, detections_from_outputs
    from runtime.preprocess import PreprocessConfig, preprocess
    from runtime.runners import OnnxRuntimeRunner

    manifest = load_bundle(str(bundle_dir))
    pre = PreprocessConfig.from_manifest(manifest)
    post = PostprocessConfig.from_manifest(manifest, score_threshold=score_threshold)
    input_name = manifest["input"]["name"]
    dets: Dict[str, Detections] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), desc=f"AP {variant}", unit="img", leave=False)
    t0 = time.perf_counter()
    with OnnxRuntimeRunner(variant_path(str(bundle_dir), manifest, variant), threads=threads) as runner:
        for ann in dataset.annotations:
            tensor, meta = preprocess(load_image(ann.image_path, (ann.width, ann.height)), pre)
            d = detections_from_outputs(runner.infer({input_name: tensor}), post, meta)
            dets[ann.image_id] = Detections(np.asarray(d.boxes, np.float64), np.asarray(d.scores, np.float64),
                                            np.asarray(d.labels, np.int64))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    result = evaluate_all(dets, dataset.ground_truths(), list(dataset.classes))
    result["seconds"] = time.perf_counter() - t0
    return result


def run_build(cfg: Dict[str, Any], run_dir: Path, *, checkpoint: Optional[Path], train_baseline: bool,
              force: bool = False, log: Callable[[str], None] = print) -> Dict[str, Any]:
    from jetson_compress.commands.common import open_split

    b = cfg["build"]
    keep_whole = [str(n) for n in b["keep_whole"]]
    if keep_whole and str(b["method"]).startswith("layer"):
        log(f"build.keep_whole {keep_whole} applies to the channel methods, not build.method {b['method']}: ignored")
        keep_whole = []
    if keep_whole:
        # Checked before any stage runs: a wrong name should not cost a baseline stage first.
        from compress.detector import Detector, DetectorConfig
        from compress.prune_pipeline import resolve_keep_whole
        from jetson_compress.config import ConfigError

        try:
            resolve_keep_whole(Detector(DetectorConfig(input_size=64)), keep_whole)
        except ValueError as exc:
            raise ConfigError(f"build.keep_whole: {exc}") from None
    from compress.prune_pipeline import CHANNEL_CRITERIA

    if str(b["channel_criterion"]) not in CHANNEL_CRITERIA:
        from jetson_compress.config import ConfigError

        raise ConfigError(f"build.channel_criterion {b['channel_criterion']!r}: choose from {', '.join(CHANNEL_CRITERIA)}")
    runner = StageRunner(run_dir, log=log, force=force)
    # Rough stage durations on 2 CPU cores at 320x320 (an earlier run's records replace them): for the ETA.
    epochs = int(b["finetune_epochs"]) if not b.get("finetune_seconds") else 0
    runner.plan(STAGES, {"baseline": 3600.0 if train_baseline else 1.0, "prune": 40.0 + 75.0 * epochs +
                         float(b.get("finetune_seconds") or 0.0), "export": 10.0, "surgery": 15.0, "bundle": 10.0,
                         "benchmark": 0.12 * int(b["benchmark_runs"]) + 20.0, "accuracy": 60.0, "report": 5.0})

    # 1. baseline -----------------------------------------------------------------------------------------------
    if train_baseline:
        def train_stage(work: Path):
            from compress.detector import Detector, DetectorConfig
            from compress.train import train

            train_set = open_split(cfg, cfg["data"]["train_split"])
            m = cfg["model"]
            model = Detector(DetectorConfig(num_classes=len(train_set.classes), width_mult=float(m["width_mult"]),
                                            neck_channels=int(m["neck_channels"]),
                                            head_channels=int(m["head_channels"]),
                                            input_size=int(m["input_size"])), pretrained_backbone=True)
            train(model, train_set, work / "train", cfg["train"], resolved_config=cfg)
            shutil.move(str(work / "train" / "final.pt"), work / "baseline.pt")
            shutil.rmtree(work / "train")
        rec = runner.run("baseline", {}, {"train": cfg["train"], "model": cfg["model"], "data": cfg["data"]},
                         train_stage)
    else:
        from compress.checkpoint import default_checkpoint, read_checkpoint

        src = Path(checkpoint) if checkpoint else default_checkpoint()

        def copy_stage(work: Path):
            read_checkpoint(src)  # validate before anything depends on it
            shutil.copyfile(src, work / "baseline.pt")
        rec = runner.run("baseline", {"checkpoint": src}, {}, copy_stage)
    baseline_ckpt = Path(rec["dir"]) / "baseline.pt"

    # 2. prune + compensate + fine-tune ----------------------------------------------------------------------------
    prune_settings = {k: b[k] for k in ("method", "target_flops", "compensate", "finetune", "finetune_epochs",
                                        "finetune_seconds", "round_to", "calibration_images", "layer_share",
                                        "latency_tilt", "latency_model", "channel_criterion")}
    prune_settings["keep_whole"] = keep_whole
    prune_settings["train"] = cfg["train"]

    def prune_stage(work: Path):
        from compress.checkpoint import load_model
        from compress.prune_pipeline import run_prune

        model, ckpt = load_model(baseline_ckpt)
        train_set = open_split(cfg, cfg["data"]["train_split"])
        run_prune(model, ckpt, train_set, None, work, method=b["method"], target_reduction=float(b["target_flops"]),
                  round_to=int(b["round_to"]), compensate_flag=bool(b["compensate"]),
                  finetune=str(b["finetune"]), finetune_epochs=int(b["finetune_epochs"]),
                  finetune_seconds=float(b["finetune_seconds"]) if b["finetune_seconds"] else None,
                  train_cfg=cfg["train"], eval_cfg=cfg["eval"], resolved_config=cfg,
                  calibration_images=int(b["calibration_images"]), log=log,
                  latency_model=str(b["latency_model"]), latency_tilt=float(b["latency_tilt"]),
                  keep_whole=keep_whole, channel_criterion=str(b["channel_criterion"]),
                  layer_options={"layer_share": float(b["layer_share"])} if b["method"].startswith("layer") else None)
        shutil.rmtree(work / "finetune", ignore_errors=True)
    rec = runner.run("prune", {"baseline": baseline_ckpt}, prune_settings, prune_stage)
    pruned_ckpt, plan_path = Path(rec["dir"]) / "pruned.pt", Path(rec["dir"]) / "plan.json"

    # 3. baseline ONNX (conv-BN folded by the fusion pass, static shape, opset asserted, parity with torch) --------
    def export_stage(work: Path):
        from compress.checkpoint import load_model
        from compress.fusion import fuse_model
        from export.onnx_export import export_onnx

        base, meta = load_model(baseline_ckpt)
        info = export_onnx(fuse_model(base), work / "baseline.onnx", base.config.input_size, opset=int(b["opset"]),
                           classes=meta["classes"], mean=meta["mean"], std=meta["std"])
        return {"parity": {"baseline": info["parity"]}}
    rec = runner.run("export", {"baseline": baseline_ckpt}, {"opset": b["opset"]}, export_stage)
    export_dir = Path(rec["dir"])

    # 4. pruned: fuse -> dense ONNX -> channel surgery with the plan -> verify against the pruned torch model ------
    def surgery_stage(work: Path):
        from export.slim import slim_onnx_from_checkpoint

        result = slim_onnx_from_checkpoint(pruned_ckpt, work / "pruned.onnx", work / "dense", opset=int(b["opset"]),
                                           log=log)
        shutil.rmtree(work / "dense")
        (work / "surgery_report.json").write_text(json.dumps(result, indent=2, default=float))
        return {"verify": result["verify"]}
    rec = runner.run("surgery", {"plan": plan_path, "pruned": pruned_ckpt}, {"opset": b["opset"]}, surgery_stage)
    slim_onnx = Path(rec["dir"]) / "pruned.onnx"

    # 5. bundle (lint inside) --------------------------------------------------------------------------------------
    def bundle_stage(work: Path):
        from compress.checkpoint import load_model
        from export.bundle import write_bundle

        base, meta = load_model(baseline_ckpt)
        pruned, _ = load_model(pruned_ckpt)
        write_bundle(work / "bundle", {"baseline": (base, meta), "pruned": (pruned, meta)}, nms=cfg.get("nms"),
                     opset=int(b["opset"]), onnx_files={"baseline": export_dir / "baseline.onnx",
                                                        "pruned": slim_onnx},
                     sources={"baseline": str(baseline_ckpt), "pruned": str(pruned_ckpt)})
    rec = runner.run("bundle", {"baseline": export_dir / "baseline.onnx", "pruned": slim_onnx,
                                "baseline_ckpt": baseline_ckpt, "pruned_ckpt": pruned_ckpt},
                     {"nms": cfg.get("nms")}, bundle_stage)
    bundle_dir = Path(rec["dir"]) / "bundle"

    # 6. TensorRT engines, when TensorRT is importable here ---------------------------------------------------------
    backend = "ort"
    try:
        import tensorrt  # noqa: F401

        backend = "trt"
    except ImportError:
        log("TensorRT is not importable on this machine: no engines built; measuring with ONNX Runtime instead "
            "(build them on the Jetson with `python3 -m jetson.benchmark BUNDLE --backend trt`)")

    # 7. benchmark: every variant side by side in one run, through the device runtime ---------------------------
    def bench_stage(work: Path):
        from jetson.benchmark import run_benchmark

        return {"benchmark": run_benchmark(str(bundle_dir), backend=backend, variants=["baseline", "pruned"],
                                           runs=int(b["benchmark_runs"]), warmup=int(b["benchmark_warmup"]),
                                           threads=b.get("threads"), json_out=str(work / "benchmark.json"),
                                           md_out=str(work / "benchmark.md"))}
    rec = runner.run("benchmark", {"manifest": bundle_dir / "manifest.json"},
                     {"backend": backend, "runs": b["benchmark_runs"], "warmup": b["benchmark_warmup"],
                      "threads": b.get("threads"), "nonce": time.time() if force else 0}, bench_stage)
    bench = json.loads((Path(rec["dir"]) / "benchmark.json").read_text())

    # 8. accuracy of the exported models through runtime/ ---------------------------------------------------------
    def accuracy_stage(work: Path):
        test_set = open_split(cfg, cfg["data"]["test_split"])
        acc = {v: evaluate_bundle_variant(bundle_dir, v, test_set, float(cfg["eval"]["score_threshold"]),
                                          threads=b.get("threads")) for v in ("baseline", "pruned")}
        (work / "accuracy.json").write_text(json.dumps(acc, indent=2, default=float))
    rec = runner.run("accuracy", {"manifest": bundle_dir / "manifest.json"},
                     {"split": cfg["data"]["test_split"], "eval": cfg["eval"], "data": cfg["data"]}, accuracy_stage)
    accuracy = json.loads((Path(rec["dir"]) / "accuracy.json").read_text())

    # 9. report ---------------------------------------------------------------------------------------------------
    from jetson_compress.report import write_report

    report = write_report(run_dir, bundle_dir, bench, accuracy, plan_path, runner.records, cfg)
    return report

