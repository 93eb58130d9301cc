"""The TensorRT 8.2 lint: the exported detector passes, deliberately bad models fail with the right rule."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import trt82_ops
from export.lint import ERROR, RULES, WARNING, LintError, lint_onnx
from jetson_compress.cli import main
from tests.test_export_helpers import (
    bad_models, clean_conv_model, const, exported_default, f32, make_model, save_with_external_data,
)

BAD = bad_models()


def test_exported_detector_is_clean():
    path, _, _ = exported_default()
    report = lint_onnx(path)
    assert report.ok
    assert report.findings == []
    assert report.opset == 13
    assert report.ops["Conv"] > 50 and "Shape" not in report.ops


def test_clean_tiny_model_passes():
    report = lint_onnx(clean_conv_model())
    assert report.ok and report.findings == []


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_model_rejected_with_rule(name):
    model, rules, node = BAD[name]
    report = lint_onnx(model)
    assert not report.ok
    assert report.rules(ERROR) == rules, report.format()
    assert any(f.node == node for f in report.errors if f.rule in rules), report.format()
    assert all(f.rule in RULES for f in report.findings)


def test_hardswish_message_says_newer_than_opset_13():
    model, _, _ = BAD["hardswish_opset14"]
    messages = [f.message for f in lint_onnx(model).errors if f.rule == "unsupported-op"]
    assert messages and "newer than opset 13" in messages[0]


def test_external_data_rejected(tmp_path):
    path = save_with_external_data(clean_conv_model(), tmp_path / "ext.onnx")
    assert (tmp_path / "ext.onnx.data").is_file()
    report = lint_onnx(path)
    assert report.rules(ERROR) == {"external-data"}, report.format()
    assert "ext.onnx.data" in report.errors[0].message


def test_constant_node_counts_as_weights_but_computed_axes_do_not():
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("wv", TensorProto.FLOAT, [4, 3, 1, 1], rng.normal(size=12).astype(np.float32))
    ok = make_model([helper.make_node("Constant", [], ["w"], name="wconst", value=weight),
                     helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[1, 1])],
                    [f32("x", [1, 3, 4, 4])], [f32("y", [1, 4, 4, 4])])
    assert lint_onnx(ok).ok
    computed_axes = make_model(
        [helper.make_node("Add", ["a", "one"], ["axes"], name="axes_add"),
         helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq")],
        [f32("x", [3, 4])], [f32("y", [1, 3, 4])],
        [const("a", [-1], np.int64), const("one", [1], np.int64)])
    report = lint_onnx(computed_axes)
    assert {(f.rule, f.node) for f in report.errors} == {("constant-input", "unsq")}


def test_shape_op_is_a_warning_only():
    model = make_model([helper.make_node("Shape", ["x"], ["y"], name="shape")], [f32("x", [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.INT64, [4])])
    report = lint_onnx(model)
    assert report.ok
    assert report.rules(WARNING) == {"shape-subgraph"}


def test_supported_op_table_is_tensorrt_8_2():
    assert "Conv" in trt82_ops.SUPPORTED_OPS and "Resize" in trt82_ops.SUPPORTED_OPS
    for newer in ("HardSwish", "LayerNormalization", "Xor", "NonZero", "Mod", "RoiAlign", "GridSample", "Trilu"):
        assert newer not in trt82_ops.SUPPORTED_OPS
    experimental = {"ImageScaler", "ParametricSoftplus", "ScaledTanh", "Scatter", "Upsample"}
    for op in trt82_ops.SUPPORTED_OPS - experimental:
        onnx.defs.get_schema(op, 13)  # every listed op exists at opset <= 13


def test_unreadable_file(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x07not a model")
    with pytest.raises(LintError, match="garbage.onnx"):
        lint_onnx(bad)


# ------------------------------------------------------------------------------------------------------ CLI

def test_cli_clean_model_exit_0(tmp_path, capsys):
    path, _, _ = exported_default()
    out = tmp_path / "lint.json"
    assert main(["lint", str(path), "--json", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["errors"] == 0 and report["findings"] == []


def test_cli_bad_model_exit_1_lists_findings(tmp_path, capsys):
    model, _, _ = BAD["nonzero"]
    path = tmp_path / "nz.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "lint.json"
    assert main(["lint", str(path), "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "forbidden-op" in captured.out and "nz (NonZero)" in captured.out
    assert "error" in captured.err
    report = json.loads(out.read_text())
    assert report["ok"] is False
    assert {"rule": "forbidden-op", "node": "nz", "op": "NonZero"}.items() <= report["findings"][0].items()


def test_cli_strict_and_unreadable(tmp_path, capsys):
    model = make_model([helper.make_node("Shape", ["x"], ["y"], name="shape")], [f32("x", [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.INT64, [4])])
    path = tmp_path / "shape.onnx"
    onnx.save(model, str(path))
    assert main(["lint", str(path)]) == 0
    assert main(["lint", str(path), "--strict"]) == 1
    (tmp_path / "bad.onnx").write_bytes(b"\x07nope")
    assert main(["lint", str(tmp_path / "bad.onnx")]) == 2
    assert main(["lint", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx" in capsys.readouterr().err


def test_subgraphs_are_linted():
    then_graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["nz_out"], name="nz_inner")], "then", [],
                                   [helper.make_tensor_value_info("nz_out", TensorProto.INT64, [4, 5])])
    else_graph = helper.make_graph([helper.make_node("Constant", [], ["c_out"], name="c",
                                                     value=helper.make_tensor("v", TensorProto.INT64, [4, 5],
                                                                              [0] * 20))],
                                   "else", [], [helper.make_tensor_value_info("c_out", TensorProto.INT64, [4, 5])])
    model = make_model([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph,
                                         else_branch=else_graph)],
                       [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                        f32("x", [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.INT64, [4, 5])])
    report = lint_onnx(model)
    assert ("forbidden-op", "branch/then_branch/nz_inner") in {(f.rule, f.node) for f in report.errors}
    assert report.rules(WARNING) == {"dtype"}  # the BOOL condition
