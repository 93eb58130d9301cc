"""Per-layer profile aggregation (pure) and the IProfiler subclass wiring.

The ``FakeTensorRTProfilerModule`` below is a TEST DOUBLE with only ``__version__`` and an ``IProfiler`` base class:
it checks that our subclass calls the base ``__init__`` and forwards ``report_layer_time``; it proves nothing about
real TensorRT (whether, when and with which names TensorRT calls the profiler needs a run on a real GPU).
"""

import json
import sys
import types

import pytest

from trt.profiler import LayerTimes, make_layer_profiler


def test_layer_times_aggregates_hand_computed():
    times = LayerTimes()
    for run in range(3):
        times.add("conv1", 1.0 + run)  # 1, 2, 3
        times.add("head", 0.5)
        times.add(7, 0.25)  # engines built without layer names report indices
    assert times.runs == 3 and len(times) == 3
    summary = times.summary()
    assert summary["runs"] == 3 and summary["layers_count"] == 3
    assert summary["sum_of_layer_means_ms"] == pytest.approx(2.75)
    names = [row["name"] for row in summary["layers"]]
    assert names == ["conv1", "head", "7"]  # slowest first
    conv = summary["layers"][0]
    assert (conv["calls"], conv["mean_ms"], conv["median_ms"], conv["min_ms"], conv["max_ms"], conv["total_ms"]) == (
        3, 2.0, 2.0, 1.0, 3.0, 6.0)
    assert conv["percent"] == pytest.approx(100 * 2.0 / 2.75)
    assert sum(row["percent"] for row in summary["layers"]) == pytest.approx(100.0)
    times.reset()
    assert times.runs == 0 and times.summary()["layers"] == []


def test_layer_times_json(tmp_path):
    times = LayerTimes()
    times.add("a", 1.5)
    path = tmp_path / "profile.json"
    times.write_json(path, {"engine": "x.engine"})
    data = json.loads(path.read_text())
    assert data["engine"] == "x.engine" and data["layers"][0]["name"] == "a" and data["runs"] == 1


def test_profiler_subclass_forwards_reports(monkeypatch):
    base_inits = []

    class IProfiler(object):
        def __init__(self):
            base_inits.append(self)

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "8.2.1.8"
    fake.IProfiler = IProfiler
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    profiler = make_layer_profiler()
    assert isinstance(profiler, IProfiler) and base_inits == [profiler]
    profiler.report_layer_time("conv1", 0.5)
    profiler.report_layer_time("conv1", 1.5)
    assert profiler.layer_times.summary()["layers"][0]["mean_ms"] == 1.0
