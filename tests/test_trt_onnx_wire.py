"""The dependency-free ONNX node reader used to name nodes in TensorRT 8.2 parser errors agrees with onnx."""

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
import numpy as np

from trt.onnx_wire import onnx_nodes, onnx_nodes_from_file


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
