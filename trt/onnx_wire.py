"""Read the node names and op types of an ONNX file without the onnx package (device side).

Device module: Python 3.6 syntax, standard library only; never imports onnx or torch (the Nano has no onnx
wheel for Python 3.6 worth installing). TensorRT 8.2's parser reports errors with a node *index* only
(``ParserError.node()``); this maps the index to the node's name and op type so errors name the node.

Protocol buffers wire format, the three messages needed:
``ModelProto.graph`` = field 7, ``GraphProto.node`` = field 1 (repeated), ``NodeProto.name`` = field 3,
``NodeProto.op_type`` = field 4.
"""

import collections

__all__ = ["OnnxNode", "onnx_nodes", "onnx_nodes_from_file"]

OnnxNode = collections.namedtuple("OnnxNode", ["index", "name", "op_type"])

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _read_varint(buf, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint at byte {}".format(pos))
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes at byte {}".format(pos))


def _fields(buf, start, end):
    """Yield (field_number, wire_type, value) over buf[start:end]; for length-delimited fields value is (lo, hi)."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _FIXED64:
            value, pos = None, pos + 8
        elif wire == _FIXED32:
            value, pos = None, pos + 4
        elif wire == _LENGTH:
            length, pos = _read_varint(buf, pos)
            value = (pos, pos + length)
            pos += length
        else:
            raise ValueError("unsupported protobuf wire type {} at byte {} (not an ONNX model?)".format(wire, pos))
        if pos > end:
            raise ValueError("protobuf field {} runs past the end of its message (truncated file?)".format(field))
        yield field, wire, value


def _text(buf, span):
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def onnx_nodes(data):
    """[OnnxNode(index, name, op_type)] of the main graph of a serialized ONNX ModelProto, in graph order."""
    buf = memoryview(data)
    graph = None
    for field, wire, value in _fields(buf, 0, len(buf)):
        if field == 7 and wire == _LENGTH:
            graph = value  # the last occurrence wins, as in protobuf parsing
    if graph is None:
        raise ValueError("no graph in this ONNX model")
    nodes = []
    for field, wire, value in _fields(buf, graph[0], graph[1]):
        if field != 1 or wire != _LENGTH:
            continue
        name = ""
        op_type = ""
        for node_field, node_wire, node_value in _fields(buf, value[0], value[1]):
            if node_wire != _LENGTH:
                continue
            if node_field == 3:
                name = _text(buf, node_value)
            elif node_field == 4:
                op_type = _text(buf, node_value)
        nodes.append(OnnxNode(len(nodes), name, op_type))
    return nodes


def onnx_nodes_from_file(path):
    with open(path, "rb") as handle:
        return onnx_nodes(handle.read())
