"""Tests of compress.download and the ``data download`` command against a local HTTP server.

The server (127.0.0.1, port 0, one thread) serves in-memory files and supports ``Range``; ``mode`` switches it
to ignore ``Range``, to drop the connection half-way through the first transfer of each file, or to stall after
the headers. The VOCdevkit archives are built in the test. Every client call has a timeout of a few seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import random
import re
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from compress import download as dl
from jetson_compress.commands import data as data_cmd

TIMEOUT = 2.0


# ------------------------------------------------------------------------------------------------ the server


@dataclass
class FileServer:
    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    mode: str = "normal"  # normal | ignore_range | drop_first | stall
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def ranges(self, name: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path == f"/{name}"]


def _make_handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if rng is not None and state.mode != "ignore_range":
                match = re.fullmatch(r"bytes=(\d+)-", rng)
                assert match, rng
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Content-Type", "application/x-tar")
            self.end_headers()
            if state.mode == "stall":
                state.release.wait(10)
                return
            if state.mode == "drop_first" and self.path not in state.dropped:
                state.dropped.add(self.path)
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def server() -> Iterator[FileServer]:
    httpd = _Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = FileServer(base_url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = _make_handler(state)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: connection refused
    return f"http://127.0.0.1:{port}/voc"


# ---------------------------------------------------------------------------------------------- the archives


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1_200_000_000
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _xml(image_id: str) -> bytes:
    return (f"<annotation><filename>{image_id}.jpg</filename><size><width>4</width><height>4</height>"
            f"<depth>3</depth></size><object><name>person</name><difficult>0</difficult><bndbox><xmin>1</xmin>"
            f"<ymin>1</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>").encode()


@pytest.fixture
def voc_archives() -> dict[str, dict[str, bytes]]:
    """Two archives that both fill VOCdevkit/VOC2007, like the real trainval and test tars."""
    rnd = random.Random(0)
    v = "VOCdevkit/VOC2007"
    trainval = {
        f"{v}/Annotations/000001.xml": _xml("000001"),
        f"{v}/Annotations/000002.xml": _xml("000002"),
        f"{v}/JPEGImages/000001.jpg": b"\xff\xd8\xff\xe0" + rnd.randbytes(30_000) + b"\xff\xd9",
        f"{v}/JPEGImages/000002.jpg": b"\xff\xd8\xff\xe0" + rnd.randbytes(20_000) + b"\xff\xd9",
        f"{v}/ImageSets/Main/trainval.txt": b"000001\n000002\n",
    }
    test = {
        f"{v}/Annotations/000003.xml": _xml("000003"),
        f"{v}/JPEGImages/000003.jpg": b"\xff\xd8\xff\xe0" + rnd.randbytes(10_000) + b"\xff\xd9",
        f"{v}/ImageSets/Main/test.txt": b"000003\n",
    }
    return {"VOCtrainval_tiny.tar": trainval, "VOCtest_tiny.tar": test}


def _spec(archives: dict[str, bytes], mirrors: list[str]) -> dl.DatasetSpec:
    return dl.DatasetSpec(
        name="tinyvoc", description="two tiny VOC-layout archives",
        archives=tuple(dl.ArchiveSpec(n, md5=hashlib.md5(b).hexdigest(), size=len(b)) for n, b in archives.items()),
        mirrors=tuple(mirrors), base_dir="VOCdevkit/VOC2007",
        required_dirs=("Annotations", "JPEGImages", "ImageSets/Main"),
        required_files=("ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt"))


@pytest.fixture
def served(server: FileServer, voc_archives: dict[str, dict[str, bytes]]) -> dict[str, bytes]:
    tars = {name: _tar(members) for name, members in voc_archives.items()}
    for name, body in tars.items():
        server.files[f"/{name}"] = body
    return tars


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------------------------------- dataset


def test_download_dataset_verifies_and_extracts_voc_layout(server: FileServer, served: dict[str, bytes],
                                                            voc_archives: dict[str, dict[str, bytes]],
                                                            tmp_path: Path) -> None:
    year_dir = dl.download_dataset(_spec(served, [server.base_url]), tmp_path / "data", timeout=TIMEOUT,
                                   progress=False)

    assert year_dir == tmp_path / "data" / "VOCdevkit" / "VOC2007"
    for name, body in served.items():
        archive = tmp_path / "data" / "downloads" / name
        assert dl.file_digest(archive, "md5") == _md5(body)
        assert not archive.with_name(name + ".part").exists()
    for members in voc_archives.values():  # both archives merged into one VOC2007 folder
        for member, content in members.items():
            assert (tmp_path / "data" / member).read_bytes() == content
    assert sorted(p.name for p in (year_dir / "ImageSets" / "Main").iterdir()) == ["test.txt", "trainval.txt"]
    assert len(list((year_dir / "Annotations").iterdir())) == 3
    assert not list((tmp_path / "data").glob(".*extracting*"))  # staging folders removed
    assert [rng for _, rng in server.requests] == [None, None]


def test_second_run_sends_no_request(server: FileServer, served: dict[str, bytes], tmp_path: Path) -> None:
    spec = _spec(served, [server.base_url])
    dl.download_dataset(spec, tmp_path, timeout=TIMEOUT, progress=False)
    assert len(server.requests) == 2

    dl.download_dataset(spec, tmp_path, timeout=TIMEOUT, progress=False)  # extracted: markers say so
    dl.download_dataset(spec, tmp_path, timeout=TIMEOUT, progress=False, force=True)  # re-verify + re-extract
    name, body = next(iter(served.items()))
    dl.download_file(server.url(name), tmp_path / "downloads" / name, md5=_md5(body), timeout=TIMEOUT,
                     progress=False)
    assert len(server.requests) == 2


def test_mirrors_are_tried_in_order(server: FileServer, served: dict[str, bytes], tmp_path: Path,
                                    closed_port_url: str) -> None:
    mirrors = [closed_port_url, f"{server.base_url}/moved", server.base_url]
    dl.download_dataset(_spec(served, ["http://unused.invalid"]), tmp_path, mirrors=mirrors, timeout=TIMEOUT,
                        progress=False)
    assert [path for path, _ in server.requests] == [
        "/moved/VOCtrainval_tiny.tar", "/VOCtrainval_tiny.tar", "/moved/VOCtest_tiny.tar", "/VOCtest_tiny.tar"]


def test_extracted_tree_must_look_like_vocdevkit(server: FileServer, tmp_path: Path) -> None:
    body = _tar({"VOCdevkit/VOC2007/Annotations/000001.xml": _xml("000001")})
    server.files["/only_xml.tar"] = body
    spec = _spec({"only_xml.tar": body}, [server.base_url])
    with pytest.raises(dl.DatasetLayoutError, match=r"JPEGImages/.*ImageSets/Main/trainval\.txt"):
        dl.download_dataset(spec, tmp_path, timeout=TIMEOUT, progress=False)


def test_not_enough_disk_space_fails_before_downloading(server: FileServer, served: dict[str, bytes],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: dl.shutil._ntuple_diskusage(10**6, 10**6, 1000))
    with pytest.raises(dl.DataError, match="not enough disk space"):
        dl.download_dataset(_spec(served, [server.base_url]), tmp_path, timeout=TIMEOUT, progress=False)
    assert server.requests == []


# ---------------------------------------------------------------------------------------------- download_file


def test_resume_after_interrupted_transfer(server: FileServer, served: dict[str, bytes], tmp_path: Path) -> None:
    name, body = next(iter(served.items()))
    server.mode = "drop_first"
    dest = tmp_path / name
    part = tmp_path / (name + ".part")

    with pytest.raises(dl.DownloadError) as info:
        dl.download_file(server.url(name), dest, md5=_md5(body), timeout=TIMEOUT, progress=False, retries=0)
    half = len(body) // 2
    assert part.stat().st_size == half
    assert not dest.exists()
    assert f"after {half} of {len(body)} bytes" in str(info.value) and str(part) in str(info.value)

    dl.download_file(server.url(name), dest, md5=_md5(body), timeout=TIMEOUT, progress=False, retries=0)
    assert server.ranges(name) == [None, f"bytes={half}-"]
    assert dest.read_bytes() == body
    assert not part.exists()


def test_interrupted_transfer_is_resumed_within_one_call(server: FileServer, served: dict[str, bytes],
                                                         tmp_path: Path) -> None:
    name, body = next(iter(served.items()))
    server.mode = "drop_first"
    dest = dl.download_file(server.url(name), tmp_path / name, md5=_md5(body), timeout=TIMEOUT, progress=False,
                            retries=1, expected_size=len(body))
    assert server.ranges(name) == [None, f"bytes={len(body) // 2}-"]
    assert dest.read_bytes() == body


def test_server_ignoring_range_restarts_from_scratch(server: FileServer, served: dict[str, bytes],
                                                     tmp_path: Path) -> None:
    name, body = next(iter(served.items()))
    server.mode = "ignore_range"
    (tmp_path / (name + ".part")).write_bytes(b"not the right bytes" * 100)  # would corrupt a blind append

    dest = dl.download_file(server.url(name), tmp_path / name, md5=_md5(body), timeout=TIMEOUT, progress=False)
    assert server.ranges(name) == ["bytes=1900-"]
    assert dest.read_bytes() == body


def test_complete_part_answered_416_is_verified_and_kept(server: FileServer, served: dict[str, bytes],
                                                         tmp_path: Path) -> None:
    name, body = next(iter(served.items()))
    (tmp_path / (name + ".part")).write_bytes(body)
    dest = dl.download_file(server.url(name), tmp_path / name, md5=_md5(body), timeout=TIMEOUT, progress=False)
    assert server.ranges(name) == [f"bytes={len(body)}-"]
    assert dest.read_bytes() == body


def test_no_resume_discards_partial_file(server: FileServer, served: dict[str, bytes], tmp_path: Path) -> None:
    name, body = next(iter(served.items()))
    (tmp_path / (name + ".part")).write_bytes(body[:1000])
    dl.download_file(server.url(name), tmp_path / name, md5=_md5(body), resume=False, timeout=TIMEOUT,
                     progress=False)
    assert server.ranges(name) == [None]


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_checksum_mismatch_deletes_part_and_names_both_hashes(server: FileServer, served: dict[str, bytes],
                                                             tmp_path: Path, algorithm: str) -> None:
    name, body = next(iter(served.items()))
    wrong = "0" * (32 if algorithm == "md5" else 64)
    with pytest.raises(dl.ChecksumError) as info:
        dl.download_file(server.url(name), tmp_path / name, timeout=TIMEOUT, progress=False, **{algorithm: wrong})
    message = str(info.value)
    assert server.url(name) in message
    assert f"expected {algorithm} {wrong}, got {hashlib.new(algorithm, body).hexdigest()}" in message
    assert not (tmp_path / name).exists()
    assert not (tmp_path / (name + ".part")).exists()


def test_mirror_serving_another_size_is_rejected_before_download(server: FileServer, served: dict[str, bytes],
                                                                 tmp_path: Path) -> None:
    name, body = next(iter(served.items()))
    with pytest.raises(dl.DownloadError, match=f"is {len(body)} bytes but .* should be 123 bytes"):
        dl.download_file(server.url(name), tmp_path / name, expected_size=123, timeout=TIMEOUT, progress=False)
    assert not (tmp_path / name).exists()


def test_existing_wrong_file_is_replaced(server: FileServer, served: dict[str, bytes], tmp_path: Path) -> None:
    name, body = next(iter(served.items()))
    (tmp_path / name).write_bytes(b"stale")
    dl.download_file(server.url(name), tmp_path / name, md5=_md5(body), timeout=TIMEOUT, progress=False)
    assert (tmp_path / name).read_bytes() == body


def test_stalled_server_times_out(server: FileServer, served: dict[str, bytes], tmp_path: Path) -> None:
    name = next(iter(served))
    server.mode = "stall"
    t0 = time.monotonic()
    with pytest.raises(dl.DownloadError, match=r"no data for 0\.3 s"):
        dl.download_file(server.url(name), tmp_path / name, timeout=0.3, progress=False, retries=0)
    assert time.monotonic() - t0 < 3


def test_unreachable_host_message(closed_port_url: str, tmp_path: Path) -> None:
    url = f"{closed_port_url}/VOCtrainval_06-Nov-2007.tar"
    t0 = time.monotonic()
    with pytest.raises(dl.DownloadError) as info:
        dl.download_file(url, tmp_path / "a.tar", timeout=TIMEOUT, progress=False)
    assert time.monotonic() - t0 < 3
    message = str(info.value)
    assert message.startswith("Could not reach 127.0.0.1:")
    assert url in message
    assert "a.tar.part" in message and "resumed" in message
    assert "--data ROOT" in message and "JETSON_COMPRESS_DATA" in message
    assert info.value.transient
    assert not (tmp_path / "a.tar.part").exists()  # no empty leftovers


# ---------------------------------------------------------------------------------------------------- extract


def _raw_tar(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize("members, why", [
    ([_file("ok.txt"), _file("../evil")], "contains '..'"),
    ([_file("VOCdevkit/../../evil")], "contains '..'"),
    ([_file("/tmp/evil")], "absolute path"),
    ([_link("link", "../evil", tarfile.SYMTYPE)], "symbolic link"),
    ([_link("link", "/etc/passwd", tarfile.SYMTYPE)], "symbolic link"),
    ([_link("hard", "../evil", tarfile.LNKTYPE)], "hard link"),
    ([_link("d", ".", tarfile.SYMTYPE), _file("d/x")], "through the symbolic link"),
])
def test_extract_refuses_members_escaping_destination(tmp_path: Path, members: list[tarfile.TarInfo],
                                                      why: str) -> None:
    archive = tmp_path / "bad.tar"
    _raw_tar(archive, members)
    dest = tmp_path / "root" / "inner"
    with pytest.raises(dl.UnsafeArchiveError, match=why):
        dl.extract_tar(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "root" / "evil").exists() and not (tmp_path / "evil").exists()


def test_truncated_archive_leaves_nothing_extracted(voc_archives: dict[str, dict[str, bytes]],
                                                    tmp_path: Path) -> None:
    body = _tar(voc_archives["VOCtrainval_tiny.tar"])
    archive = tmp_path / "cut.tar"
    archive.write_bytes(body[: len(body) * 2 // 3])  # ends inside the JPEG data
    dest = tmp_path / "root"
    with pytest.raises(dl.UnsafeArchiveError, match="corrupt or truncated|truncated"):
        dl.extract_tar(archive, dest)
    assert list(dest.iterdir()) == []


# -------------------------------------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jetson-compress")
    data_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_offline_prints_one_message_and_exits_2(closed_port_url: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "_check_free_space", lambda *a: None)  # the real archives need 1.7 GiB
    args = _parse(["data", "download", "voc2007", "--root", str(tmp_path), "--mirror", closed_port_url,
                   "--no-progress", "--timeout", str(TIMEOUT)])
    assert args.func is data_cmd.run
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "Could not reach 127.0.0.1:" in err
    assert f"{closed_port_url}/VOCtrainval_06-Nov-2007.tar" in err
    assert "JETSON_COMPRESS_DATA" in err and "--data ROOT" in err
    assert "Traceback" not in err


def test_cli_download_succeeds(server: FileServer, served: dict[str, bytes], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(dl.DATASETS, "tinyvoc", _spec(served, [server.base_url]))
    args = _parse(["data", "download", "tinyvoc", "--root", str(tmp_path / "d"), "--no-progress",
                   "--timeout", str(TIMEOUT)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "d" / "VOCdevkit" / "VOC2007") in out
    assert (tmp_path / "d" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").is_file()


def test_cli_unknown_dataset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["data", "download", "imagenet", "--root", str(tmp_path)])
    assert args.func(args) == 2
    assert "unknown dataset 'imagenet'; known datasets: voc2007" in capsys.readouterr().err


def test_cli_list_shows_voc2007_with_checksums(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["data", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "c52e279531787c972589f7e41ab4ae64" in out and "b6e924de25625d8de591ea690078ad9f" in out
