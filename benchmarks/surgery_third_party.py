"""ONNX-native channel surgery (``--ratio 0.5 --verify``) on models a user would bring, without their source.

Models (none is committed; each is found or made here):

* PaddleOCR exports shipped in the PyPI package ``rapidocr-onnxruntime`` (``pip install --no-deps
  rapidocr-onnxruntime==1.4.4``; skipped when absent): PP-OCRv4 text detection (MobileNetV3-style backbone with
  depthwise convs, SE blocks with HardSigmoid, DB neck with Resize and ConvTranspose), the mobile v2.0 direction
  classifier (MobileNetV3 + MatMul head) and PP-OCRv4 recognition (PP-LCNet + an SVTR transformer block). Their
  inputs are dynamic; they are fixed to a typical size first.
* Built here from their published architectures with random weights (torch, TorchScript exporter): ResNet-18
  (residual adds, a Gemm head), a YOLOv8n-style detector (Conv-BN-SiLU, C2f blocks with Split and Concat, SPPF
  with MaxPool and Concat, nearest upsampling in the neck, three conv heads), the same YOLO-style model exported
  in fp16, and this project's MobileNetV2 detector.

For each: groups pruned / left alone (with the reasons), parameters before/after, verification figures.
Writes ``benchmarks/results/surgery_third_party.json`` and ``.md``.

    python benchmarks/surgery_third_party.py
"""
from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import he_randomise as randomise  # noqa: E402
from export.surgery import prune_onnx, surgery  # noqa: E402
from export.verify import masked_model, random_inputs  # noqa: E402


def noise_floor(path: Path) -> float:
    """How far ONNX Runtime's own graph optimisations move the masked reference (max abs, one random input): the
    numerical noise any comparison of this model carries, whatever the surgery did."""
    import numpy as np
    import onnxruntime as ort

    original = onnx.load(str(path))
    result = prune_onnx(original, ratio=0.5, round_to=8)
    masked = masked_model(original, result.removed_channels).SerializeToString()
    feed = random_inputs(original, 1)[0]
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        outs.append(ort.InferenceSession(masked, options, providers=["CPUExecutionProvider"]).run(None, feed))
    return max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(*outs))


def _rapidocr_models() -> List[Tuple[str, Path, List[int]]]:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return []
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    wanted = [("PP-OCRv4 det (rapidocr)", "ch_PP-OCRv4_det_infer.onnx", [1, 3, 320, 320]),
              ("PP-OCR mobile v2.0 cls (rapidocr)", "ch_ppocr_mobile_v2.0_cls_infer.onnx", [1, 3, 48, 192]),
              ("PP-OCRv4 rec (rapidocr)", "ch_PP-OCRv4_rec_infer.onnx", [1, 3, 48, 320])]
    return [(name, models / f, shape) for name, f, shape in wanted if (models / f).is_file()]


def _fix_input(src: Path, dst: Path, shape: List[int]) -> None:
    model = onnx.load(str(src))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, shape):
        d.ClearField("dim_param")
        d.dim_value = v
    onnx.save(model, str(dst))


def _torch_models(tmp: Path) -> List[Tuple[str, Path]]:
    import torch
    from torch import nn

    torch.manual_seed(0)

    def cbs(cin: int, cout: int, k: int = 1, s: int = 1, act: Optional[nn.Module] = None) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout),
                             act if act is not None else nn.SiLU())

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.a = cbs(cin, cout, 3, stride, nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.b(self.a(x)) + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(cbs(3, 64, 7, 2, nn.ReLU()), nn.MaxPool2d(3, 2, 1))
            layers, c = [], 64
            for w, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [Basic(c, w, s), Basic(w, w, 1)]
                c = w
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))

    class Bottleneck(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.cv1, self.cv2 = cbs(c, c, 3), cbs(c, c, 3)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))

    class C2f(nn.Module):
        def __init__(self, cin: int, cout: int, n: int = 1) -> None:
            super().__init__()
            self.c = cout // 2
            self.cv1 = cbs(cin, 2 * self.c)
            self.cv2 = cbs((2 + n) * self.c, cout)
            self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))  # exported as Split
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.cv1, self.cv2, self.m = cbs(cin, cin // 2), cbs(cin * 2, cout), nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))

    class YoloV8nLike(nn.Module):
        def __init__(self, nc: int = 80) -> None:
            super().__init__()
            self.b1 = nn.Sequential(cbs(3, 16, 3, 2), cbs(16, 32, 3, 2), C2f(32, 32), cbs(32, 64, 3, 2), C2f(64, 64, 2))
            self.b2 = nn.Sequential(cbs(64, 128, 3, 2), C2f(128, 128, 2))
            self.b3 = nn.Sequential(cbs(128, 256, 3, 2), C2f(256, 256), SPPF(256, 256))
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.n1, self.n2 = C2f(384, 128), C2f(192, 64)
            self.d1, self.n3 = cbs(64, 64, 3, 2), C2f(192, 128)
            self.d2, self.n4 = cbs(128, 128, 3, 2), C2f(384, 256)
            self.heads = nn.ModuleList(nn.Sequential(cbs(c, 64, 3), cbs(64, 64, 3), nn.Conv2d(64, 64 + nc, 1))
                                       for c in (64, 128, 256))

        def forward(self, x):
            p3 = self.b1(x)
            p4 = self.b2(p3)
            p5 = self.b3(p4)
            t4 = self.n1(torch.cat([self.up(p5), p4], 1))
            o3 = self.n2(torch.cat([self.up(t4), p3], 1))
            o4 = self.n3(torch.cat([self.d1(o3), t4], 1))
            o5 = self.n4(torch.cat([self.d2(o4), p5], 1))
            return tuple(h(o) for h, o in zip(self.heads, (o3, o4, o5)))

    def export(model: nn.Module, path: Path, size: int, half: bool = False) -> Path:
        x = torch.zeros(1, 3, size, size)
        if half:
            model, x = model.half(), x.half()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=13, input_names=["images"],
                              do_constant_folding=True)
        return path

    from compress.detector import Detector, DetectorConfig

    det = randomise(Detector(DetectorConfig(width_mult=1.0, input_size=320)))
    det.export_mode = True
    out = [("ResNet-18 (torch, random weights)", export(randomise(ResNet18()), tmp / "resnet18.onnx", 224)),
           ("YOLOv8n-style (torch, random weights)", export(randomise(YoloV8nLike()), tmp / "yolo.onnx", 320)),
           ("YOLOv8n-style fp16 (torch .half())", export(randomise(YoloV8nLike()), tmp / "yolo16.onnx", 320, True)),
           ("jetson-compress MobileNetV2 detector", export(det, tmp / "detector.onnx", 320))]
    return out


