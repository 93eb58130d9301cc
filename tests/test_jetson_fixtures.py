"""Shared by the tests/test_jetson_*.py modules (no tests here): one small two-variant deploy bundle per session,
made the way a user makes one (`jetson-compress export` from checkpoints), and the real video."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from tests.conftest import SHARED_DATA
from tests.nets import TINY_DETECTOR, torch_threads

VIDEO = SHARED_DATA / "video" / "eth-sunnyday.mp4"
VIDEO_FRAMES = 354
# A narrow detector at 128 x 128 (the same graph as the 320 one) exports in a second and infers in milliseconds.
SMALL = {**TINY_DETECTOR, "input_size": 128}


@functools.lru_cache(maxsize=None)
def jetson_bundle() -> Path:
    """A bundle with variants ``baseline`` and ``pruned`` (narrower), written by ``jetson-compress export``."""
    from compress.checkpoint import save_checkpoint
    from jetson_compress.cli import main
    from tests.test_export_helpers import randomized_detector

    root = Path(tempfile.mkdtemp(prefix="jc-jetson-tests-"))
    atexit.register(shutil.rmtree, root, True)
    with torch_threads(1):
        base, pruned = root / "base.pt", root / "pruned.pt"
        save_checkpoint(base, randomized_detector(seed=30, **SMALL), ["person"])
        save_checkpoint(pruned, randomized_detector(seed=31, **{**SMALL, "width_mult": 0.25}), ["person"])
        bundle = root / "bundle"
        rc = main(["export", "--checkpoint", str(base), "--variant", f"pruned={pruned}", "--bundle", str(bundle)])
    assert rc == 0, "jetson-compress export failed"
    return bundle


def require_video() -> Path:
    import pytest

    if not VIDEO.is_file():
        pytest.fail(f"{VIDEO} is missing: the tests expect ../shared/data beside the repository")
    return VIDEO
