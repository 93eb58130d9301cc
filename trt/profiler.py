"""Per-layer timing of a TensorRT engine through an ``IProfiler``, aggregated over runs, written as JSON.

Device module: Python 3.6 syntax; tensorrt is imported lazily; never imports torch or onnx.

`LayerTimes` is the pure aggregation (testable anywhere); `make_layer_profiler` wraps it in a ``trt.IProfiler``
subclass (TensorRT calls ``report_layer_time(layer_name, ms)`` once per layer per execution); `profile_engine`
runs an engine with it. Profiling serialises layer execution and adds overhead: per-layer sums are larger than
the end-to-end time of an unprofiled run. Compare layers, and variants, with each other, not with latency.
Engines built with profiling verbosity NONE name layers by their decimal index.
"""

import collections

import numpy as np

from runtime.fileio import atomic_write_json
from trt.compat import import_tensorrt

__all__ = ["LayerTimes", "make_layer_profiler", "profile_engine"]


class LayerTimes(object):
    """Per-layer milliseconds over runs, in the order layers first reported."""

    def __init__(self):
        self._times = collections.OrderedDict()

    def add(self, layer_name, ms):
        self._times.setdefault(str(layer_name), []).append(float(ms))

    def reset(self):
        self._times.clear()

    def __len__(self):
        return len(self._times)

    @property
    def runs(self):
        """Executions seen: the most reports of any layer."""
        return max([len(v) for v in self._times.values()] or [0])

    def summary(self):
        """JSON-ready dict: runs, summed mean time, and one row per layer sorted by mean time (slowest first)."""
        rows = []
        for order, (name, values) in enumerate(self._times.items()):
            array = np.asarray(values, dtype=np.float64)
            rows.append(collections.OrderedDict([
                ("name", name),
                ("order", order),
                ("calls", int(array.size)),
                ("mean_ms", float(array.mean())),
                ("median_ms", float(np.median(array))),
                ("min_ms", float(array.min())),
                ("max_ms", float(array.max())),
                ("total_ms", float(array.sum())),
            ]))
        total_mean = float(sum(row["mean_ms"] for row in rows))
        for row in rows:
            row["percent"] = 100.0 * row["mean_ms"] / total_mean if total_mean > 0 else 0.0
        rows.sort(key=lambda row: (-row["mean_ms"], row["order"]))
        return collections.OrderedDict([
            ("runs", self.runs),
            ("layers_count", len(rows)),
            ("sum_of_layer_means_ms", total_mean),
            ("note", "profiled execution (layers serialised): compare layers, not end-to-end latency"),
            ("layers", rows),
        ])

    def write_json(self, path, extra=None):
        data = self.summary()
        if extra:
            data.update(extra)
        return atomic_write_json(path, data)


def make_layer_profiler(layer_times=None):
    """A ``trt.IProfiler`` instance that adds every report to ``layer_times`` (a new `LayerTimes` if None).

    The instance has a ``layer_times`` attribute. Attach it with ``context.profiler = profiler`` or pass it to
    `runtime.runners.TensorRTRunner(profiler=...)`.
    """
    trt = import_tensorrt("make_layer_profiler")
    times = LayerTimes() if layer_times is None else layer_times

    class _LayerProfiler(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)  # required by the TensorRT Python bindings
            self.layer_times = times

        def report_layer_time(self, layer_name, ms):
            self.layer_times.add(layer_name, ms)

    return _LayerProfiler()


def profile_engine(engine, feed=None, runs=50, warmup=5, json_path=None, device=0):
    """Profile ``engine`` (path or bytes) over ``runs`` executions after ``warmup``; returns `LayerTimes`.

    ``feed`` defaults to zeros of each input's shape and dtype (layer times barely depend on values).
    """
    from runtime.runners import TensorRTRunner

    profiler = make_layer_profiler()
    with TensorRTRunner(engine, device=device, profiler=profiler) as runner:
        if feed is None:
            feed = dict((name, np.zeros(spec.shape, dtype=spec.dtype))
                        for name, spec in runner.input_specs().items())
        for _ in range(int(warmup)):
            runner.infer(feed)
        profiler.layer_times.reset()
        for _ in range(int(runs)):
            runner.infer(feed)
        if json_path is not None:
            profiler.layer_times.write_json(json_path, {
                "engine": runner.source, "execution_call": runner.execution_call, "io_api": runner.io_api})
    return profiler.layer_times
