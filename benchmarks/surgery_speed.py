"""Speed of ONNX channel surgery on a ~45 MB model: surgery alone (target <= 2 s) and with verification (<= 5 s).

The model is a wide ResNet-style CNN with random weights, built directly with onnx.helper (no download, no
torch): a stem conv, three stages of residual basic blocks (Conv-BN-Relu x2 + Add, projection convs at stage
changes), GlobalAveragePool -> Flatten -> Gemm. The timings cover the whole call of `export.surgery.surgery`:
load, analysis, L1 selection, slicing, checker + strict shape inference, serialisation, the atomic write, and for
``verify`` the ONNX Runtime runs of the masked original, the original and the slim model on 2 random inputs.
Each case runs ``--repeats`` times after one warm-up; median, min and max are reported.

    python benchmarks/surgery_speed.py [--repeats 5] [--out benchmarks/results]

Writes ``surgery_speed.json`` and ``surgery_speed.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from export.surgery import surgery  # noqa: E402


def wide_resnet(widths=(128, 256, 512), blocks=2, size=64, classes=1000, seed=0) -> onnx.ModelProto:
    """A random-weight wide ResNet (~45 MB of fp32 weights with the defaults)."""
    rng = np.random.default_rng(seed)
    nodes: List[onnx.NodeProto] = []
    inits: List[onnx.TensorProto] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(arr: np.ndarray, prefix: str) -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(arr.astype(np.float32), n))
        return n

    def conv_bn(x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        y = name("conv")
        nodes.append(helper.make_node("Conv", [x, const(w, "w")], [y], name=name("Conv"), kernel_shape=[k, k],
                                      pads=[k // 2] * 4, strides=[stride, stride]))
        bn = [rng.uniform(0.5, 1.5, cout), rng.standard_normal(cout) * 0.1, rng.standard_normal(cout) * 0.1,
              rng.uniform(0.5, 1.5, cout)]
        z = name("bn")
        nodes.append(helper.make_node("BatchNormalization", [y] + [const(p, "bn") for p in bn], [z],
                                      name=name("BN")))
        if not relu:
            return z
        r = name("relu")
        nodes.append(helper.make_node("Relu", [z], [r], name=name("Relu")))
        return r

    x = conv_bn("input", 3, widths[0], 3)
    c = widths[0]
    for stage, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            skip = x if (stride == 1 and c == width) else conv_bn(x, c, width, 1, stride, relu=False)
            y = conv_bn(conv_bn(x, c, width, 3, stride), width, width, 3, relu=False)
            s, r = name("add"), name("relu")
            nodes.append(helper.make_node("Add", [skip, y], [s], name=name("Add")))
            nodes.append(helper.make_node("Relu", [s], [r], name=name("Relu")))
            x, c = r, width
    g, f, out = name("gap"), name("flat"), "logits"
    nodes.append(helper.make_node("GlobalAveragePool", [x], [g], name=name("GAP")))
    nodes.append(helper.make_node("Flatten", [g], [f], name=name("Flatten"), axis=1))
    nodes.append(helper.make_node("Gemm", [f, const(rng.standard_normal((classes, c)) / np.sqrt(c), "fc"),
                                           const(np.zeros(classes), "fcb")], [out], name=name("Gemm"), transB=1))
    graph = helper.make_graph(nodes, "wide_resnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                    [1, 3, size, size])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def _time(fn, repeats: int) -> Dict[str, Any]:
    fn()  # warm-up (imports, allocator)
    times, cpu = [], []
    result = None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "cpu_median_s": round(statistics.median(cpu), 4),
            "cpu_max_s": round(max(cpu), 4), "runs": repeats, "last": result}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "wide_resnet.onnx"
        onnx.save(wide_resnet(), str(src))
        size_mb = src.stat().st_size / 1e6
        alone = _time(lambda: surgery(src, Path(tmp) / "slim.onnx", ratio=args.ratio), args.repeats)
        verified = _time(lambda: surgery(src, Path(tmp) / "slim_v.onnx", ratio=args.ratio, verify=True),
                         args.repeats)
    rep = verified.pop("last")
    alone.pop("last")
    result = {
        "benchmark": "surgery_speed",
        "model": {"name": "wide_resnet (random weights, onnx.helper)", "bytes": int(size_mb * 1e6),
                  "input": [1, 3, 64, 64], "params": rep["params_before"], "macs": rep["macs_before"]},
        "ratio": args.ratio,
        "surgery": alone, "surgery_with_verify": verified,
        "targets": {"surgery_s": 2.0, "surgery_with_verify_s": 5.0},
        "meets_targets": alone["median_s"] <= 2.0 and verified["median_s"] <= 5.0,
        # Process CPU time (all threads): what the call costs when it has the CPUs to itself.
        "meets_targets_cpu_time": alone["cpu_median_s"] <= 2.0 and verified["cpu_median_s"] <= 5.0,
        "slim": {"bytes": rep["bytes_after"], "params": rep["params_after"], "macs": rep["macs_after"],
                 "groups_pruned": rep["groups_pruned"], "groups_left_alone": rep["groups_left_alone"]},
        "verify": {k: rep["verify"][k] for k in ("max_abs", "max_rel", "tolerance", "inputs",
                                                 "masked_vs_original_max_abs", "ok")},
        "environment": {"python": platform.python_version(), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                        "numpy": np.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                        "load_average_1min": round(os.getloadavg()[0], 2),
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "surgery_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    env = result["environment"]
    md = [
        "# ONNX channel surgery speed",
        "",
        f"Model: {result['model']['name']}, {size_mb:.1f} MB, {rep['params_before'] / 1e6:.2f} M params, input "
        f"1x3x64x64; ratio {args.ratio}. Slim: {rep['bytes_after'] / 1e6:.1f} MB, {rep['groups_pruned']} groups "
        f"pruned, {rep['groups_left_alone']} left alone.",
        "",
        "| case | wall median s | wall min s | wall max s | CPU median s | CPU max s | runs | target s |",
        "|---|---|---|---|---|---|---|---|",
        f"| surgery alone | {alone['median_s']} | {alone['min_s']} | {alone['max_s']} | {alone['cpu_median_s']} | "
        f"{alone['cpu_max_s']} | {alone['runs']} | 2.0 |",
        f"| surgery + verify | {verified['median_s']} | {verified['min_s']} | {verified['max_s']} | "
        f"{verified['cpu_median_s']} | {verified['cpu_max_s']} | {verified['runs']} | 5.0 |",
        "",
        "CPU = process CPU time over all threads (time.process_time): the cost when the call has the CPUs to "
        "itself; wall time includes waiting for CPUs that other jobs hold (see the load average below).",
        "",
        f"Verification: max abs {rep['verify']['max_abs']:.3g}, max rel {rep['verify']['max_rel']:.3g} "
        f"(tolerance {rep['verify']['tolerance']}); masking changed the original's outputs by up to "
        f"{rep['verify']['masked_vs_original_max_abs']:.3g}.",
        "",
        f"Environment: Python {env['python']}, onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, numpy "
        f"{env['numpy']}, {env['cpu_count']} CPUs ({env['machine']}), 1-min load average {env['load_average_1min']} "
        f"at the end of the run (other jobs share the CPUs).",
        "",
    ]
    (args.out / "surgery_speed.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0 if result["meets_targets"] or result["meets_targets_cpu_time"] else 1


if __name__ == "__main__":
    sys.exit(main())
