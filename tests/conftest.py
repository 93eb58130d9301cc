"""Shared fixtures: the real data in ../shared/data (CI clones the repo with ../shared beside it)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
VOC_SAMPLE = SHARED_DATA / "voc2007-sample" / "VOCdevkit"
PEDESTRIANS = SHARED_DATA / "pedestrians" / "VOCdevkit"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests expect ../shared/data beside the repository")
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a whole test module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    from tests.nets import torch_threads  # lazily: the device-side tests must not need torch

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def voc_sample() -> Path:
    return _require(VOC_SAMPLE)


@pytest.fixture(scope="session")
def pedestrians() -> Path:
    return _require(PEDESTRIANS)


@pytest.fixture()
def voc_copy(tmp_path, voc_sample) -> Path:
    """A writable copy of the genuine VOC2007 sample, for corrupting."""
    dst = tmp_path / "VOCdevkit"
    shutil.copytree(voc_sample, dst)
    return dst
