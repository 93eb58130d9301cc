"""The deploy bundle: the only thing that crosses from host to device (format v1), read and checked on the device.

A bundle is a folder with one ONNX file per variant and a ``manifest.json``::

    {"format": "jetson-compress-bundle", "format_version": 1, "created": ISO8601, "code_version": "...",
     "classes": ["person"],
     "input": {"name": "images", "shape": [1, 3, 320, 320], "layout": "NCHW", "dtype": "float32",
               "colour_order": "RGB", "pixel_scale": 1/255, "mean": [...], "std": [...],
               "letterbox": {"pad_value": 114, "align": "center"}},
     "outputs": {"boxes": {"name": "boxes", "shape": [1, N, 4], "format": "xyxy", "units": "input_pixels"},
                 "scores": {"name": "scores", "shape": [1, N, C], "activation": "sigmoid"}},
     "decoding": {"in_graph": true, "strides": [8, 16, 32]},
     "nms": {"score_threshold": 0.3, "iou_threshold": 0.6, "max_detections": 100, "pre_nms_topk": 1000,
             "class_wise": true},
     "variants": {"baseline": {"file": "baseline.onnx", "sha256": "...", "flops": int, "macs": int,
                               "params": int, "opset": 13, "bytes": int},
                  "pruned": {...}}}

Pre-processing is: letterbox (scale to fit, centred, pad with ``pad_value``) to the input H x W, colour order,
``x * pixel_scale``, ``(x - mean) / std``, layout. N = sum over strides of (H/s)(W/s); C = len(classes).

`load_manifest` reads the JSON; `validate_manifest` checks its structure; `validate_bundle` also checks every
variant file (exists, size, sha256; with ``check_onnx`` also its opset, input and output names and shapes, read
with `runtime.onnx_wire`'s protobuf reader, so no onnx package is needed); `load_bundle` returns the manifest or
raises `BundleError` naming the files at fault.

Device side: runs on the Jetson Nano's Python 3.6 with the stdlib only (json, hashlib, os, re; and
`runtime.onnx_wire`, stdlib only itself; ``read_onnx_signature`` is re-exported from it). It must not import torch,
onnx or numpy-heavy host code, and uses no syntax newer than 3.6 (no dataclasses, walrus, f-string "=",
``from __future__ import annotations``).
"""

import hashlib
import json
import os
import re

from runtime.onnx_wire import read_onnx_signature

__all__ = [
    "BundleError",
    "DEFAULT_NMS",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "expected_num_points",
    "load_bundle",
    "load_manifest",
    "read_onnx_signature",
    "sha256_file",
    "validate_bundle",
    "validate_manifest",
    "validate_nms",
    "variant_path",
]

FORMAT = "jetson-compress-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_OPSET = 13  # TensorRT 8.2 on the Nano

DEFAULT_NMS = {
    "score_threshold": 0.3,
    "iou_threshold": 0.6,
    "max_detections": 100,
    "pre_nms_topk": 1000,
    "class_wise": True,
}

_LAYOUTS = ("NCHW",)
_DTYPES = ("float32", "float16")
_COLOUR_ORDERS = ("RGB", "BGR")
_ALIGNS = ("center",)
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# ONNX TensorProto element types for the input dtype names above.
_ONNX_ELEM_TYPES = {"float32": 1, "float16": 10}


