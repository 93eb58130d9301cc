"""Pre-processing of camera or file frames into the detector's input tensor, as the bundle manifest describes it.

Device module (runs on the Jetson Nano): Python 3.6 syntax; numpy at module level, cv2 imported lazily; never
imports torch or onnx.

The letterbox is the one used in training and evaluation (`compress/augment.py` ``letterbox``): scale
``s = min(S / w, S / h)``, the resized image centred at ``dx = (S - w s) / 2``, ``dy = (S - h s) / 2``, drawn by one
``cv2.warpAffine`` with matrix ``[[s, 0, dx], [0, s, dy]]`` (flag INTER_AREA when shrinking, INTER_LINEAR otherwise)
over a constant border of ``pad_value``. The two give identical pixels (tested on real images); any change here must
be made there too.

NOTE: ``cv2.warpAffine`` has no area interpolation: with the INTER_AREA flag it interpolates bilinearly, so shrinking
does not average (640x480 -> 320x240 gives exactly ``frame[::2, ::2]``, measured). Training sees the same pixels, so
there is no train/deploy mismatch, only aliasing; ``cv2.resize(INTER_AREA)`` + padding would also be ~5x faster, but
it must change in `compress/augment.py` first (and the model be retrained) to keep the two identical.

Manifest fields read (format v1): ``input.name``, ``input.shape`` ``[1, 3, S, S]``, ``input.layout`` ``NCHW``,
``input.dtype`` ``float32``, ``input.colour_order``, ``input.pixel_scale``, ``input.mean``, ``input.std``,
``input.letterbox.pad_value``, ``input.letterbox.align`` ``center``.
"""

import collections

import numpy as np

from runtime.lazy import require

__all__ = [
    "ManifestError", "manifest_field", "LetterboxMeta", "PreprocessConfig", "letterbox_params", "letterbox",
    "normalise", "normalise_reference", "preprocess", "letterbox_boxes", "unletterbox_boxes",
]

SUPPORTED_FORMAT_VERSION = 1

# Where a frame went inside the network input: ``x_input = x_original * scale + dx`` (same for y with dy), and the
# original frame size in pixels (for clipping boxes back).
LetterboxMeta = collections.namedtuple("LetterboxMeta", ["scale", "dx", "dy", "width", "height"])


class ManifestError(ValueError):
    """The bundle manifest lacks a field this code needs, or has a value it cannot honour."""


_MISSING = object()


def manifest_field(manifest, dotted, default=_MISSING):
    """``manifest["a"]["b"]`` for ``"a.b"``; a missing field raises `ManifestError` naming it (unless defaulted)."""
    value = manifest
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            if default is not _MISSING:
                return default
            raise ManifestError("manifest.json has no field '{}' (bundle format v{} requires it); re-export the "
                                "bundle".format(dotted, SUPPORTED_FORMAT_VERSION))
        value = value[key]
    return value


def check_format_version(manifest):
    version = manifest_field(manifest, "format_version", None)
    if version is not None and int(version) != SUPPORTED_FORMAT_VERSION:
        raise ManifestError("manifest.json has format_version {} but this runtime reads version {}; use the "
                            "matching checkout on the device".format(version, SUPPORTED_FORMAT_VERSION))


class PreprocessConfig(object):
    """What the network input expects: size, letterbox padding, colour order and normalisation."""

    def __init__(self, size, pad_value=114, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 pixel_scale=1.0 / 255.0, colour_order="RGB", input_name="images"):
        if colour_order not in ("RGB", "BGR"):
            raise ManifestError("input.colour_order must be 'RGB' or 'BGR'; got {!r}".format(colour_order))
        if len(mean) != 3 or len(std) != 3:
            raise ManifestError("input.mean and input.std need 3 values (one per channel); got {} and {}".format(
                list(mean), list(std)))
        if any(float(s) == 0.0 for s in std):
            raise ManifestError("input.std must not contain 0; got {}".format(list(std)))
        self.size = int(size)
        self.pad_value = int(pad_value)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.pixel_scale = np.float32(pixel_scale)
        self.colour_order = colour_order
        self.input_name = input_name
        # ``(x * pixel_scale - mean) / std`` for every uint8 value x, per network channel, in float32 with the same
        # operations in the same order as the direct formula (so the table gives bit-identical values); row c is
        # network channel c. Source channel of network channel c in a BGR frame: 2 - c for RGB, c for BGR.
        values = np.repeat(np.arange(256, dtype=np.float32)[None, :], 3, axis=0)
        values *= self.pixel_scale
        values -= self.mean[:, None]
        values /= self.std[:, None]
        self.lut = np.ascontiguousarray(values, dtype=np.float32)
        self.lut_rows = [np.ascontiguousarray(self.lut[c].reshape(1, 256)) for c in range(3)]  # cv2.LUT's shape
        self.source_channels = (2, 1, 0) if colour_order == "RGB" else (0, 1, 2)

    @property
    def input_shape(self):
        return (1, 3, self.size, self.size)

    @classmethod
    def from_manifest(cls, manifest):
        check_format_version(manifest)
        shape = [int(d) for d in manifest_field(manifest, "input.shape")]
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or shape[2] != shape[3]:
            raise ManifestError("input.shape must be [1, 3, S, S] (batch 1, square letterbox); got {}".format(shape))
        layout = manifest_field(manifest, "input.layout")
        if layout != "NCHW":
            raise ManifestError("input.layout must be 'NCHW'; got {!r}".format(layout))
        dtype = manifest_field(manifest, "input.dtype")
        if dtype != "float32":
            raise ManifestError("input.dtype must be 'float32' (FP16 is TensorRT's business); got {!r}".format(dtype))
        align = manifest_field(manifest, "input.letterbox.align")
        if align != "center":
            raise ManifestError("input.letterbox.align must be 'center'; got {!r}".format(align))
        return cls(
            size=shape[2],
            pad_value=manifest_field(manifest, "input.letterbox.pad_value"),
            mean=manifest_field(manifest, "input.mean"),
            std=manifest_field(manifest, "input.std"),
            pixel_scale=manifest_field(manifest, "input.pixel_scale"),
            colour_order=manifest_field(manifest, "input.colour_order"),
            input_name=manifest_field(manifest, "input.name"),
        )


