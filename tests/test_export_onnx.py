"""torch -> ONNX export: opset, static shapes, embedded weights, folded grid, metadata, parity with torch."""
from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import pytest
import torch

from export.lint import lint_onnx
from export.onnx_export import (
    SHAPE_OPS, ExportError, export_onnx, fold_constants, onnx_opset, read_metadata, run_onnxruntime,
)
from jetson_compress.version import __version__
from tests.test_export_helpers import SMALL, exported_default, randomized_detector

pytestmark = pytest.mark.usefixtures("one_thread")

# Everything the detector may contain after export (TensorRT 8.2 runs all of these well).
EXPECTED_OPS = {"Conv", "Clip", "Add", "Concat", "Resize", "Reshape", "Transpose", "Slice", "Sigmoid", "Exp", "Mul",
                "Sub"}


def _torch_out(model, x):
    model.export_mode = True
    try:
        with torch.no_grad():
            boxes, scores = model(torch.from_numpy(x))
    finally:
        model.export_mode = False
    return boxes.numpy(), scores.numpy()


def test_default_export_contract():
    path, info, _ = exported_default()
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert onnx_opset(model) == 13 and info["opset"] == 13
    assert [i.name for i in model.graph.input] == ["images"]
    dims = lambda vi: [d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(model.graph.input[0]) == [1, 3, 320, 320]
    assert {o.name: dims(o) for o in model.graph.output} == {"boxes": [1, 2100, 4], "scores": [1, 2100, 1]}
    assert info["num_points"] == 2100 == 40 * 40 + 20 * 20 + 10 * 10
    assert info["outputs"] == {"boxes": [1, 2100, 4], "scores": [1, 2100, 1]}
    # static shapes only, on every tensor
    assert all(d.HasField("dim_value") for vi in list(model.graph.input) + list(model.graph.output)
               for d in vi.type.tensor_type.shape.dim)


def test_grid_and_reshapes_are_folded():
    path, info, _ = exported_default()
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & SHAPE_OPS
    assert not ops & {"Expand", "Cast", "Unsqueeze", "Constant", "Identity"}
    assert ops <= EXPECTED_OPS, ops - EXPECTED_OPS
    assert info["ops"]["Conv"] == 85


def test_weights_embedded_no_external_data():
    path, info, _ = exported_default()
    assert sorted(os.listdir(path.parent)) == [path.name]  # no .data file, no temp leftovers
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert conv_weights <= {t.name for t in model.graph.initializer}
    assert info["bytes"] == path.stat().st_size > 4_000_000


def test_metadata_props():
    path, info, model = exported_default()
    meta = read_metadata(onnx.load(str(path), load_external_data=False))
    assert meta["format"] == "jetson-compress-onnx" and meta["format_version"] == 1
    assert meta["code_version"] == __version__
    assert meta["classes"] == ["person"]
    assert meta["input_size"] == 320
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["strides"] == [8, 16, 32]
    assert info["metadata"] == meta


def test_onnxruntime_matches_torch_export_mode():
    path, info, model = exported_default()
    assert info["parity"]["max_abs_diff"] < 1e-4
    x = np.random.default_rng(123).normal(size=(1, 3, 320, 320)).astype(np.float32)
    ref_boxes, ref_scores = _torch_out(model, x)
    got = run_onnxruntime(path, {"images": x})
    assert np.abs(got["boxes"] - ref_boxes).max() < 1e-4
    assert np.abs(got["scores"] - ref_scores).max() < 1e-4
    # the comparison means something: outputs vary over the grid
    assert ref_scores.std() > 0.01 and ref_boxes.std() > 10


def test_opset_11_and_lint(tmp_path):
    model = randomized_detector(seed=2, **SMALL)
    path = tmp_path / "d.onnx"
    info = export_onnx(model, path, 128, opset=11)
    assert onnx_opset(onnx.load(str(path))) == 11
    assert info["parity"]["max_abs_diff"] < 1e-4
    assert info["num_points"] == 16 * 16 + 8 * 8 + 4 * 4
    assert lint_onnx(path).findings == []


def test_builtin_folder_matches_graphsurgeon(tmp_path):
    pytest.importorskip("onnx_graphsurgeon")
    model = randomized_detector(seed=3, **SMALL)
    a = export_onnx(model, tmp_path / "gs.onnx", 128, fold="graphsurgeon")
    b = export_onnx(model, tmp_path / "builtin.onnx", 128, fold="builtin")
    assert a["folding"].startswith("onnx-graphsurgeon") and b["folding"] == "builtin"
    assert a["ops"] == b["ops"]
    x = np.random.default_rng(0).normal(size=(1, 3, 128, 128)).astype(np.float32)
    out_a = run_onnxruntime(tmp_path / "gs.onnx", {"images": x})
    out_b = run_onnxruntime(tmp_path / "builtin.onnx", {"images": x})
    for name in ("boxes", "scores"):
        np.testing.assert_array_equal(out_a[name], out_b[name])


def test_raw_trace_has_shape_ops_that_folding_removes(tmp_path):
    """Why the fold is there: tracing leaves Shape -> Slice -> Concat -> Reshape chains for ``flatten``."""
    model = randomized_detector(seed=4, **SMALL)
    model.export_mode = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 128, 128),), str(tmp_path / "raw.onnx"), dynamo=False,
                          opset_version=13, input_names=["images"], output_names=["boxes", "scores"])
    raw = onnx.load(str(tmp_path / "raw.onnx"))
    assert "Shape" in {n.op_type for n in raw.graph.node}
    for method in ("auto", "builtin"):
        folded, _ = fold_constants(raw, method)
        assert not {n.op_type for n in folded.graph.node} & SHAPE_OPS


def test_model_flags_restored(tmp_path):
    model = randomized_detector(seed=5, **SMALL).train()
    export_onnx(model, tmp_path / "d.onnx", 128, verify=False)
    assert model.training and all(m.training for m in model.modules())
    assert model.export_mode is False
    with pytest.raises(ExportError):
        export_onnx(model, tmp_path / "d.onnx", 100)  # not a multiple of 32
    assert model.training and model.export_mode is False


def test_failures_leave_existing_file_untouched(tmp_path):
    model = randomized_detector(seed=6, **SMALL)
    target = tmp_path / "d.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(ExportError, match="opset 17"):
        export_onnx(model, target, 128, opset=17)
    with pytest.raises(ExportError, match="multiple of the largest stride"):
        export_onnx(model, target, 100)
    with pytest.raises(ValueError, match="class names"):
        export_onnx(model, target, 128, classes=["person", "bicycle"])
    assert target.read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["d.onnx"]
    info = export_onnx(model, target, 128, verify=False)  # and a good export replaces it
    assert target.stat().st_size == info["bytes"] and sorted(os.listdir(tmp_path)) == ["d.onnx"]
    assert info["parity"] == {}
