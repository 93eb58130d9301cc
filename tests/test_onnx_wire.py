"""The device side's dependency-free ONNX reader (node table for TensorRT 8.2 parser errors, signature for bundle
checks) agrees with onnx."""

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
import numpy as np

from runtime.onnx_wire import onnx_nodes, onnx_nodes_from_file, read_onnx_signature


def test_node_table_matches_onnx(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="backbone.conv0"),
             helper.make_node("Relu", ["c"], ["r"]),  # unnamed
             helper.make_node("Resize", ["r", "", "scales"], ["u"], name="neck/upsample_\u00e9", mode="nearest")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, 4, 16, 16])],
        initializer=[numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
                     numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="test")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    table = onnx_nodes_from_file(str(path))
    assert [(n.index, n.name, n.op_type) for n in table] == [
        (i, node.name, node.op_type) for i, node in enumerate(onnx.load(str(path)).graph.node)]
    assert table[2].name == "neck/upsample_\u00e9" and table[1].name == ""


def test_garbage_is_refused():
    with pytest.raises(ValueError):
        onnx_nodes(b"\x0f\xff\xff")
    with pytest.raises(ValueError, match="no graph"):
        onnx_nodes(b"")


def test_signature_matches_onnx(tmp_path):
    """Opset of the default domain only, initializers listed as inputs left out, symbolic and negative dims kept."""
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, 4, 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1])],  # old exporters list weights here
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 4, -1])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("com.example", 3),
                                                    helper.make_opsetid("", 17)])
    path = tmp_path / "sig.onnx"
    onnx.save(model, str(path))
    assert read_onnx_signature(str(path)) == {
        "opset": 17, "inputs": [("x", TensorProto.FLOAT16, ["batch", 3, 4, 4])],
        "outputs": [("y", TensorProto.FLOAT, ["batch", 2, 4, -1])]}
    assert [tuple(n) for n in onnx_nodes_from_file(str(path))] == [(0, "conv", "Conv")]
    data = path.read_bytes()
    for cut in (1, len(data) // 2, len(data) - 1):  # a truncated file is refused, never read as a smaller model
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        with pytest.raises(ValueError):
            read_onnx_signature(str(tmp_path / "cut.onnx"))
    only_custom = helper.make_model(graph, opset_imports=[helper.make_opsetid("com.example", 3)])
    onnx.save(only_custom, str(path))
    with pytest.raises(ValueError, match="no default-domain opset"):
        read_onnx_signature(str(path))
