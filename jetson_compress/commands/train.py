"""``jetson-compress train``: train the detector on a VOC split."""
from __future__ import annotations

import argparse
import copy
import json
import time

from jetson_compress.commands.common import add_config_args, add_data_args, open_split, prepare_output_dir, resolve
from jetson_compress.config import override, save_resolved


def register(sub) -> None:
    p = sub.add_parser("train", help="train the detector (CPU or CUDA)", description=__doc__)
    add_data_args(p)
    add_config_args(p)
    p.add_argument("--out", default="runs/train", help="output folder (checkpoints, log, resolved config)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation on the test split")
    p.add_argument("--half", action="store_true", help="also write final_fp16.pt (fp16 storage, for shipping)")
    p.add_argument("--init", metavar="CKPT",
                   help="warm start: begin from this checkpoint's weights (an unpruned detector of the same "
                        "configuration; the input size may differ) instead of the ImageNet backbone; sets train.init")
    p.set_defaults(func=run)


def warm_start(path, model_cfg, classes):
    """The detector of ``path`` for further training; refuses a pruned one or one that differs from the config."""
    from compress.checkpoint import CheckpointError, load_model

    model, ckpt = load_model(path, for_training=True)
    if ckpt.get("prune_plan") is not None:
        raise CheckpointError(path, "is a pruned checkpoint: warm starts take an unpruned detector "
                                    "(fine-tune pruned models with `jetson-compress prune --finetune-epochs`)")
    if list(ckpt["classes"]) != list(classes):
        raise CheckpointError(path, f"detects {list(ckpt['classes'])}, the training split asks for {list(classes)}")
    mine, theirs = model_cfg.to_dict(), model.config.to_dict()
    # The input size is no part of the weights (the detector is fully convolutional): a warm start may train at
    # another size, e.g. to fine-tune a 320 model at 416.
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v and k != "input_size"}
    if diff:
        raise CheckpointError(path, "model configuration differs from the run's (checkpoint, config): "
                                    + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in sorted(diff.items())))
    model.config.input_size = model_cfg.input_size
    return model


def run(args: argparse.Namespace) -> int:
    import torch

    from compress.checkpoint import save_checkpoint, stored_state
    from compress.detector import Detector, DetectorConfig
    from compress.train import train

    cfg = resolve(args)
    override(cfg, "train.epochs", args.epochs)
    override(cfg, "train.batch_size", args.batch_size)
    override(cfg, "train.init", args.init)
    train_set = open_split(cfg, cfg["data"]["train_split"])
    eval_set = None if args.no_eval else open_split(cfg, cfg["data"]["test_split"])
    out = prepare_output_dir(args.out)
    save_resolved(cfg, out)  # only once the inputs are known good: a failed run keeps an earlier run's copy
    m = cfg["model"]
    model_cfg = DetectorConfig(num_classes=len(train_set.classes), width_mult=float(m["width_mult"]),
                               neck_channels=int(m["neck_channels"]), head_channels=int(m["head_channels"]),
                               input_size=int(m["input_size"]))
    init = cfg["train"].get("init")
    if init:
        model = warm_start(init, model_cfg, train_set.classes)
        print(f"warm start from {init}")
    else:
        model = Detector(model_cfg, pretrained_backbone=True, weights_path=m.get("imagenet_weights"))
    print(f"training on {len(train_set)} images ({train_set.num_boxes()} boxes) of {train_set.year_dir}, "
          f"{torch.get_num_threads()} threads")
    t0 = time.time()
    summary = train(model, train_set, out, cfg["train"], eval_set=eval_set, eval_cfg=cfg["eval"],
                    resolved_config=cfg, resume=not args.no_resume)
    ips = summary["images_per_second"]  # None when a resumed run had no epoch left to train
    print(f"wall time {time.time() - t0:.0f} s; throughput "
          + (f"{ips:.2f} images/s" if ips is not None else "n/a (no epoch trained in this run)"))
    if args.half:
        metrics = {"ap50_voc07": summary.get("ap50"), "train_images_per_second": summary["images_per_second"]}
        if eval_set is not None:
            # The stored figure must describe the stored weights: measure the model rounded to fp16 as it is saved.
            from compress.inference import evaluate_model, summary_ap

            rounded = copy.deepcopy(model)
            rounded.load_state_dict(stored_state(model, half=True))  # fp16 values into the float32 model
            metrics["ap50_voc07"] = summary_ap(evaluate_model(rounded, eval_set, int(m["input_size"]), cfg["eval"]))
            metrics["ap50_voc07_float32"] = summary.get("ap50")
            metrics["ap50_voc07_weights"] = "float16"  # what `prune` checks before reusing the figure
            print("AP50 of the fp16-stored weights: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in metrics["ap50_voc07"].items()))
        save_checkpoint(out / "final_fp16.pt", model, train_set.classes, half=True, metrics=metrics,
                        split_hashes={train_set.split: train_set.split_sha256(),
                                      **({eval_set.split: eval_set.split_sha256()} if eval_set else {})},
                        config=cfg)
    if "ap50" in summary:
        print(json.dumps(summary["ap50"], indent=2))
    return 0
