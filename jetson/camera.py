"""One camera abstraction over CSI (GStreamer ``nvarguscamerasrc``), USB (V4L2), RTSP and video files.

    camera = Camera(parse_source("csi://0"), CameraOptions(csi_width=1280, csi_height=720, csi_fps=30))
    with camera:
        while True:
            frame = camera.read()      # BGR uint8 (H, W, 3); None at the end of a file (unless looping)

Sources (`parse_source`):

| text | kind | opened with |
|---|---|---|
| ``csi://0`` | csi | GStreamer: ``nvarguscamerasrc sensor-id=0`` -> NVMM NV12 -> ``nvvidconv`` -> BGRx -> ``videoconvert`` -> BGR ``appsink drop=1`` |
| ``/dev/video1``, ``1`` | usb | ``cv2.VideoCapture(index, cv2.CAP_V4L2)`` |
| ``rtsp://...`` | rtsp | GStreamer ``rtspsrc`` (hardware ``nvv4l2decoder`` on a Jetson) when cv2 has GStreamer, else cv2's FFMPEG |
| ``http(s)://...`` | url | cv2's FFMPEG backend |
| anything else | file | ``cv2.VideoCapture(path)``; ``loop`` reopens it at the end |

Live sources (csi, usb, rtsp, url) that stop delivering frames are reopened up to ``retries`` times with
exponential backoff (``retry_delay`` doubling up to ``max_retry_delay``); after that `read` raises
`CameraLostError`. A source that cannot be opened at all raises `SourceOpenError` naming it.

Device module: Python 3.6 syntax; cv2 imported lazily (inside functions); never imports torch or onnx. The opener
is injectable (``Camera(spec, options, opener=...)``) so that the reconnect logic is tested without a camera.
"""

import collections
import os
import re
import time

from runtime.lazy import require

__all__ = [
    "SourceSpec", "CameraOptions", "SourceOpenError", "CameraLostError", "parse_source", "cv2_video_backends",
    "cv2_has_gstreamer", "csi_pipeline", "rtsp_pipeline", "open_capture", "Camera", "add_camera_arguments",
    "options_from_args",
]

LIVE_KINDS = ("csi", "usb", "rtsp", "url")

# kind: csi | usb | rtsp | url | file; location: sensor id (csi), device index (usb), URL, or file path; text: as given.
SourceSpec = collections.namedtuple("SourceSpec", ["kind", "location", "text"])


class SourceOpenError(IOError):
    """The source cannot be opened (missing file, no such camera, no GStreamer for CSI); the message names it."""


class CameraLostError(IOError):
    """A live source stopped delivering frames and did not come back after every reconnection attempt."""


class CameraOptions(object):
    """How to open sources: CSI mode, USB mode, RTSP backend, file looping, reconnection."""

    def __init__(self, csi_width=1280, csi_height=720, csi_fps=30, csi_flip=0, usb_width=None, usb_height=None,
                 usb_fps=None, rtsp_backend="auto", rtsp_latency_ms=200, rtsp_codec="h264", loop=False, retries=5,
                 retry_delay=0.5, max_retry_delay=8.0):
        if rtsp_backend not in ("auto", "gstreamer", "ffmpeg"):
            raise ValueError("rtsp_backend must be auto, gstreamer or ffmpeg; got {!r}".format(rtsp_backend))
        if rtsp_codec not in ("h264", "h265"):
            raise ValueError("rtsp_codec must be h264 or h265; got {!r}".format(rtsp_codec))
        if int(retries) < 0 or float(retry_delay) < 0:
            raise ValueError("retries and retry_delay must be >= 0")
        self.csi_width = int(csi_width)
        self.csi_height = int(csi_height)
        self.csi_fps = int(csi_fps)
        self.csi_flip = int(csi_flip)
        self.usb_width = usb_width
        self.usb_height = usb_height
        self.usb_fps = usb_fps
        self.rtsp_backend = rtsp_backend
        self.rtsp_latency_ms = int(rtsp_latency_ms)
        self.rtsp_codec = rtsp_codec
        self.loop = bool(loop)
        self.retries = int(retries)
        self.retry_delay = float(retry_delay)
        self.max_retry_delay = float(max_retry_delay)