def main() -> int:
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models: List[Tuple[str, Path]] = []
        for name, path, shape in _rapidocr_models():
            fixed = tmp / path.name
            _fix_input(path, fixed, shape)
            models.append((f"{name}, input {shape}", fixed))
        if not models:
            print("rapidocr-onnxruntime not installed: its PaddleOCR models are skipped "
                  "(pip install --no-deps rapidocr-onnxruntime==1.4.4)")
        models += _torch_models(tmp)
        for name, path in models:
            t = time.perf_counter()
            try:
                rep = surgery(path, tmp / f"slim_{path.name}", ratio=0.5, round_to=8, verify=True)
            except Exception as exc:  # noqa: BLE001 - recorded per model, the others still run
                rows.append({"model": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
                print(f"{name}: FAILED {exc}")
                continue
            v = rep["verify"]
            rows.append({
                "model": name, "ok": v["ok"], "seconds": round(time.perf_counter() - t, 2),
                "bytes_before": rep["bytes_before"], "bytes_after": rep["bytes_after"],
                "params_before": rep["params_before"], "params_after": rep["params_after"],
                "macs_before": rep["macs_before"], "macs_after": rep["macs_after"],
                "groups_total": rep["groups_total"], "groups_pruned": rep["groups_pruned"],
                "left_alone": [{"channels": g["channels"], "producers": g["producers"], "reasons": g["reasons"]}
                               for g in rep["left_alone"]],
                "verify": {k: v[k] for k in ("dtype", "tolerance", "max_abs", "max_rel", "inputs",
                                             "masked_vs_original_max_abs")},
                "reference_noise_floor_max_abs": noise_floor(path),
            })
            print(f"{name}: ok={v['ok']} params {rep['params_before']} -> {rep['params_after']}, "
                  f"{rep['groups_pruned']}/{rep['groups_total']} groups pruned, max rel {v['max_rel']:.3g}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "surgery_third_party.json").write_text(json.dumps({"ratio": 0.5, "round_to": 8, "models": rows},
                                                             indent=2) + "\n")
    md = ["# ONNX-native channel surgery on third-party models (`--ratio 0.5 --round-to 8 --verify`)", "",
          "| model | ok | params before -> after | MACs before -> after | groups pruned / total | verify max rel "
          "(tolerance) | max abs | reference noise floor | masks changed outputs by |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['model']} | **failed** | {r['error']} | | | | | | |")
            continue
        v = r["verify"]
        md.append(f"| {r['model']} | {r['ok']} | {r['params_before']:,} -> {r['params_after']:,} | "
                  f"{r['macs_before']:,} -> {r['macs_after']:,} | {r['groups_pruned']} / {r['groups_total']} | "
                  f"{v['max_rel']:.2g} ({v['tolerance']}, {v['dtype']}) | {v['max_abs']:.2g} | "
                  f"{r['reference_noise_floor_max_abs']:.2g} | {v['masked_vs_original_max_abs']:.3g} |")
    md += ["", "max rel = max|slim - masked| / max(max|masked|, 1) per output. Reference noise floor = how far ONNX "
           "Runtime's own graph optimisations move the masked reference on one random input: differences of that "
           "size are float rounding, not surgery (a wrong channel moves outputs by about the 'masks changed "
           "outputs by' column)."]
    md += ["", "## Channels left alone, and why", ""]
    for r in rows:
        for g in r.get("left_alone", []):
            md.append(f"- {r['model']}: {g['channels']} channels of {', '.join(g['producers']) or 'the input'}: "
                      f"{'; '.join(g['reasons'])}")
    (out / "surgery_third_party.md").write_text("\n".join(md) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
