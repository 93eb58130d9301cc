"""Dataset download: resumable, checksummed HTTP downloads and safe tar extraction.

What it is for: ``jetson-compress data download voc2007`` fetches the official PASCAL VOC2007 archives into
``ROOT/downloads/``, verifies their MD5, and extracts them so that ``ROOT/VOCdevkit/VOC2007/`` holds
``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/`` — the layout :mod:`compress.voc` reads.

Guarantees:

- A download streams into ``<dest>.part`` and becomes ``<dest>`` (one atomic rename) only after its size and
  checksum were verified; an interrupted transfer is resumed with an HTTP ``Range`` request, within the call
  (``retries``) and on the next run. A server that ignores ``Range`` (answers 200) is handled by restarting.
- A checksum mismatch deletes the ``.part`` and raises :class:`ChecksumError` naming the URL, the file and the
  expected and actual hashes.
- Network failures raise :class:`DownloadError` that says the host could not be reached, names the URL, says
  where the partial file is kept, and how to use an existing VOCdevkit instead (``--data`` or
  ``$JETSON_COMPRESS_DATA``).
- Extraction refuses members that would land outside the destination (absolute paths, ``..``, links pointing
  outside, device files), extracts into a temporary folder next to the destination and only then moves the
  result into place, so a corrupt archive leaves nothing half-extracted.

Imports: standard library only (``tqdm`` optionally, for a progress bar). No torch, numpy or cv2, so the
command works on a bare machine.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator, Sequence

try:  # NOTE: tqdm is optional; without it downloads log start and end only.
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - tqdm is installed in the dev environment
    _tqdm = None

try:  # NOTE: POSIX only; on Windows two concurrent downloads of one file are not detected.
    import fcntl as _fcntl
except ImportError:  # pragma: no cover
    _fcntl = None

__all__ = [
    "ArchiveSpec",
    "ChecksumError",
    "DATASETS",
    "DATA_ENV_VAR",
    "DataError",
    "DatasetLayoutError",
    "DatasetSpec",
    "DownloadError",
    "UnsafeArchiveError",
    "check_dataset_layout",
    "download_dataset",
    "download_file",
    "extract_tar",
    "file_digest",
    "get_dataset",
]

logger = logging.getLogger(__name__)

#: Environment variable that points the data layer at an existing VOCdevkit (same name as in compress.voc).
DATA_ENV_VAR = "JETSON_COMPRESS_DATA"
DEFAULT_TIMEOUT_S = 30.0
CHUNK_SIZE = 1 << 20
USER_AGENT = "jetson-compress-downloader/1 (+python-urllib)"
_MARKER_SUFFIX = ".extracted.json"


# --------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ArchiveSpec:
    """One file of a dataset: its name on every mirror, checksums and size in bytes (``None`` = unknown)."""

    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable dataset.

    ``mirrors`` are base URLs tried in order; an archive's URL is ``mirror + "/" + filename``. After extraction
    into ``root``, ``root/base_dir`` must contain every path of ``required_files`` and every (non-empty) folder
    of ``required_dirs``.
    """

    name: str
    description: str
    archives: tuple[ArchiveSpec, ...]
    mirrors: tuple[str, ...]
    base_dir: str
    required_dirs: tuple[str, ...] = ()
    required_files: tuple[str, ...] = ()

    def urls(self, archive: ArchiveSpec, mirrors: Sequence[str] | None = None) -> list[str]:
        """Every URL of ``archive``, in the order they are tried."""
        return [_join_url(m, archive.filename) for m in (mirrors if mirrors else self.mirrors)]