def parse_source(text):
    """``csi://N``, ``/dev/videoN``, ``N``, ``rtsp://...``, ``http(s)://...`` or a file path -> `SourceSpec`."""
    text = str(text).strip()
    if not text:
        raise ValueError("empty --source: give csi://0, /dev/video0, 0, rtsp://... or a video file")
    lower = text.lower()
    if lower.startswith("csi://"):
        rest = text[len("csi://"):]
        if not rest.isdigit():
            raise ValueError("--source {}: a CSI camera is csi://SENSOR_ID, e.g. csi://0".format(text))
        return SourceSpec("csi", int(rest), text)
    if text.isdigit():
        return SourceSpec("usb", int(text), text)
    match = re.match(r"^/dev/video(\d+)$", text)
    if match:
        return SourceSpec("usb", int(match.group(1)), text)
    if lower.startswith(("rtsp://", "rtsps://")):
        return SourceSpec("rtsp", text, text)
    if lower.startswith(("http://", "https://")):
        return SourceSpec("url", text, text)
    return SourceSpec("file", text, text)


def cv2_video_backends(build_information):
    """``cv2.getBuildInformation()`` -> {"GStreamer": bool, "FFMPEG": bool, "V4L/V4L2": bool, ...} (Video I/O).

    Two layouts exist: ``GStreamer: YES (1.14.5)`` on one line (OpenCV 4.x, JetPack's 4.1.1), and an empty value
    followed by indented components ``base: YES (1.14.5)``, ``video: ...`` (OpenCV 3.x); a backend is available
    when its own value, or for the second layout any of its components, says YES. Components are not backends.
    """
    backends = collections.OrderedDict()
    in_video = False
    current = None
    for line in build_information.splitlines():
        stripped = line.strip()
        if stripped.startswith("Video I/O:"):
            in_video = True
            continue
        if not in_video or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if indent < 4:  # the next top-level section
            break
        match = re.match(r"^([^:]+):\s*(.*)$", stripped)
        if not match:
            continue
        name, value = match.group(1).strip(), match.group(2).strip()
        if current is not None and indent > current[1]:  # a component of the current backend
            if not value and not backends[current[0]]:
                continue
            if value.upper().startswith("YES") and current[2]:
                backends[current[0]] = True
            continue
        backends[name] = value.upper().startswith("YES")
        current = (name, indent, not value)  # components count only when the backend's own value is empty
    return backends


def cv2_has_gstreamer(cv2=None):
    cv2 = cv2 or require("cv2", "cv2_has_gstreamer")
    return bool(cv2_video_backends(cv2.getBuildInformation()).get("GStreamer"))


def csi_pipeline(sensor_id=0, width=1280, height=720, fps=30, flip=0, out_width=None, out_height=None):
    """GStreamer pipeline of a Jetson CSI camera (Argus) delivering BGR frames to OpenCV's appsink.

    ``nvvidconv`` converts NVMM NV12 to system-memory BGRx (and scales or flips), ``videoconvert`` drops the x;
    ``appsink drop=1 max-buffers=1`` keeps only the newest frame, so a slow detector never falls behind the camera.
    """
    out_width = out_width or width
    out_height = out_height or height
    return ("nvarguscamerasrc sensor-id={sid} ! "
            "video/x-raw(memory:NVMM), width=(int){w}, height=(int){h}, format=(string)NV12, "
            "framerate=(fraction){fps}/1 ! "
            "nvvidconv flip-method={flip} ! "
            "video/x-raw, width=(int){ow}, height=(int){oh}, format=(string)BGRx ! "
            "videoconvert ! video/x-raw, format=(string)BGR ! "
            "appsink drop=1 max-buffers=1").format(sid=int(sensor_id), w=int(width), h=int(height), fps=int(fps),
                                                   flip=int(flip), ow=int(out_width), oh=int(out_height))


def rtsp_pipeline(url, latency_ms=200, codec="h264", jetson=True):
    """GStreamer RTSP pipeline: hardware decoding (``nvv4l2decoder``) on a Jetson, ``decodebin`` elsewhere."""
    if jetson:
        decode = "rtp{c}depay ! {c}parse ! nvv4l2decoder ! nvvidconv ! video/x-raw, format=(string)BGRx ! ".format(
            c=codec)
    else:
        decode = "decodebin ! "
    return ("rtspsrc location={url} latency={lat} ! {decode}videoconvert ! video/x-raw, format=(string)BGR ! "
            "appsink drop=1 max-buffers=1 sync=false").format(url=url, lat=int(latency_ms), decode=decode)


