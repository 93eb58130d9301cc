"""jetson.benchmark: every variant of a real two-variant bundle side by side on ONNX Runtime, the interleaving, the
ratios against the baseline, the JSON + Markdown reports and the exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jetson import benchmark
from tests.conftest import SHARED_DATA
from tests.test_jetson_fixtures import jetson_bundle

PEDESTRIANS = SHARED_DATA / "pedestrians" / "VOCdevkit"


class CountingRunner:
    """Records the order of infer() calls (a stand-in for a runner when only the schedule is under test)."""

    def __init__(self, name, calls):
        self.name, self.calls, self.last_gpu_ms = name, calls, None

    def infer(self, feed):
        self.calls.append(self.name)
        return {}


def test_interleaving_rotates_the_variant_order_and_counts_runs():
    calls = []
    runners = {name: CountingRunner(name, calls) for name in ("baseline", "pruned", "tiny")}
    samples = benchmark.interleaved_latency(runners, {}, runs=5, warmup=2, round_size=2)
    assert calls[:6] == ["baseline"] * 2 + ["pruned"] * 2 + ["tiny"] * 2  # warm-up, untimed
    timed = calls[6:]
    # rounds of 2 (the last round has 1 left), order rotated by one variant each round
    assert timed == (["baseline"] * 2 + ["pruned"] * 2 + ["tiny"] * 2 + ["pruned"] * 2 + ["tiny"] * 2
                     + ["baseline"] * 2 + ["tiny", "baseline", "pruned"])
    assert all(len(samples[n]["end_to_end"]) == 5 and samples[n]["gpu"] == [] for n in runners)
    with pytest.raises(ValueError, match="runs >= 1"):
        benchmark.interleaved_latency(runners, {}, runs=0, warmup=0)


def test_ratios_hand_computed():
    def row(median, mean, flops, params, size, fps, ap=None, gpu=None):
        return {"latency_ms": {"median": median, "mean": mean}, "flops": flops, "params": params,
                "onnx_bytes": size, "pipeline": {"fps": fps}, "ap50": ap, "gpu_ms": gpu}

    variants = {"baseline": row(20.0, 22.0, 1000, 400, 800, 30.0, 0.6, {"median": 8.0}),
                "pruned": row(12.5, 11.0, 500, 100, 200, 45.0, 0.55, {"median": 5.0})}
    out = benchmark.ratios(variants, "baseline")
    pruned = out["pruned"]
    assert pruned["latency_speedup_median"] == 1.6 and pruned["latency_speedup_mean"] == 2.0
    assert pruned["gpu_speedup_median"] == 1.6 and pruned["pipeline_fps_ratio"] == 1.5
    assert (pruned["flops_ratio"], pruned["params_ratio"], pruned["onnx_bytes_ratio"]) == (0.5, 0.25, 0.25)
    assert pruned["ap50_delta"] == pytest.approx(-0.05)
    assert out["baseline"]["latency_speedup_median"] == 1.0 and out["baseline"]["flops_ratio"] == 1.0


def test_benchmark_on_a_real_bundle_writes_side_by_side_reports(tmp_path, capsys):
    bundle = jetson_bundle()
    manifest = json.loads((bundle / "manifest.json").read_text())
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    rc = benchmark.main([str(bundle), "--backend", "ort", "--variants", "pruned,baseline", "--runs", "6",
                         "--warmup", "2", "--round-size", "3", "--pipeline-runs", "4", "--threads", "1",
                         "--json", str(out_json), "--md", str(out_md), "--no-tegrastats", "--eval", str(PEDESTRIANS),
                         "--eval-limit", "6", "--note", "test bundle"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(out_json.read_text())
    assert report["format"] == "jetson-compress-benchmark" and report["backend"] == "ort"
    assert report["note"] == "test bundle" and report["reference"] == "baseline"
    assert list(report["variants"]) == ["pruned", "baseline"]  # the order asked for
    for name, row in report["variants"].items():
        assert row["latency_ms"]["count"] == 6 and len(row["samples_ms"]) == 6
        assert row["latency_ms"]["median"] == pytest.approx(float(np.median(row["samples_ms"])), abs=1e-3)
        assert row["gpu_ms"] is None  # ONNX Runtime has no GPU timer
        assert row["pipeline"]["runs"] == 4 and row["pipeline"]["fps"] > 0
        assert row["memory"]["rss_after_load_mib"] > 10
        assert row["accuracy"]["num_images"] == 6 and 0.0 <= row["ap50"] <= 1.0
        assert row["flops"] == manifest["variants"][name]["flops"]
    ratio = report["ratios"]["pruned"]
    base, pruned = report["variants"]["baseline"], report["variants"]["pruned"]
    assert ratio["latency_speedup_median"] == pytest.approx(base["latency_ms"]["median"] / pruned["latency_ms"]["median"])
    assert ratio["flops_ratio"] == manifest["variants"]["pruned"]["flops"] / manifest["variants"]["baseline"]["flops"]
    assert 0 < ratio["flops_ratio"] < 1 and report["ratios"]["baseline"]["latency_speedup_median"] == 1.0
    env = report["environment"]
    assert env["onnxruntime"] and env["python"] and "jetson_clocks" in env
    md = out_md.read_text()
    assert "> test bundle" in md and "| pruned |" in md and "| baseline |" in md and "## Accuracy" in md
    assert "{:.2f}x".format(ratio["latency_speedup_median"]) in md
    assert "{:.2f}".format(ratio["flops_ratio"]) in md and "## Environment" in md


def test_benchmark_exit_codes(tmp_path, capsys):
    assert benchmark.main([str(tmp_path), "--backend", "ort"]) == 2
    assert "manifest not found" in capsys.readouterr().err
    assert benchmark.main([str(jetson_bundle()), "--backend", "ort", "--variants", "huge",
                           "--json", str(tmp_path / "x.json")]) == 2
    assert "variant(s) huge not in the bundle" in capsys.readouterr().err
    assert benchmark.main([str(jetson_bundle()), "--backend", "ort", "--eval", str(tmp_path / "novoc"),
                           "--json", str(tmp_path / "x.json")]) == 2
    assert "VOC folder not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# --- benchmarks/device_prepost.py and benchmarks/device_camera_memory.py -----------------------------------------


def _load_script(name):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepost_script_reports_stage_times_and_the_ratio(tmp_path, capsys):
    from tests.test_jetson_fixtures import require_video

    prepost = _load_script("device_prepost")
    out_json, out_md = tmp_path / "p.json", tmp_path / "p.md"
    rc = prepost.main([str(jetson_bundle()), "--video", str(require_video()), "--frames", "6", "--warmup", "1",
                       "--json", str(out_json), "--md", str(out_md), "--note", "tiny"])
    assert rc == 0, capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert report["settings"]["frames"] == 6 and report["settings"]["input_size"] == 128
    for name, row in report["variants"].items():
        stages = row["stages_ms"]
        assert all(stages[s]["count"] == 6 for s in ("letterbox", "normalise", "infer", "postprocess"))
        expected = stages["letterbox"]["mean"] + stages["normalise"]["mean"] + stages["postprocess"]["mean"]
        assert row["prepost_mean_ms"] == pytest.approx(expected)
        assert row["ratio_mean"] == pytest.approx(expected / stages["infer"]["mean"])
        assert row["meets_acceptance"] == (row["ratio_mean"] <= 0.15)
        assert 0 <= row["detections_mean"] <= row["nms_candidates_mean"]  # NMS never adds boxes
    md = out_md.read_text()
    assert "> tiny" in md and "| baseline |" in md and "| pruned |" in md and "## Environment" in md
    assert prepost.main([str(tmp_path), "--frames", "1"]) == 2


def test_camera_memory_verdict_hand_computed():
    memory = _load_script("device_camera_memory")
    flat = [(f, f / 10.0, 200.0 + (0.5 if f % 200 else 0.0), 201.0, 20.0) for f in range(0, 3050, 50)]
    verdict = memory.judge(flat, settle=300, max_slope=2.0, max_growth=8.0)
    assert verdict["flat"] and verdict["samples_after_settle"] == 55
    assert abs(verdict["slope_mib_per_1000_frames"]) < 0.1
    leaking = [(f, f / 10.0, 200.0 + f * 0.004, 0.0, None) for f in range(0, 3050, 50)]  # 4 MiB per 1000 frames
    verdict = memory.judge(leaking, settle=300, max_slope=2.0, max_growth=8.0)
    assert not verdict["flat"] and verdict["slope_mib_per_1000_frames"] == pytest.approx(4.0)
    assert verdict["growth_mib"] == pytest.approx(0.004 * 2700)
    with pytest.raises(ValueError, match="only 2 samples"):
        memory.judge(flat[:8], settle=300, max_slope=2.0, max_growth=8.0)
