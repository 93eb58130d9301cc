"""Read what the device needs of an ONNX file without the onnx package: the one protobuf reader of the device side.

Device module: Python 3.6 syntax, standard library only; never imports onnx or torch (the Nano has no onnx wheel for
Python 3.6 worth installing). Two readers stand on it:

- `read_onnx_signature` — the opset and the graph's inputs and outputs (name, element type, dims), which
  `runtime.bundle.validate_bundle` checks against the bundle's manifest and `jetson.selftest` reports;
- `onnx_nodes` — the graph's node names and op types in graph order: TensorRT 8.2's parser reports errors with a node
  *index* only (``ParserError.node()``), and `trt.builder` maps the index to the node's name and op type with it.

Protocol buffers wire format; the field numbers from onnx.proto3: ModelProto: 7 graph, 8 opset_import;
OperatorSetIdProto: 1 domain, 2 version; GraphProto: 1 node (repeated), 5 initializer, 11 input, 12 output;
NodeProto: 3 name, 4 op_type; ValueInfoProto: 1 name, 2 type; TypeProto: 1 tensor_type; Tensor: 1 elem_type,
2 shape; TensorShapeProto: 1 dim; Dimension: 1 dim_value, 2 dim_param; TensorProto: 8 name.
"""

import collections

__all__ = ["OnnxNode", "onnx_nodes", "onnx_nodes_from_file", "read_onnx_signature"]

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


def _fields(buf):
    """Yield (field number, wire type, value) for each field of one message held in ``buf`` (a memoryview).

    A varint's value is its int; a length-delimited field's value is the memoryview slice of its bytes (read a nested
    message by calling `_fields` on it); fixed-width values are their raw slices.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
            continue
        if wire == _LENGTH:
            length, pos = _read_varint(buf, pos)
        elif wire == _FIXED64:
            length = 8
        elif wire == _FIXED32:
            length = 4
        else:
            raise ValueError("unsupported protobuf wire type {} at byte {} (not an ONNX model?)".format(wire, pos))
        if pos + length > end:
            raise ValueError("protobuf field {} runs past the end of its message (truncated file?)".format(number))
        yield number, wire, buf[pos:pos + length]
        pos += length


def _text(value):
    return bytes(value).decode("utf-8", "replace")


def _model_parts(data):
    """(graph message, default-domain opset or None) of a serialized ModelProto; ValueError without a graph."""
    graph = None
    opset = None
    for number, wire, value in _fields(memoryview(data)):
        if number == 7 and wire == _LENGTH:
            graph = value  # the last occurrence wins, as in protobuf parsing
        elif number == 8 and wire == _LENGTH:
            domain = ""
            version = None
            for onum, owire, oval in _fields(value):
                if onum == 1 and owire == _LENGTH:
                    domain = _text(oval)
                elif onum == 2 and owire == _VARINT:
                    version = oval
            if domain in ("", "ai.onnx") and version is not None:
                opset = version
    if graph is None:
        raise ValueError("no graph in this ONNX model")
    return graph, opset


def onnx_nodes(data):
    """[OnnxNode(index, name, op_type)] of the main graph of a serialized ONNX ModelProto, in graph order."""
    graph, _ = _model_parts(data)
    nodes = []
    for number, wire, value in _fields(graph):
        if number != 1 or wire != _LENGTH:
            continue
        name = ""
        op_type = ""
        for node_number, node_wire, node_value in _fields(value):
            if node_wire != _LENGTH:
                continue
            if node_number == 3:
                name = _text(node_value)
            elif node_number == 4:
                op_type = _text(node_value)
        nodes.append(OnnxNode(len(nodes), name, op_type))
    return nodes


def onnx_nodes_from_file(path):
    with open(path, "rb") as handle:
        return onnx_nodes(handle.read())


def _value_info(buf):
    name = ""
    elem = 0
    dims = []
    for number, wire, value in _fields(buf):
        if number == 1 and wire == _LENGTH:
            name = bytes(value).decode("utf-8")
        elif number == 2 and wire == _LENGTH:
            for tnum, twire, tval in _fields(value):
                if tnum == 1 and twire == _LENGTH:  # tensor_type
                    for snum, swire, sval in _fields(tval):
                        if snum == 1 and swire == _VARINT:
                            elem = sval
                        elif snum == 2 and swire == _LENGTH:  # shape
                            for dnum, dwire, dval in _fields(sval):
                                if dnum == 1 and dwire == _LENGTH:
                                    dims.append(_dimension(dval))
    return name, elem, dims


def _dimension(buf):
    dim = None
    for number, wire, value in _fields(buf):
        if number == 1 and wire == _VARINT:
            dim = value if value < (1 << 63) else value - (1 << 64)
        elif number == 2 and wire == _LENGTH:
            dim = bytes(value).decode("utf-8")
    return dim


def read_onnx_signature(path):
    """{"opset": default-domain opset, "inputs": [(name, elem_type, dims)], "outputs": [...]} of an ONNX file.

    Graph inputs that are initializers (old exporters list weights as inputs) are left out. Raises ValueError when
    the file is not a parseable ONNX model.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    graph, opset = _model_parts(data)
    if opset is None:
        raise ValueError("no default-domain opset in the file")
    inputs = []
    outputs = []
    initializers = set()
    for number, wire, value in _fields(graph):
        if number == 11 and wire == _LENGTH:
            inputs.append(_value_info(value))
        elif number == 12 and wire == _LENGTH:
            outputs.append(_value_info(value))
        elif number == 5 and wire == _LENGTH:
            for tnum, twire, tval in _fields(value):
                if tnum == 8 and twire == _LENGTH:
                    initializers.add(bytes(tval).decode("utf-8"))
    inputs = [i for i in inputs if i[0] not in initializers]
    return {"opset": opset, "inputs": inputs, "outputs": outputs}
