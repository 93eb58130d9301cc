"""Helpers shared by the host benchmark scripts (``python benchmarks/X.py``; each puts the repository on
``sys.path`` and imports ``benchmarks.common``): the baseline set-up, ONNX Runtime CPU latency of several variants
timed in one run, the environment record, and the random weights given to models built from their architecture."""
from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


def load_baseline(checkpoint: Optional[str], data: Optional[str], threads: int,
                  sets: Sequence[str] = ()) -> Tuple[Any, Path, Any, Dict, Path]:
    """torch on ``threads`` threads; the resolved configuration (defaults and ``--set`` overrides ``sets``), the
    baseline checkpoint (``checkpoint`` or the default one) and its model, and the VOCdevkit root (``data`` or the
    configured one): ``(cfg, ckpt_path, baseline, ckpt, data_root)``."""
    import torch

    from compress.checkpoint import default_checkpoint, load_model
    from compress.voc import resolve_data_root
    from jetson_compress.config import load_config

    torch.set_num_threads(threads)
    cfg = load_config(sets=sets)
    ckpt_path = Path(checkpoint) if checkpoint else default_checkpoint()
    baseline, ckpt = load_model(ckpt_path)
    return cfg, ckpt_path, baseline, ckpt, resolve_data_root(data)


def cpu_session(onnx_path: str, threads: int, profile_prefix: Optional[str] = None):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads (one inter-op thread); with ``profile_prefix``
    it records ONNX Runtime's per-node profile (``session.end_profiling()`` returns the JSON's path)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])


def ort_latency(onnx_paths: Dict[str, str], size: int, warmup: int, rounds: int, threads: int) -> Dict[str, Dict]:
    sessions = {k: cpu_session(p, threads) for k, p in onnx_paths.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, {"images": x})
    times: Dict[str, List[float]] = {k: [] for k in sessions}
    for _ in range(rounds):  # interleaved, so drift in machine load hits every variant alike
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"images": x})
            times[k].append((time.perf_counter() - t) * 1e3)
    out = {}
    for k, v in times.items():
        a = np.asarray(v)
        out[k] = {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
                  "std_ms": float(a.std()), "runs": len(a)}
    return out


def export_detector(model, path: str, size: int) -> None:
    """Static-shape ONNX (opset 13) of a copy of the detector in export mode (decoded boxes and scores)."""
    import copy

    import torch

    m = copy.deepcopy(model).eval()
    m.export_mode = True
    torch.onnx.export(m, torch.zeros(1, 3, size, size), path, opset_version=13, dynamo=False,
                      input_names=["images"], output_names=["boxes", "scores"])


def time_variants(models: Dict[str, Any], export: Callable[[Any, str], None], rows: List[Dict[str, Any]], size: int,
                  warmup: int, rounds: int, threads: int,
                  on_export: Optional[Callable[[str, str], None]] = None) -> None:
    """Export every model (``export(model, path)``) to a temporary folder and time them all with ``ort_latency``;
    each row (keyed by ``row["variant"]``, one of ``models``) gets ``ort_cpu`` and ``speedup`` over ``baseline``.
    ``on_export(name, path)``, if given, is called on each exported file before the timing (e.g. to measure it)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, m in models.items():
            paths[name] = os.path.join(tmp, name.replace("@", "_").replace("+", "_") + ".onnx")
            export(m, paths[name])
            if on_export is not None:
                on_export(name, paths[name])
        lat = ort_latency(paths, size, warmup, rounds, threads)
    base_ms = lat["baseline"]["median_ms"]
    for r in rows:
        r["ort_cpu"] = lat[r["variant"]]
        r["speedup"] = base_ms / lat[r["variant"]]["median_ms"]


def save_plot(path: Path, draw: Callable[[Any], None], figsize: Tuple[float, float] = (7, 5), ncols: int = 1) -> bool:
    """One figure (Agg backend): ``draw(ax)`` fills it (``draw(axes)``, a list, with ``ncols`` > 1), it is saved to
    ``path`` at 120 dpi and closed. Without matplotlib it says so on stderr and returns False."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    draw(list(axes) if ncols > 1 else axes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def environment(threads: int) -> Dict[str, Any]:
    import onnxruntime as ort
    import torch

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpus": os.cpu_count(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "threads": threads, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def he_randomise(model, seed: int = 1):
    """He-scaled conv weights and non-trivial BN (from a generator seeded with ``seed``): activations that neither
    vanish nor explode through a deep random network. Returns the model in eval mode."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / m.weight[0].numel())
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
    return model.eval()
