"""PASCAL VOC data layer: reads any VOCdevkit (VOC2007, VOC2012 or the same layout).

What it reads: ``ImageSets/Main/<split>.txt`` (plain ids, or VOC's ``id  1/-1`` form), ``Annotations/<id>.xml``
and ``JPEGImages/<id>.jpg``. A class subset is selected with ``classes`` (default ``("person",)``); objects of
other known classes are dropped, ``difficult`` and ``truncated`` flags are kept.

Box convention: VOC stores 1-based inclusive integer pixels (xmin..xmax). We convert to continuous pixel
coordinates ``x1 = xmin - 1, x2 = xmax`` so width = xmax - xmin + 1; the evaluation uses the same convention.

Bad input raises :class:`DataError` naming the file and the problem; with ``skip_bad=True`` the offending
image is left out and counted in ``VOCDataset.skipped`` instead.

Host side (imports numpy and cv2, no torch).
"""
from __future__ import annotations

import hashlib
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from compress.voc_eval import GroundTruth

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

DATA_ENV_VAR = "JETSON_COMPRESS_DATA"
DEFAULT_DATA_ROOT = Path("data") / "VOCdevkit"

# A box may poke out of the image by this many pixels before it counts as bad (rounding in converted sets).
_BOX_TOLERANCE_PX = 1.0