DATASETS: dict[str, DatasetSpec] = {
    "voc2007": DatasetSpec(
        name="voc2007",
        description="PASCAL VOC2007 trainval + test (with test annotations), 9963 images, 20 classes",
        archives=(
            # MD5s as listed in torchvision.datasets.voc (DATASET_YEAR_DICT "2007" and "2007-test").
            ArchiveSpec("VOCtrainval_06-Nov-2007.tar", md5="c52e279531787c972589f7e41ab4ae64", size=460_032_000),
            ArchiveSpec("VOCtest_06-Nov-2007.tar", md5="b6e924de25625d8de591ea690078ad9f", size=451_020_800),
        ),
        mirrors=(
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2007",  # official host
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007",  # the official server's current HTTPS name
            "https://pjreddie.com/media/files",  # darknet's mirror (same files, flat folder)
        ),
        base_dir="VOCdevkit/VOC2007",
        required_dirs=("Annotations", "JPEGImages", "ImageSets/Main"),
        required_files=("ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt"),
    ),
}


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name``; :class:`DataError` listing the known names otherwise."""
    try:
        return DATASETS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(DATASETS)) or "(none)"
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}") from None


# ---------------------------------------------------------------------------------------------------- errors


class DataError(Exception):
    """Base class of every error this module raises on purpose (the CLI turns it into exit code 2)."""


class DownloadError(DataError):
    """A file could not be downloaded.

    ``transient`` is true for network failures worth retrying; ``bytes_received`` counts the bytes this
    attempt added to the ``.part`` file (a retry only makes sense when the transfer made progress);
    ``reason`` is a short form of the message for one-line summaries.
    """

    def __init__(self, message: str, *, url: str | None = None, part: Path | None = None,
                 transient: bool = False, bytes_received: int = 0, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message.split(". ")[0]
        self.url = url
        self.part = part
        self.transient = transient
        self.bytes_received = bytes_received


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected size or hash; the ``.part`` file was deleted."""


class UnsafeArchiveError(DataError):
    """An archive member would be written outside the destination, or the archive cannot be read."""


class DatasetLayoutError(DataError):
    """The extracted folder does not look like the dataset (e.g. no ``Annotations/``)."""


def _existing_data_hint() -> str:
    return (f"If PASCAL VOC is already on this machine (or you can copy it here), skip the download and point "
            f"jetson-compress at it: pass --data ROOT (a folder containing VOCdevkit/, the VOCdevkit folder or "
            f"VOCdevkit/VOC2007) or set the environment variable {DATA_ENV_VAR}=ROOT.")


def _part_note(part: Path) -> str:
    size = part.stat().st_size if part.exists() else 0
    done = f"{size} bytes so far" if size else "nothing downloaded yet"
    return f"Partial downloads are kept in {part} ({done}) and resumed when you run the same command again."


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _unreachable(url: str, part: Path, reason: object) -> DownloadError:
    return DownloadError(
        f"Could not reach {_host(url)} to download {url}: {reason}. This machine seems to be offline, or the host "
        f"is down or blocked (proxy, firewall, DNS). {_part_note(part)} {_existing_data_hint()}",
        url=url, part=part, transient=True, reason=f"could not reach {_host(url)}: {reason}")