def open_capture(spec, options):
    """A ``cv2.VideoCapture`` for ``spec`` (not checked for isOpened) and a one-line description of how."""
    cv2 = require("cv2", "jetson.camera")
    if spec.kind == "csi":
        if not cv2_has_gstreamer(cv2):
            raise SourceOpenError(
                "{}: CSI cameras need OpenCV built with GStreamer, and this cv2 ({}) has none; on the Nano use "
                "JetPack's OpenCV (pip's opencv-python lacks GStreamer: pip3 uninstall opencv-python)".format(
                    spec.text, getattr(cv2, "__file__", "?")))
        pipeline = csi_pipeline(spec.location, options.csi_width, options.csi_height, options.csi_fps,
                                options.csi_flip)
        return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER), "GStreamer: " + pipeline
    if spec.kind == "usb":
        capture = cv2.VideoCapture(spec.location, cv2.CAP_V4L2) if hasattr(cv2, "CAP_V4L2") else \
            cv2.VideoCapture(spec.location)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, options.usb_width),
                            (cv2.CAP_PROP_FRAME_HEIGHT, options.usb_height), (cv2.CAP_PROP_FPS, options.usb_fps)):
            if value:
                capture.set(prop, float(value))
        return capture, "V4L2 device /dev/video{}".format(spec.location)
    if spec.kind == "rtsp":
        backend = options.rtsp_backend
        if backend == "auto":
            backend = "gstreamer" if cv2_has_gstreamer(cv2) else "ffmpeg"
        if backend == "gstreamer":
            from jetson.tegra import on_jetson

            pipeline = rtsp_pipeline(spec.location, options.rtsp_latency_ms, options.rtsp_codec, jetson=on_jetson())
            return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER), "GStreamer: " + pipeline
        return cv2.VideoCapture(spec.location, cv2.CAP_FFMPEG), "FFMPEG: " + spec.location
    if spec.kind == "url":
        return cv2.VideoCapture(spec.location, cv2.CAP_FFMPEG), "FFMPEG: " + spec.location
    if not os.path.isfile(spec.location):
        raise SourceOpenError("{}: video file not found".format(spec.location))
    return cv2.VideoCapture(spec.location), "file " + spec.location


def _property(capture, name):
    try:
        cv2 = require("cv2", "jetson.camera")
        value = float(capture.get(getattr(cv2, name)))
    except Exception:  # a fake capture, or a backend that does not report the property
        return None
    return value if value > 0 and value == value else None


class Camera(object):
    """Frames from one source, with reconnection for live sources and looping for files.

    Args:
        spec: a `SourceSpec`.
        options: `CameraOptions`.
        opener: ``opener(spec, options) -> (capture, description)``; default `open_capture`.
        sleep: the sleep function (tests pass a fake one).
        log: callable taking one line (reconnection messages); default: print.
    """

    def __init__(self, spec, options=None, opener=None, sleep=time.sleep, log=None):
        self.spec = spec
        self.options = options or CameraOptions()
        self._opener = opener or open_capture
        self._sleep = sleep
        self._log = log or (lambda text: print(text, flush=True))
        self._capture = None
        self.description = None
        self.frames_read = 0
        self.reconnects = 0
        self.loops = 0
        self._frames_since_open = 0
        self._pending = None  # the frame a file's open() decoded to prove it is a video

    @property
    def is_live(self):
        return self.spec.kind in LIVE_KINDS

    def _open_once(self):
        capture, description = self._opener(self.spec, self.options)
        if not capture.isOpened():
            capture.release()
            return None, description
        return capture, description

    def open(self):
        """Open the source; `SourceOpenError` naming it when that fails."""
        capture, description = self._open_once()
        if capture is None:
            if self.spec.kind == "file":
                raise SourceOpenError("{}: cannot open this video file (not a video, or a codec this OpenCV cannot "
                                      "decode)".format(self.spec.location))
            raise SourceOpenError("{}: cannot open the source ({}); check that the camera is connected and not in use "
                                  "by another program".format(self.spec.text, description))
        self._capture = capture
        self.description = description
        self._frames_since_open = 0
        if self.spec.kind == "file":
            # A file that "opens" but yields no frame (text renamed .mp4, unknown codec) is refused here, by name.
            self._pending = self._grab()
            if self._pending is None:
                self.release()
                raise SourceOpenError("{}: cannot decode a frame from this video file (not a video, or a codec this "
                                      "OpenCV cannot decode)".format(self.spec.location))
        return self

    def __enter__(self):
        return self.open() if self._capture is None else self

    def __exit__(self, exc_type, exc_value, traceback):
        self.release()
        return False

    def release(self):
        self._pending = None
        if self._capture is not None:
            capture = self._capture
            self._capture = None
            capture.release()

    @property
    def fps(self):
        """Frames per second the source reports, or None."""
        return None if self._capture is None else _property(self._capture, "CAP_PROP_FPS")

    @property
    def frame_count(self):
        """Frames in a file (as its container says), or None."""
        if self._capture is None or self.spec.kind != "file":
            return None
        value = _property(self._capture, "CAP_PROP_FRAME_COUNT")
        return None if value is None else int(value)

    def _grab(self):
        ok, frame = self._capture.read()
        if ok and frame is not None and getattr(frame, "size", 0):
            self.frames_read += 1
            self._frames_since_open += 1
            return frame
        return None

    def read(self):
        """The next BGR frame; None at the end of a file that is not looped. Raises `CameraLostError`."""
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._capture is None:
            raise RuntimeError("Camera.read() before open(): use 'with camera:' or camera.open()")
        frame = self._grab()
        if frame is not None:
            return frame
        if self.spec.kind == "file":
            if not self.options.loop or self._frames_since_open == 0:
                return None
            # Reopening is the one rewind every backend supports (GStreamer file pipelines may not seek).
            self.release()
            self.open()
            self.loops += 1
            frame, self._pending = self._pending, None
            return frame
        return self._reconnect()

    def _reconnect(self):
        self.release()
        delay = self.options.retry_delay
        waited = 0.0
        for attempt in range(1, self.options.retries + 1):
            self._log("camera {}: no frame; reconnecting in {:.1f} s (attempt {}/{})".format(
                self.spec.text, delay, attempt, self.options.retries))
            self._sleep(delay)
            waited += delay
            delay = min(delay * 2.0, self.options.max_retry_delay)
            try:
                capture, description = self._open_once()
            except SourceOpenError:
                continue
            if capture is None:
                continue
            self._capture = capture
            self.description = description
            self._frames_since_open = 0
            frame = self._grab()
            if frame is not None:
                self.reconnects += 1
                self._log("camera {}: reconnected".format(self.spec.text))
                return frame
            self.release()
        raise CameraLostError(
            "camera {} stopped delivering frames and did not come back after {} reconnection attempt{} over {:.1f} s; "
            "check its cable or network and that no other program holds it".format(
                self.spec.text, self.options.retries, "" if self.options.retries == 1 else "s", waited))