class BundleError(ValueError):
    """A bundle that cannot be used. ``problems`` lists every problem found; each one names its file."""

    def __init__(self, path, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.path = str(path)
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = "{}: {} problems:\n  {}".format(self.path, len(self.problems), "\n  ".join(self.problems))
        super(BundleError, self).__init__(message)


# ------------------------------------------------------------------------------------------------------- reading

def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(bundle_dir):
    """Read ``bundle_dir/manifest.json`` as a dict (structure not validated: see `validate_manifest`)."""
    path = os.path.join(str(bundle_dir), MANIFEST_NAME)
    if not os.path.isdir(str(bundle_dir)):
        raise BundleError(path, "{}: bundle folder not found".format(bundle_dir))
    if not os.path.isfile(path):
        raise BundleError(path, "{}: manifest not found (is {} a deploy bundle?)".format(path, bundle_dir))
    try:
        with open(path, "rb") as fh:
            manifest = json.loads(fh.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(path, "{}: not valid JSON ({})".format(path, exc))
    if not isinstance(manifest, dict):
        raise BundleError(path, "{}: the manifest must be a JSON object".format(path))
    return manifest


def variant_path(bundle_dir, manifest, name):
    """Path of the ONNX file of variant ``name``."""
    variants = manifest.get("variants") or {}
    if name not in variants:
        raise BundleError(os.path.join(str(bundle_dir), MANIFEST_NAME),
                          "{}: no variant {!r} (has {})".format(os.path.join(str(bundle_dir), MANIFEST_NAME), name,
                                                                 sorted(variants)))
    return os.path.join(str(bundle_dir), variants[name]["file"])


def expected_num_points(height, width, strides):
    """Grid points of the detector's heads: sum over strides of ceil(H/s) * ceil(W/s)."""
    return sum(((height + s - 1) // s) * ((width + s - 1) // s) for s in strides)


# ----------------------------------------------------------------------------------------------------- validation

class _Checker(object):
    """Collects problems while walking the manifest; every problem is prefixed with the manifest path."""

    def __init__(self, where):
        self.where = where
        self.problems = []

    def add(self, message):
        self.problems.append("{}: {}".format(self.where, message))

    def get(self, obj, key, kind, path):
        """obj[key] checked against ``kind`` (a type name below); None (and a problem) when missing or wrong."""
        if not isinstance(obj, dict):
            return None
        if key not in obj:
            self.add("missing key '{}'".format(path))
            return None
        value = obj[key]
        if not _is_kind(value, kind):
            self.add("'{}' must be {}, got {!r}".format(path, _KIND_NAMES[kind], _short(value)))
            return None
        return value


_KIND_NAMES = {
    "str": "a string",
    "int": "an integer",
    "posint": "a positive integer",
    "nonnegint": "a non-negative integer",
    "number": "a number",
    "bool": "true or false",
    "dict": "an object",
    "list": "a list",
}


def _is_kind(value, kind):
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return is_int
    if kind == "posint":
        return is_int and value > 0
    if kind == "nonnegint":
        return is_int and value >= 0
    if kind == "number":
        return (is_int or isinstance(value, float)) and value == value and abs(value) != float("inf")
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    raise ValueError("unknown kind " + kind)


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_numbers(c, values, path, count, positive=False):
    if values is None:
        return None
    if len(values) != count or not all(_is_kind(v, "number") for v in values):
        c.add("'{}' must be {} numbers, got {}".format(path, count, _short(values)))
        return None
    if positive and not all(v > 0 for v in values):
        c.add("'{}' must be positive, got {}".format(path, values))
        return None
    return values


def _check_nms(c, nms):
    score = c.get(nms, "score_threshold", "number", "nms.score_threshold")
    if score is not None and not 0.0 <= score <= 1.0:
        c.add("nms.score_threshold must be in [0, 1], got {}".format(score))
    iou = c.get(nms, "iou_threshold", "number", "nms.iou_threshold")
    if iou is not None and not 0.0 < iou <= 1.0:
        c.add("nms.iou_threshold must be in (0, 1], got {}".format(iou))
    max_det = c.get(nms, "max_detections", "posint", "nms.max_detections")
    topk = c.get(nms, "pre_nms_topk", "posint", "nms.pre_nms_topk")
    if max_det is not None and topk is not None and topk < max_det:
        c.add("nms.pre_nms_topk ({}) is smaller than nms.max_detections ({})".format(topk, max_det))
    c.get(nms, "class_wise", "bool", "nms.class_wise")


def validate_nms(nms, where=MANIFEST_NAME):
    """Problems with an ``nms`` section (thresholds in range, integer limits, class_wise a bool)."""
    c = _Checker(where)
    if not isinstance(nms, dict):
        c.add("'nms' must be an object")
    else:
        _check_nms(c, nms)
    return c.problems


def validate_manifest(manifest, where=MANIFEST_NAME):
    """Problems with the manifest's structure and values (empty list: fine). Files are not looked at."""
    c = _Checker(where)
    if not isinstance(manifest, dict):
        c.add("the manifest must be a JSON object")
        return c.problems
    fmt = c.get(manifest, "format", "str", "format")
    if fmt is not None and fmt != FORMAT:
        c.add("format is {!r}, not {!r}: not a jetson-compress deploy bundle".format(fmt, FORMAT))
    version = c.get(manifest, "format_version", "int", "format_version")
    if version is not None and version > FORMAT_VERSION:
        c.add("format_version {} is newer than this code reads ({}): update jetson-compress on the device".format(
            version, FORMAT_VERSION))
        return c.problems  # a newer format may differ in everything below
    if version is not None and version < 1:
        c.add("format_version {} is not valid".format(version))
    c.get(manifest, "created", "str", "created")
    c.get(manifest, "code_version", "str", "code_version")

    classes = c.get(manifest, "classes", "list", "classes")
    if classes is not None:
        if not classes or not all(isinstance(x, str) and x for x in classes):
            c.add("'classes' must be a non-empty list of class names, got {}".format(_short(classes)))
            classes = None
        elif len(set(classes)) != len(classes):
            c.add("'classes' has duplicates: {}".format(classes))

    height = width = None
    inp = c.get(manifest, "input", "dict", "input")
    if inp is not None:
        c.get(inp, "name", "str", "input.name")
        shape = c.get(inp, "shape", "list", "input.shape")
        layout = c.get(inp, "layout", "str", "input.layout")
        if layout is not None and layout not in _LAYOUTS:
            c.add("input.layout {!r} is not supported (one of {})".format(layout, list(_LAYOUTS)))
        if shape is not None:
            if len(shape) != 4 or not all(_is_kind(d, "posint") for d in shape):
                c.add("input.shape must be 4 positive integers (N, C, H, W), got {}".format(_short(shape)))
            elif shape[0] != 1 or shape[1] != 3:
                c.add("input.shape {} must be [1, 3, H, W] (batch 1, 3 colour channels)".format(shape))
            else:
                height, width = shape[2], shape[3]
        dtype = c.get(inp, "dtype", "str", "input.dtype")
        if dtype is not None and dtype not in _DTYPES:
            c.add("input.dtype {!r} is not one of {}".format(dtype, list(_DTYPES)))
        order = c.get(inp, "colour_order", "str", "input.colour_order")
        if order is not None and order not in _COLOUR_ORDERS:
            c.add("input.colour_order {!r} is not one of {}".format(order, list(_COLOUR_ORDERS)))
        scale = c.get(inp, "pixel_scale", "number", "input.pixel_scale")
        if scale is not None and scale <= 0:
            c.add("input.pixel_scale must be positive, got {}".format(scale))
        _check_numbers(c, c.get(inp, "mean", "list", "input.mean"), "input.mean", 3)
        _check_numbers(c, c.get(inp, "std", "list", "input.std"), "input.std", 3, positive=True)
        letterbox = c.get(inp, "letterbox", "dict", "input.letterbox")
        if letterbox is not None:
            pad = c.get(letterbox, "pad_value", "int", "input.letterbox.pad_value")
            if pad is not None and not 0 <= pad <= 255:
                c.add("input.letterbox.pad_value must be in 0..255, got {}".format(pad))
            align = c.get(letterbox, "align", "str", "input.letterbox.align")
            if align is not None and align not in _ALIGNS:
                c.add("input.letterbox.align {!r} is not one of {}".format(align, list(_ALIGNS)))

    strides = None
    decoding = c.get(manifest, "decoding", "dict", "decoding")
    if decoding is not None:
        c.get(decoding, "in_graph", "bool", "decoding.in_graph")
        strides = c.get(decoding, "strides", "list", "decoding.strides")
        if strides is not None and (not strides or not all(_is_kind(s, "posint") for s in strides)):
            c.add("decoding.strides must be a non-empty list of positive integers, got {}".format(_short(strides)))
            strides = None
        if strides is not None and height is not None:
            if height % max(strides) or width % max(strides):
                c.add("input H x W {} x {} is not a multiple of the largest stride {}".format(height, width,
                                                                                           max(strides)))

    outputs = c.get(manifest, "outputs", "dict", "outputs")
    points = {}
    if outputs is not None:
        boxes = c.get(outputs, "boxes", "dict", "outputs.boxes")
        scores = c.get(outputs, "scores", "dict", "outputs.scores")
        for key, out, last in (("boxes", boxes, 4), ("scores", scores, len(classes) if classes else None)):
            if out is None:
                continue
            c.get(out, "name", "str", "outputs.{}.name".format(key))
            shape = c.get(out, "shape", "list", "outputs.{}.shape".format(key))
            if shape is None:
                continue
            if len(shape) != 3 or not all(_is_kind(d, "posint") for d in shape) or shape[0] != 1:
                c.add("outputs.{}.shape must be [1, N, {}], got {}".format(key, last or "C", _short(shape)))
                continue
            if last is not None and shape[2] != last:
                what = "4 box coordinates" if key == "boxes" else "{} classes".format(last)
                c.add("outputs.{}.shape {} does not end in {} ({})".format(key, shape, last, what))
            points[key] = shape[1]
        if boxes is not None:
            fmt_ = c.get(boxes, "format", "str", "outputs.boxes.format")
            if fmt_ is not None and fmt_ != "xyxy":
                c.add("outputs.boxes.format {!r} is not supported (xyxy)".format(fmt_))
            units = c.get(boxes, "units", "str", "outputs.boxes.units")
            if units is not None and units != "input_pixels":
                c.add("outputs.boxes.units {!r} is not supported (input_pixels)".format(units))
        if scores is not None:
            act = c.get(scores, "activation", "str", "outputs.scores.activation")
            if act is not None and act != "sigmoid":
                c.add("outputs.scores.activation {!r} is not supported (sigmoid)".format(act))
        if boxes is not None and scores is not None and boxes.get("name") == scores.get("name"):
            c.add("outputs.boxes.name and outputs.scores.name are the same")
        if len(set(points.values())) > 1:
            c.add("outputs disagree on the number of points N: boxes {}, scores {}".format(points.get("boxes"),
                                                                                       points.get("scores")))
        elif points and strides is not None and height is not None:
            expected = expected_num_points(height, width, strides)
            n = list(points.values())[0]
            if n != expected:
                c.add("outputs have N = {} points, but input {} x {} with strides {} gives {}".format(
                    n, height, width, strides, expected))

    nms = c.get(manifest, "nms", "dict", "nms")
    if nms is not None:
        _check_nms(c, nms)

    variants = c.get(manifest, "variants", "dict", "variants")
    if variants is not None:
        if not variants:
            c.add("'variants' is empty: a bundle needs at least one model")
        files = {}
        for name in sorted(variants):
            entry = variants[name]
            base = "variants.{}".format(name)
            if not _VARIANT_NAME.match(name):
                c.add("variant name {!r} must be letters, digits, '_', '-', '.'".format(name))
            if not isinstance(entry, dict):
                c.add("'{}' must be an object".format(base))
                continue
            filename = c.get(entry, "file", "str", base + ".file")
            if filename is not None:
                if (not filename or filename != os.path.basename(filename) or filename.startswith(".")
                        or not filename.endswith(".onnx")):
                    c.add("{}.file {!r} must be a plain .onnx file name inside the bundle".format(base, filename))
                elif filename in files:
                    c.add("{}.file {!r} is also the file of variant {!r}".format(base, filename, files[filename]))
                files.setdefault(filename, name)
            digest = c.get(entry, "sha256", "str", base + ".sha256")
            if digest is not None and not _SHA256.match(digest):
                c.add("{}.sha256 must be 64 lowercase hex digits, got {!r}".format(base, _short(digest)))
            flops = c.get(entry, "flops", "nonnegint", base + ".flops")
            macs = c.get(entry, "macs", "nonnegint", base + ".macs")
            if flops is not None and macs is not None and flops != 2 * macs:
                c.add("{}.flops ({}) must be 2 x macs ({})".format(base, flops, macs))
            c.get(entry, "params", "nonnegint", base + ".params")
            opset = c.get(entry, "opset", "posint", base + ".opset")
            if opset is not None and opset > MAX_OPSET:
                c.add("{}.opset {} > {}: TensorRT 8.2 cannot parse it".format(base, opset, MAX_OPSET))
            c.get(entry, "bytes", "posint", base + ".bytes")
    return c.problems


def validate_bundle(bundle_dir, check_onnx=False):
    """Every problem with the bundle in ``bundle_dir`` (empty list: usable). Each problem names its file.

    Checks the manifest (`validate_manifest`), then each variant's file: present, size = ``bytes``, sha256 matches.
    With ``check_onnx`` it also reads each ONNX file's opset and its input/output names and shapes and compares
    them with the manifest (no onnx package needed).
    """
    bundle_dir = str(bundle_dir)
    manifest_path = os.path.join(bundle_dir, MANIFEST_NAME)
    try:
        manifest = load_manifest(bundle_dir)
    except BundleError as exc:
        return list(exc.problems)
    problems = validate_manifest(manifest, manifest_path)
    variants = manifest.get("variants")
    if not isinstance(variants, dict) or (isinstance(manifest.get("format_version"), int)
                                          and manifest["format_version"] > FORMAT_VERSION):
        return problems
    for name in sorted(variants):
        entry = variants[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
            continue
        path = os.path.join(bundle_dir, entry["file"])
        if entry["file"] != os.path.basename(entry["file"]):
            continue  # reported by validate_manifest; never follow a path out of the bundle
        if not os.path.isfile(path):
            problems.append("{}: file of variant {!r} is missing".format(path, name))
            continue
        size = os.path.getsize(path)
        if isinstance(entry.get("bytes"), int) and size != entry["bytes"]:
            problems.append("{}: {} bytes, the manifest says {} (truncated or replaced file?)".format(
                path, size, entry["bytes"]))
        if isinstance(entry.get("sha256"), str):
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                problems.append("{}: sha256 {} does not match the manifest's {} (corrupted or modified file; "
                                "re-copy the bundle)".format(path, actual, entry["sha256"]))
                continue
        if check_onnx:
            problems.extend(_check_onnx_signature(path, manifest, entry))
    return problems


def load_bundle(bundle_dir, check_onnx=False):
    """The manifest of a valid bundle; `BundleError` listing every problem (each naming its file) otherwise."""
    problems = validate_bundle(bundle_dir, check_onnx=check_onnx)
    if problems:
        raise BundleError(os.path.join(str(bundle_dir), MANIFEST_NAME), problems)
    return load_manifest(bundle_dir)


def _check_onnx_signature(path, manifest, entry):
    problems = []
    try:
        sig = read_onnx_signature(path)
    except ValueError as exc:
        return ["{}: not a readable ONNX model ({})".format(path, exc)]
    if isinstance(entry.get("opset"), int) and sig["opset"] != entry["opset"]:
        problems.append("{}: ONNX opset {}, the manifest says {}".format(path, sig["opset"], entry["opset"]))
    expected_inputs = []
    inp = manifest.get("input") or {}
    if isinstance(inp, dict) and "name" in inp:
        expected_inputs.append((inp.get("name"), inp.get("shape"), _ONNX_ELEM_TYPES.get(inp.get("dtype"))))
    expected_outputs = []
    outputs = manifest.get("outputs") or {}
    for key in ("boxes", "scores"):
        out = outputs.get(key) if isinstance(outputs, dict) else None
        if isinstance(out, dict):
            expected_outputs.append((out.get("name"), out.get("shape"), None))
    for kind, expected, actual in (("input", expected_inputs, sig["inputs"]),
                                   ("output", expected_outputs, sig["outputs"])):
        by_name = dict((name, (elem, dims)) for name, elem, dims in actual)
        want_names = [e[0] for e in expected]
        if sorted(by_name) != sorted(want_names):
            problems.append("{}: ONNX {}s are {}, the manifest says {}".format(path, kind, sorted(by_name),
                                                                            sorted(want_names)))
            continue
        for name, shape, elem in expected:
            got_elem, got_dims = by_name[name]
            if shape is not None and list(got_dims) != list(shape):
                problems.append("{}: {} {!r} has shape {} in the ONNX file, the manifest says {}".format(
                    path, kind, name, got_dims, shape))
            if elem is not None and got_elem != elem:
                problems.append("{}: {} {!r} has ONNX element type {}, the manifest's dtype is {}".format(
                    path, kind, name, got_elem, inp.get("dtype")))
    return problems