# ------------------------------------------------------------------------------------------------- checksums


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256", chunk_size: int = CHUNK_SIZE) -> str:
    """Hex digest of a file, read in chunks (``hashlib.file_digest`` needs Python 3.11)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _mismatches(path: Path, md5: str | None, sha256: str | None,
                expected_size: int | None) -> list[str]:
    """Human-readable differences between ``path`` and what was expected; empty when it matches."""
    problems = []
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        problems.append(f"expected {expected_size} bytes, got {size}")
        return problems  # hashing a file of the wrong size says nothing more
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.lower():
                problems.append(f"expected {algorithm} {expected.lower()}, got {actual}")
    return problems


# -------------------------------------------------------------------------------------------------- download


class _RestartFromScratch(Exception):
    """The server's answer does not fit the partial file; truncate it and download from byte 0."""


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` from a Content-Range header; ``None`` for what it does not say."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def _join_url(base: str, filename: str) -> str:
    return base.rstrip("/") + "/" + filename


@contextlib.contextmanager
def _locked_part_file(part: Path, url: str) -> Iterator[IO[bytes]]:
    """Open (create) ``part`` for read/write, exclusively locked so two processes never write it at once."""
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    fh = os.fdopen(fd, "r+b")
    locked = False
    try:
        if _fcntl is not None:
            try:
                _fcntl.flock(fh.fileno(), _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except BlockingIOError:
                raise DownloadError(f"another process is already downloading {url} into {part}; wait for it to "
                                    f"finish or stop it", url=url, part=part) from None
        locked = True
        yield fh
    finally:
        # Never leave an empty .part behind (e.g. the host was unreachable); only the lock holder may delete it.
        if locked and os.fstat(fh.fileno()).st_size == 0:
            with contextlib.suppress(OSError):
                part.unlink()
        fh.close()


class _Progress:
    """A tqdm bar when tqdm is installed and ``enabled``; otherwise nothing."""

    def __init__(self, enabled: bool, total: int | None, initial: int, desc: str) -> None:
        self._bar: Any = None
        if enabled and _tqdm is not None:
            # disable=None: no bar when stderr is not a terminal (CI logs).
            self._bar = _tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                              unit_divisor=1024, disable=None, leave=False, mininterval=0.5)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _fetch_once(url: str, part: Path, fh: IO[bytes], offset: int, *, expected_size: int | None,
                timeout: float, progress: bool, chunk_size: int) -> None:
    """One HTTP request: append the bytes of ``url`` that ``fh`` (holding ``offset`` bytes) lacks."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    # add_header (not unredirected headers) so Range survives a redirect to another host.
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 416 and offset > 0:
                _, total = _parse_content_range(exc.headers.get("Content-Range"))
                if total is None or total == offset:
                    return  # the partial file already holds every byte; the checksum decides
                raise _RestartFromScratch(f"server has {total} bytes, the partial file {offset}") from None
            raise DownloadError(
                f"{_host(url)} answered HTTP {exc.code} {exc.reason} for {url}. The file may have moved; try "
                f"another mirror with --mirror URL. {_existing_data_hint()}", url=url, part=part,
                transient=exc.code >= 500, reason=f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = f"no answer within {timeout:g} s"
        raise _unreachable(url, part, reason) from None

    with contextlib.closing(response):
        status = response.status if response.status is not None else 200  # file:// has no status
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _RestartFromScratch(f"asked for bytes from {offset}, got a range starting at {start}")
        elif status == 200:
            if offset > 0:
                logger.warning("%s ignored the resume request (HTTP 200 instead of 206); downloading %s again "
                               "from the start", _host(url), part.name)
                offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadError(f"{_host(url)} answered HTTP {status} for {url}; expected 200 or 206",
                                url=url, part=part)
        if total is not None and expected_size is not None and total != expected_size:
            raise DownloadError(
                f"{url} is {total} bytes but {part.name[:-len('.part')]} should be {expected_size} bytes: this "
                f"mirror serves a different file; try another with --mirror URL", url=url, part=part)

        fh.seek(offset)
        fh.truncate()
        received = offset
        bar = _Progress(progress, total, offset, part.name[:-len(".part")])
        try:
            while True:
                try:
                    chunk = response.read(chunk_size)
                except (OSError, http.client.HTTPException) as exc:  # reset, timeout, chunked-encoding error
                    reason = f"no data for {timeout:g} s" if isinstance(exc, (TimeoutError, socket.timeout)) \
                        else f"{type(exc).__name__}: {exc}"
                    fh.flush()
                    raise DownloadError(
                        f"Lost the connection to {_host(url)} while downloading {url} after {received} bytes "
                        f"({reason}). {_part_note(part)} {_existing_data_hint()}", url=url, part=part,
                        transient=True, bytes_received=received - offset,
                        reason=f"connection lost after {received} bytes ({reason})") from None
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
            fh.flush()
    wanted = total if total is not None else expected_size
    if wanted is not None and received < wanted:
        raise DownloadError(
            f"{_host(url)} closed the connection after {received} of {wanted} bytes of {url}. "
            f"{_part_note(part)} {_existing_data_hint()}", url=url, part=part, transient=True,
            bytes_received=received - offset, reason=f"connection closed after {received} of {wanted} bytes")


def download_file(url: str, dest: str | os.PathLike[str], md5: str | None = None, sha256: str | None = None,
                  resume: bool = True, timeout: float = DEFAULT_TIMEOUT_S, progress: bool = True, *,
                  expected_size: int | None = None, retries: int = 3, chunk_size: int = CHUNK_SIZE) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    Bytes go to ``dest + ".part"``; with ``resume`` an existing ``.part`` is continued with a ``Range``
    request (``resume=False`` discards it). A transfer that breaks after making progress is resumed up to
    ``retries`` times within this call. After the last byte the size (``expected_size``) and the checksums
    (``md5``, ``sha256``) are verified and only then is the ``.part`` renamed to ``dest``. If ``dest`` already
    exists and matches, nothing is downloaded; if it does not match, it is replaced.

    ``timeout`` bounds connecting and every read, in seconds, so a silent server cannot hang the download.

    Raises :class:`DownloadError` (network, HTTP, another process holds the file) or :class:`ChecksumError`
    (the ``.part`` is deleted). Disk errors propagate as :class:`OSError`.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "ftp", "file"):
        raise DownloadError(f"{url!r} is not a download URL (expected http://, https://, ftp:// or file://)",
                            url=url)
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():
        problems = _mismatches(dest, md5, sha256, expected_size)
        if not problems:
            logger.info("%s is already downloaded and verified", dest)
            return dest
        logger.warning("%s exists but does not match (%s); downloading it again", dest, "; ".join(problems))
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)

    with _locked_part_file(part, url) as fh:
        if not resume:
            fh.truncate(0)
        restarted = False
        retried = 0
        while True:
            offset = fh.seek(0, os.SEEK_END)
            if expected_size is not None and offset > expected_size:
                fh.truncate(0)
                offset = 0
            if expected_size is not None and offset == expected_size and offset > 0:
                break  # complete from an earlier run; no request needed
            if offset:
                logger.info("resuming %s at byte %d from %s", dest.name, offset, url)
            else:
                logger.info("downloading %s from %s", dest.name, url)
            try:
                _fetch_once(url, part, fh, offset, expected_size=expected_size, timeout=timeout,
                            progress=progress, chunk_size=chunk_size)
                break
            except _RestartFromScratch as exc:
                if restarted:
                    raise DownloadError(f"{_host(url)} keeps answering resume requests for {url} "
                                        f"inconsistently ({exc})", url=url, part=part) from None
                logger.warning("cannot resume %s (%s); starting again from byte 0", dest.name, exc)
                restarted = True
                fh.truncate(0)
            except DownloadError as exc:
                if exc.transient and exc.bytes_received > 0 and retried < retries:
                    retried += 1
                    logger.warning("%s: %s; resuming (retry %d of %d)", url, exc.reason, retried, retries)
                    continue
                raise
        fh.flush()
        os.fsync(fh.fileno())

    problems = _mismatches(part, md5, sha256, expected_size)
    if problems:
        part.unlink()
        raise ChecksumError(
            f"Checksum mismatch for {url} (downloaded to {part}): {'; '.join(problems)}. The corrupt download "
            f"was deleted; run the command again, or use another mirror with --mirror URL.",
            url=url, part=part)
    os.replace(part, dest)
    logger.info("verified %s (%d bytes)", dest, dest.stat().st_size)
    return dest


# --------------------------------------------------------------------------------------------------- extract


def _is_absolute_member(name: str) -> bool:
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None


def _escapes(path: str) -> bool:
    """True when a normalised relative POSIX path leaves its root."""
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../")


def _check_members(members: Sequence[tarfile.TarInfo], archive: Path) -> None:
    """Refuse any member that could write outside the extraction folder; checks names before extracting."""
    symlinks: set[PurePosixPath] = set()

    def refuse(member: tarfile.TarInfo, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refusing to extract {archive}: member {member.name!r} {why}; the archive is "
                                  f"corrupt or malicious, nothing was extracted")

    for member in members:
        name = member.name
        if _is_absolute_member(name):
            raise refuse(member, "has an absolute path")
        if ".." in re.split(r"[\\/]+", name):
            raise refuse(member, "contains '..'")
        path = PurePosixPath(name)
        for i in range(1, len(path.parts)):
            if PurePosixPath(*path.parts[:i]) in symlinks:
                raise refuse(member, f"is written through the symbolic link {'/'.join(path.parts[:i])!r}")
        if member.issym():
            target = member.linkname
            if _is_absolute_member(target) or _escapes(posixpath.join(posixpath.dirname(name), target)):
                raise refuse(member, f"is a symbolic link to {target!r}, outside the destination")
            symlinks.add(path)
        elif member.islnk():
            target = member.linkname
            if _is_absolute_member(target) or _escapes(target):
                raise refuse(member, f"is a hard link to {target!r}, outside the destination")
        elif not (member.isfile() or member.isdir()):
            raise refuse(member, "is a device file or FIFO")


def _move_merging(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; folders that exist on both sides are merged, files replaced."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir():
        for child in sorted(src.iterdir()):
            _move_merging(child, dst / child.name)
        return
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # dst is a symlink to another file system
            raise
        if dst.is_file():
            dst.unlink()
        shutil.move(str(src), str(dst))


def extract_tar(archive: str | os.PathLike[str], dest_root: str | os.PathLike[str]) -> list[Path]:
    """Safely extract the tar ``archive`` into ``dest_root``; return the top-level paths it produced.

    Every member is checked first (:class:`UnsafeArchiveError` for absolute paths, ``..``, links leading
    outside, device files); on Python versions with tar filters ``filter="data"`` is applied as well. The
    archive is extracted into a temporary folder inside ``dest_root`` and moved into place afterwards, merging
    with folders that already exist (both VOC2007 archives fill ``VOCdevkit/VOC2007``), so a failure while
    reading the archive leaves ``dest_root`` as it was.
    """
    archive = Path(archive)
    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.extracting-", dir=dest_root))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                _check_members(members, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.10.12 / 3.11.4; _check_members did the work
                    tar.extractall(staging, members=members)
        except tarfile.TarError as exc:
            if isinstance(exc, getattr(tarfile, "FilterError", ())):  # refused by filter="data"
                raise UnsafeArchiveError(f"refusing to extract {archive}: {exc}") from exc
            raise UnsafeArchiveError(f"cannot extract {archive}: {exc}. The archive is corrupt or truncated; "
                                     f"delete it and download it again") from exc
        except EOFError as exc:
            raise UnsafeArchiveError(f"cannot extract {archive}: it is truncated ({exc}); delete it and "
                                     f"download it again") from exc
        tops = sorted(staging.iterdir())
        for top in tops:
            _move_merging(top, dest_root / top.name)
        return [dest_root / top.name for top in tops]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- dataset


def check_dataset_layout(root: str | os.PathLike[str], dataset: str | DatasetSpec) -> Path:
    """Return ``root/<base_dir>`` if it has the dataset's required folders and files, else raise."""
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    base = Path(root) / spec.base_dir
    missing = [d + "/" for d in spec.required_dirs if not (base / d).is_dir() or not any((base / d).iterdir())]
    missing += [f for f in spec.required_files if not (base / f).is_file()]
    if missing:
        raise DatasetLayoutError(f"{base} does not look like {spec.name}: missing or empty {', '.join(missing)}")
    return base


def _marker_path(downloads: Path, archive: ArchiveSpec) -> Path:
    return downloads / (archive.filename + _MARKER_SUFFIX)


def _marker_ok(downloads: Path, archive: ArchiveSpec, root: Path) -> bool:
    try:
        marker = json.loads(_marker_path(downloads, archive).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("md5") == archive.md5
            and marker.get("sha256") == archive.sha256 and marker.get("root") == str(root.resolve()))


def _write_marker(downloads: Path, archive: ArchiveSpec, root: Path) -> None:
    path = _marker_path(downloads, archive)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"archive": archive.filename, "md5": archive.md5, "sha256": archive.sha256,
                               "root": str(root.resolve())}, indent=2))
    os.replace(tmp, path)


def _check_free_space(root: Path, downloads: Path, todo: Sequence[ArchiveSpec]) -> None:
    """Fail early when the archives plus their extracted copies cannot fit (sizes must be known)."""
    if not todo or any(a.size is None for a in todo):
        return
    needed = 0
    for archive in todo:
        dest = downloads / archive.filename
        part = dest.with_name(dest.name + ".part")
        have = dest.stat().st_size if dest.is_file() else (part.stat().st_size if part.is_file() else 0)
        needed += max(0, archive.size - have) + archive.size  # type: ignore[operator]
    free = shutil.disk_usage(root).free
    if free < needed:
        raise DataError(f"not enough disk space in {root}: need about {needed / 2**30:.2f} GiB for the archives and "
                        f"their extracted files, {free / 2**30:.2f} GiB free. Choose another --root. "
                        f"{_existing_data_hint()}")


def download_dataset(name: str | DatasetSpec, root: str | os.PathLike[str] = "data",
                     mirrors: Sequence[str] | None = None, *, resume: bool = True,
                     timeout: float = DEFAULT_TIMEOUT_S, progress: bool = True, force: bool = False,
                     retries: int = 3) -> Path:
    """Download, verify and extract dataset ``name`` under ``root``; return ``root/<base_dir>``.

    Archives go to ``root/downloads/`` and are extracted into ``root`` (for ``voc2007``:
    ``root/VOCdevkit/VOC2007``). ``mirrors`` (base URLs) replace the registered ones; they are tried in order
    and the first that delivers a verified file wins (a ``.part`` left by one mirror is resumed from the next).
    An archive already extracted into this ``root`` (a marker in ``downloads/``) is skipped unless ``force``;
    a verified archive on disk is never downloaded again. Raises :class:`DataError` subclasses.
    """
    spec = name if isinstance(name, DatasetSpec) else get_dataset(name)
    root = Path(root)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)

    base_exists = (root / spec.base_dir).is_dir()
    todo = [a for a in spec.archives if force or not (base_exists and _marker_ok(downloads, a, root))]
    _check_free_space(root, downloads, todo)
    for archive in todo:
        dest = downloads / archive.filename
        errors: list[DownloadError] = []
        urls = spec.urls(archive, mirrors)
        for i, url in enumerate(urls):
            try:
                download_file(url, dest, md5=archive.md5, sha256=archive.sha256, resume=resume, timeout=timeout,
                              progress=progress, expected_size=archive.size, retries=retries)
                break
            except DownloadError as exc:
                errors.append(exc)
                if i + 1 < len(urls):
                    logger.warning("%s: %s; trying the next mirror", url, exc.reason)
        else:
            raise _all_mirrors_failed(archive, dest, errors)
        logger.info("extracting %s into %s", dest.name, root)
        extract_tar(dest, root)
        _write_marker(downloads, archive, root)
    return check_dataset_layout(root, spec)


def _all_mirrors_failed(archive: ArchiveSpec, dest: Path, errors: Sequence[DownloadError]) -> DownloadError:
    if len(errors) == 1:
        return errors[0]
    part = dest.with_name(dest.name + ".part")
    unreachable = all(e.transient and e.bytes_received == 0 for e in errors)
    lines = "\n".join(f"  - {e.url}: {e.reason}" for e in errors)
    head = (f"Could not reach any of the {len(errors)} mirrors of {archive.filename} (this machine seems to be "
            f"offline, or the hosts are blocked)" if unreachable
            else f"Could not download {archive.filename} from any of its {len(errors)} mirrors")
    return DownloadError(f"{head}:\n{lines}\n{_part_note(part)} {_existing_data_hint()}",
                         url=errors[-1].url, part=part, transient=unreachable)