def add_camera_arguments(parser):
    """The source options shared by the on-device scripts."""
    group = parser.add_argument_group("camera / source")
    group.add_argument("--source", required=True,
                       help="csi://SENSOR_ID (Jetson CSI camera), /dev/videoN or N (USB), rtsp://..., or a video file")
    group.add_argument("--loop", action="store_true", help="restart a video file at its end")
    group.add_argument("--csi-width", type=int, default=1280, help="CSI capture width (default 1280)")
    group.add_argument("--csi-height", type=int, default=720, help="CSI capture height (default 720)")
    group.add_argument("--csi-fps", type=int, default=30, help="CSI capture frame rate (default 30)")
    group.add_argument("--csi-flip", type=int, default=0, help="nvvidconv flip-method 0-7 (default 0)")
    group.add_argument("--usb-width", type=int, help="request this width from a USB camera")
    group.add_argument("--usb-height", type=int, help="request this height from a USB camera")
    group.add_argument("--usb-fps", type=int, help="request this frame rate from a USB camera")
    group.add_argument("--rtsp-backend", choices=("auto", "gstreamer", "ffmpeg"), default="auto",
                       help="auto: GStreamer when cv2 has it, else FFMPEG")
    group.add_argument("--rtsp-codec", choices=("h264", "h265"), default="h264",
                       help="stream codec for the Jetson's hardware decoder (default h264)")
    group.add_argument("--rtsp-latency", type=int, default=200, help="rtspsrc jitter buffer in ms (default 200)")
    group.add_argument("--retries", type=int, default=5,
                       help="reconnection attempts when a live source stops (default 5)")
    group.add_argument("--retry-delay", type=float, default=0.5,
                       help="first wait before reconnecting, doubled each attempt up to 8 s (default 0.5)")
    return group


def options_from_args(args):
    return CameraOptions(csi_width=args.csi_width, csi_height=args.csi_height, csi_fps=args.csi_fps,
                         csi_flip=args.csi_flip, usb_width=args.usb_width, usb_height=args.usb_height,
                         usb_fps=args.usb_fps, rtsp_backend=args.rtsp_backend, rtsp_latency_ms=args.rtsp_latency,
                         rtsp_codec=args.rtsp_codec, loop=args.loop, retries=args.retries,
                         retry_delay=args.retry_delay)
