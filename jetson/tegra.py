"""Is this a Jetson? Read from ``/etc/nv_tegra_release`` (or the file named by ``$NV_TEGRA_RELEASE``).

The override exists so that jetson/setup.sh, the self-test and their tests agree on one path and can be pointed at a
fake release file. Device module: Python 3.6 syntax, standard library only; never imports torch or onnx.
"""

import os

__all__ = ["DEFAULT_TEGRA_RELEASE", "tegra_release_path", "on_jetson"]

DEFAULT_TEGRA_RELEASE = "/etc/nv_tegra_release"


def tegra_release_path():
    """``$NV_TEGRA_RELEASE`` when set, else ``/etc/nv_tegra_release`` (the same rule as jetson/setup.sh)."""
    return os.environ.get("NV_TEGRA_RELEASE") or DEFAULT_TEGRA_RELEASE


def on_jetson():
    return os.path.isfile(tegra_release_path())
