#!/usr/bin/env bash
# Two Python 3.6 environments with what a Jetson Nano on JetPack 4.6 has, for tests/test_device_runtime_floor.py:
#
#   DIR/jetpack  numpy 1.13.3 + OpenCV 4.1.1   what JetPack 4.6 installs (Ubuntu 18.04's python3-numpy, JetPack's
#                                              OpenCV; TensorRT and pycuda cannot be installed off a Jetson)
#   DIR/ort      numpy 1.19.5 + OpenCV 4.1.1 + onnxruntime 1.10.0   the stand-in backend: 1.10 is the last
#                                              onnxruntime, and 1.19 the last numpy, published for Python 3.6
#
# OpenCV comes as opencv-python-headless 4.1.1.26, the same OpenCV release built without GStreamer.
#
#   bash tests/device_floor/make_envs.sh [DIR]     # DIR defaults to .venv-py36 in the repository root
#
# The Python 3.6 interpreter: $PYTHON36, else python3.6 on PATH, else one of pyenv's 3.6.x. Exit status 3 when there
# is none (nothing is created; the floor tests then skip and say why); any other failure exits 1.
# Environments that already import the pinned versions are kept as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:-.venv-py36}"

is_python36() {
    "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 6))' >/dev/null 2>&1
}

find_python36() {
    local candidate root="${PYENV_ROOT:-$HOME/.pyenv}"
    # python3.6 on PATH (a pyenv shim there may refuse to run: then pyenv's own folders are tried).
    for candidate in "$(command -v python3.6 2>/dev/null || true)" "$root"/versions/3.6.*/bin/python3.6; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && is_python36 "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ -n "${PYTHON36:-}" ]; then
    if ! is_python36 "$PYTHON36"; then
        echo "make_envs: PYTHON36=$PYTHON36 does not run as a Python 3.6" >&2
        exit 1
    fi
    PY36="$PYTHON36"
elif ! PY36="$(find_python36)"; then
    echo "make_envs: no Python 3.6 found (set PYTHON36, put python3.6 on PATH, or 'pyenv install 3.6.15')" >&2
    exit 3
fi

# make_env NAME CHECK PACKAGES...: CHECK is Python code that exits 0 when the environment is complete.
make_env() {
    local name="$1" check="$2"
    shift 2
    local env="$DIR/$name"
    if [ -x "$env/bin/python" ] && "$env/bin/python" -c "$check" 2>/dev/null; then
        echo "make_envs: $env is ready"
        return 0
    fi
    rm -rf "$env"
    "$PY36" -m venv "$env"
    # pip < 19.3 cannot read manylinux2014 wheels (onnxruntime's); 21.3.1 is the last pip for Python 3.6.
    "$env/bin/python" -m pip install -q --disable-pip-version-check 'pip==21.3.1'
    "$env/bin/python" -m pip install -q --disable-pip-version-check "$@"
    if ! "$env/bin/python" -c "$check"; then
        echo "make_envs: $env does not import the pinned versions after installing them" >&2
        exit 1
    fi
    echo "make_envs: $env created ($("$env/bin/python" --version 2>&1): $*)"
}

mkdir -p "$DIR"
make_env jetpack \
    "import numpy, cv2, sys; sys.exit(numpy.__version__ != '1.13.3' or cv2.__version__ != '4.1.1')" \
    numpy==1.13.3 opencv-python-headless==4.1.1.26
make_env ort \
    "import numpy, cv2, onnxruntime, sys; sys.exit(numpy.__version__ != '1.19.5' or cv2.__version__ != '4.1.1' \
or onnxruntime.__version__ != '1.10.0')" \
    numpy==1.19.5 opencv-python-headless==4.1.1.26 onnxruntime==1.10.0