def letterbox_params(width, height, size):
    """Scale and (dx, dy) that fit a width x height image centred into a size x size square.

    The same arithmetic, in the same order, as `compress/augment.py` (bit-identical floats).
    """
    scale = min(size / width, size / height)
    dx = (size - width * scale) / 2.0
    dy = (size - height * scale) / 2.0
    return scale, dx, dy


def _check_image(image):
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("expected a BGR uint8 image of shape (H, W, 3); got {}".format(
            "{} {}".format(getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__))))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("image is empty: shape {}".format(image.shape))


def letterbox(image, size, pad_value=114):
    """Letterbox a BGR uint8 image into ``size x size``; returns ``(image, LetterboxMeta)``."""
    cv2 = require("cv2", "runtime.preprocess.letterbox")
    _check_image(image)
    height, width = image.shape[:2]
    scale, dx, dy = letterbox_params(width, height, size)
    matrix = np.array([[scale, 0.0, dx], [0.0, scale, dy]], dtype=np.float64)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.warpAffine(image, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(pad_value,) * 3)
    return out, LetterboxMeta(scale, dx, dy, width, height)


def normalise_reference(image_bgr, config):
    """The direct formula of `normalise` (float32 arithmetic on the whole image); kept as the test reference."""
    _check_image(image_bgr)
    pixels = image_bgr[:, :, ::-1] if config.colour_order == "RGB" else image_bgr
    x = pixels.astype(np.float32)
    x *= config.pixel_scale
    x -= config.mean
    x /= config.std
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def normalise(image_bgr, config):
    """Letterboxed BGR uint8 (S, S, 3) -> float32 (1, 3, S, S): colour order, ``* pixel_scale``, ``- mean``, ``/ std``.

    Done by one table lookup per channel (``config.lut``, 256 float32 values computed with the formula's own float32
    operations), written straight into the NCHW output: bit-identical to `normalise_reference` (tested on every
    uint8 value) and 5-10x faster than it (the formula makes five full passes over a float32 image; on the Nano's
    Cortex-A57 that costs milliseconds per frame). With cv2 the lookup is ``cv2.split`` + ``cv2.LUT`` per plane,
    without it ``numpy.take``.

    NOTE: ``x * pixel_scale`` (the manifest's contract) may differ from the host's ``x / 255.0`` by one float32 ulp.
    """
    _check_image(image_bgr)
    try:
        import cv2
    except ImportError:
        cv2 = None
    return (_normalise_numpy if cv2 is None else _normalise_cv2)(image_bgr, config, cv2)


def _normalise_numpy(image_bgr, config, cv2=None):
    height, width = image_bgr.shape[:2]
    out = np.empty((1, 3, height, width), dtype=np.float32)
    for channel, source in enumerate(config.source_channels):
        # mode='clip' writes straight into ``out`` (the default 'raise' buffers it: 3x slower); a uint8 index is
        # always within the 256-entry table, so nothing is ever clipped.
        np.take(config.lut[channel], image_bgr[:, :, source], out=out[0, channel], mode="clip")
    return out


def _normalise_cv2(image_bgr, config, cv2):
    height, width = image_bgr.shape[:2]
    out = np.empty((1, 3, height, width), dtype=np.float32)
    planes = cv2.split(image_bgr)
    for channel, source in enumerate(config.source_channels):
        target = out[0, channel]
        result = cv2.LUT(planes[source], config.lut_rows[channel], dst=target)
        if not np.may_share_memory(result, target):  # a cv2 that did not write into dst: copy (never silently lost)
            target[...] = result
    return out


def preprocess(image_bgr, config):
    """One BGR uint8 frame -> (input tensor (1, 3, S, S) float32, LetterboxMeta)."""
    boxed, meta = letterbox(image_bgr, config.size, config.pad_value)
    return normalise(boxed, config), meta


def letterbox_boxes(boxes, meta):
    """Original-image boxes (N, 4) xyxy -> network-input pixels (float64)."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, [0, 2]] = out[:, [0, 2]] * meta.scale + meta.dx
    out[:, [1, 3]] = out[:, [1, 3]] * meta.scale + meta.dy
    return out


def unletterbox_boxes(boxes, meta, clip=True):
    """Network-input boxes (N, 4) xyxy -> original image pixels (float64), clipped to the image by default.

    Same arithmetic as `compress/inference.py` ``unletterbox`` (bit-identical).
    """
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    xs = (out[:, [0, 2]] - meta.dx) / meta.scale
    ys = (out[:, [1, 3]] - meta.dy) / meta.scale
    if clip:
        xs = xs.clip(0, meta.width)
        ys = ys.clip(0, meta.height)
    out[:, [0, 2]] = xs
    out[:, [1, 3]] = ys
    return out
