"""Every pycuda name the device code uses, checked against the source of the pycuda the Nano gets (2022.1).

``tests/fixtures/pycuda_api/2022.1.json`` lists what pycuda 2022.1's ``src/wrapper/wrap_cudadrv.cpp`` registers
(module functions; methods and properties per class) with the CUDA version each name's ``#if CUDAPP_CUDA_VERSION``
guards require, plus ``pycuda/driver.py``'s functions — read from the release's source on PyPI by
``tests/fixtures/list_pycuda_api.py`` (pycuda's C++ needs a CUDA toolkit of its era to build; nothing was built).
Checked: every name in ``USED`` exists there for CUDA 10.2 (JetPack 4.6); every API name of the test double
``FakePycuda`` (tests/test_trt_compat.py) is in ``USED``; every name in ``USED`` occurs in the device code.
What this does not prove: signatures and behaviour (jetson/NEVER_RUN_ON_DEVICE.md).
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.test_trt_compat import FakePycuda
from tests.test_trt_real_api import assert_used_in_code, public_names

LISTING = json.loads((REPO / "tests" / "fixtures" / "pycuda_api" / "2022.1.json").read_text())
JETPACK_CUDA = 10020  # CUDA 10.2, as CUDAPP_CUDA_VERSION counts it

# (where, name): "driver" is the pycuda.driver module (its functions and classes), else a class of it.
USED = [
    ("driver", "init"), ("driver", "Device"), ("driver", "Stream"), ("driver", "Event"), ("driver", "mem_alloc"),
    ("driver", "mem_get_info"), ("driver", "pagelocked_empty"), ("driver", "memcpy_htod_async"),
    ("driver", "memcpy_dtoh_async"), ("driver", "get_version"), ("driver", "get_driver_version"),
    ("Device", "count"), ("Device", "name"), ("Device", "compute_capability"), ("Device", "retain_primary_context"),
    ("Context", "push"), ("Context", "pop"),
    ("Stream", "synchronize"), ("Stream", "handle"),
    ("Event", "record"), ("Event", "synchronize"), ("Event", "time_till"),
    ("DeviceAllocation", "free"),  # what mem_alloc returns
    ("PagelockedHostAllocation", "free"),  # the .base of what pagelocked_empty returns
]
BOOKKEEPING = {"pointer", "index"}  # what the double records for the tests' assertions


def required_cuda(where: str, name: str):
    """The CUDA version pycuda 2022.1 needs for the name (0: any), or None where it does not have it."""
    if where == "driver":
        if name in LISTING["classes"]:
            return 0
        return LISTING["functions"].get(name)
    return LISTING["classes"].get(where, {}).get(name)


def test_listing_is_pycuda_2022_1():
    assert LISTING["version"] == "2022.1" and "PyPI" in LISTING["source"]
    assert len(LISTING["functions"]) > 50 and len(LISTING["classes"]) > 20


@pytest.mark.parametrize("where, name", USED, ids=[f"{w}.{n}" for w, n in USED])
def test_used_name_exists_in_pycuda_2022_1_for_cuda_10_2(where, name):
    need = required_cuda(where, name)
    assert need is not None, f"pycuda 2022.1 has no {where}.{name}"
    assert need <= JETPACK_CUDA, f"pycuda 2022.1 offers {where}.{name} only from CUDA {need}"


def test_the_double_offers_only_listed_names():
    _, driver = FakePycuda.module()

    def public(obj):
        return public_names(obj, BOOKKEEPING)

    offered = {("driver", name) for name in public(driver)}
    classes = {"Device": "Device", "Stream": "Stream", "Event": "Event", "mem_alloc": "DeviceAllocation"}
    for name, where in classes.items():
        offered |= {(where, attribute) for attribute in public(getattr(driver, name))}
    offered |= {("Context", attribute) for attribute in public(driver.Device(0).retain_primary_context())}
    assert offered - set(USED) == set()
    assert len(offered) >= 15  # the double was really read


def test_every_listed_name_is_used_by_the_device_code():
    assert_used_in_code(USED, [path for package in ("trt", "runtime", "jetson")
                               for path in sorted((REPO / package).glob("*.py"))])