class DataError(ValueError):
    """Bad dataset input. The message names the file and what is wrong."""

    def __init__(self, path: os.PathLike | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Annotation:
    """One image's annotation, boxes in continuous pixel coordinates (x1, y1, x2, y2)."""

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32
    labels: np.ndarray  # (N,) int64, index into the dataset's classes
    difficult: np.ndarray  # (N,) bool
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (N,) bool

    def ground_truth(self) -> GroundTruth:
        return GroundTruth(self.boxes.astype(np.float64), self.labels.copy(), self.difficult.copy())


def resolve_data_root(cli_value: Optional[str] = None) -> Path:
    """``--data``, else ``$JETSON_COMPRESS_DATA``, else ``data/VOCdevkit`` under the working directory."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_DATA_ROOT


def resolve_year_dir(root: os.PathLike | str, year: Optional[str] = None) -> Path:
    """Find the ``VOC20xx`` folder (the one holding Annotations/) below a user-given root.

    Accepts the year folder itself, a VOCdevkit folder, or a folder that contains ``VOCdevkit``.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(root, f"data root does not exist (set --data or ${DATA_ENV_VAR} to a VOCdevkit folder)")
    if not root.is_dir():
        raise DataError(root, f"data root is not a folder (set --data or ${DATA_ENV_VAR} to a VOCdevkit folder)")
    if (root / "Annotations").is_dir():
        return root
    if (root / "VOCdevkit").is_dir():
        root = root / "VOCdevkit"
    if year is not None:
        cand = root / (year if year.startswith("VOC") else f"VOC{year}")
        if not (cand / "Annotations").is_dir():
            raise DataError(cand, "no Annotations/ folder: not a VOC year folder")
        return cand
    years = sorted(p for p in root.iterdir() if p.is_dir() and (p / "Annotations").is_dir())
    if not years:
        raise DataError(root, "no VOC year folder with Annotations/ found (expected e.g. VOCdevkit/VOC2007)")
    if len(years) == 1:
        return years[0]
    for p in years:
        if p.name == "VOC2007":
            return p
    raise DataError(root, f"several VOC year folders {[p.name for p in years]}: choose one with --year")


def read_split(year_dir: Path, split: str) -> List[str]:
    """Image ids of ``ImageSets/Main/<split>.txt``. Accepts VOC's ``id  1/-1`` class-list form too."""
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise DataError(path, f"split file for split '{split}' not found")
    ids: List[str] = []
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 2 and parts[1] not in ("1", "-1", "0"):
                raise DataError(path, f"line {lineno}: expected 'id' or 'id 1/-1/0', got {line.strip()!r}")
            if len(parts) > 2:
                raise DataError(path, f"line {lineno}: expected 'id' or 'id 1/-1/0', got {line.strip()!r}")
            if len(parts) == 2 and parts[1] == "-1":
                continue  # class-list form: image without the class
            ids.append(parts[0])
    if not ids:
        raise DataError(path, f"split '{split}' is empty")
    return ids


def split_file_sha256(year_dir: Path, split: str) -> str:
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _text(node: ET.Element, tag: str, path: Path, default: Optional[str] = None) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise DataError(path, f"missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    raw = _text(node, tag, path)
    try:
        return float(raw)
    except ValueError:
        raise DataError(path, f"<{tag}> is not a number: {raw!r}") from None


def parse_annotation(
    xml_path: Path,
    image_path: Path,
    classes: Sequence[str],
    known_classes: Sequence[str] = VOC_CLASSES,
) -> Annotation:
    """Parse one VOC XML file; objects outside ``classes`` but in ``known_classes`` are dropped."""
    if not xml_path.is_file():
        raise DataError(xml_path, "annotation file missing")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DataError(xml_path, f"malformed XML ({exc})") from None
    if root.tag != "annotation":
        raise DataError(xml_path, f"root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    if size is None:
        raise DataError(xml_path, "missing <size>")
    width, height = int(_number(size, "width", xml_path)), int(_number(size, "height", xml_path))
    if width <= 0 or height <= 0:
        raise DataError(xml_path, f"invalid image size {width}x{height}")
    known = set(known_classes) | set(classes)
    index = {c: i for i, c in enumerate(classes)}
    boxes, labels, difficult, truncated = [], [], [], []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name", xml_path).strip()
        if name not in known:
            raise DataError(xml_path, f"object {k}: unknown class {name!r}")
        if name not in index:
            continue
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(xml_path, f"object {k} ({name}): missing <bndbox>")
        xmin, ymin = _number(bb, "xmin", xml_path), _number(bb, "ymin", xml_path)
        xmax, ymax = _number(bb, "xmax", xml_path), _number(bb, "ymax", xml_path)
        x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax
        tol = _BOX_TOLERANCE_PX
        if not (x2 > x1 and y2 > y1):
            raise DataError(xml_path, f"object {k} ({name}): empty box {xmin, ymin, xmax, ymax}")
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise DataError(
                xml_path, f"object {k} ({name}): box {xmin, ymin, xmax, ymax} outside the {width}x{height} image"
            )
        boxes.append([max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))])
        labels.append(index[name])
        difficult.append(_text(obj, "difficult", xml_path, default="0") == "1")
        truncated.append(_text(obj, "truncated", xml_path, default="0") == "1")
    return Annotation(
        image_id=xml_path.stem,
        image_path=image_path,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
    )


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG")


def _find_image(year_dir: Path, image_id: str) -> Path:
    for ext in (".jpg", ".jpeg", ".png", ".JPG"):
        p = year_dir / "JPEGImages" / (image_id + ext)
        if p.is_file():
            return p
    raise DataError(year_dir / "JPEGImages" / (image_id + ".jpg"), "image file missing")


def load_image(path: Path, expected_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3); raise DataError if it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DataError(path, "unreadable image (cannot be decoded)")
    if expected_size is not None and (img.shape[1], img.shape[0]) != expected_size:
        raise DataError(
            path, f"image is {img.shape[1]}x{img.shape[0]} but its annotation says {expected_size[0]}x{expected_size[1]}"
        )
    return img


class VOCDataset:
    """Annotations of one split of a VOC-layout dataset (images are loaded on demand)."""

    def __init__(
        self,
        root: os.PathLike | str,
        split: str = "trainval",
        classes: Sequence[str] = ("person",),
        year: Optional[str] = None,
        skip_bad: bool = False,
        check_images: bool = True,
        known_classes: Sequence[str] = VOC_CLASSES,
    ) -> None:
        self.year_dir = resolve_year_dir(root, year)
        self.split = split
        self.classes = tuple(classes)
        if not self.classes:
            raise DataError(self.year_dir, "no classes selected")
        self.skip_bad = skip_bad
        self.skipped: Dict[str, str] = {}
        ids = read_split(self.year_dir, split)
        split_path = self.year_dir / "ImageSets" / "Main" / f"{split}.txt"
        self.annotations: List[Annotation] = []
        for image_id in ids:
            try:
                if not (self.year_dir / "Annotations" / f"{image_id}.xml").is_file() and \
                        not any((self.year_dir / "JPEGImages" / (image_id + e)).is_file()
                                for e in (".jpg", ".jpeg", ".png", ".JPG")):
                    raise DataError(split_path, f"lists image id {image_id!r}, which has neither an annotation "
                                                f"nor an image")
                image_path = _find_image(self.year_dir, image_id)
                if check_images:
                    with open(image_path, "rb") as fh:
                        head = fh.read(8)
                    if not any(head.startswith(m) for m in _IMAGE_MAGIC):
                        raise DataError(image_path, "unreadable image (not a JPEG or PNG file)")
                ann = parse_annotation(
                    self.year_dir / "Annotations" / f"{image_id}.xml", image_path, self.classes, known_classes
                )
            except DataError as exc:
                if not skip_bad:
                    raise
                self.skipped[image_id] = str(exc)
                continue
            self.annotations.append(ann)
        if self.skipped:
            warnings.warn(
                f"{self.year_dir}: skipped {len(self.skipped)} bad image(s) of split '{split}' "
                f"(first: {next(iter(self.skipped.values()))})",
                stacklevel=2,
            )
        if not self.annotations:
            raise DataError(self.year_dir / "ImageSets" / "Main" / f"{split}.txt", "no usable images in split")

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, i: int) -> Annotation:
        return self.annotations[i]

    def split_sha256(self) -> str:
        return split_file_sha256(self.year_dir, self.split)

    def ground_truths(self) -> Dict[str, GroundTruth]:
        return {a.image_id: a.ground_truth() for a in self.annotations}

    def num_boxes(self) -> int:
        return int(sum(len(a.boxes) for a in self.annotations))
