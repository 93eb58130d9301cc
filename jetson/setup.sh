#!/usr/bin/env bash
# Set up a Jetson Nano (JetPack 4.6.x, L4T R32.7.x) to run the on-device side of jetson-compress.
#
# What it does, in order (each step prints what it found and stops with a clear message when something is wrong):
#   1. checks that this is a Jetson running L4T R32 (JetPack 4.x) from /etc/nv_tegra_release
#   2. checks that python3 is Python 3.6 (JetPack's TensorRT bindings exist for Python 3.6 only)
#   3. checks that `import tensorrt` works, and numpy
#   4. checks JetPack's OpenCV (cv2 with GStreamer); it NEVER installs pip's opencv-python, which is built without
#      GStreamer: installing it on the Nano shadows JetPack's OpenCV and breaks CSI cameras (nvarguscamerasrc)
#   5. builds pycuda from source against /usr/local/cuda (no wheels exist for the Nano; 2022.1 is the newest
#      release that supports Python 3.6): pip3 install --user 'pycuda<=2022.1' with nvcc on PATH
#   6. with --max-perf: sudo nvpmodel -m 0 (MAXN, 10 W) and sudo jetson_clocks (clocks pinned at maximum)
# Then run: python3 -m jetson.selftest
#
# Environment overrides (for unusual images, and for the tests that run this script on a normal machine):
#   NV_TEGRA_RELEASE  release file (default /etc/nv_tegra_release)
#   PYTHON            Python interpreter (default python3)
#   CUDA_ROOT         CUDA installation (default /usr/local/cuda)
#   SUDO              command used for root steps (default sudo)
#
# Exit codes: 0 ready; 1 a check failed (the message says what to do); 2 bad arguments.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash jetson/setup.sh [--max-perf] [--check-only] [--skip-pycuda] [--help]

Prepare a Jetson Nano (JetPack 4.6.x) for `python3 -m jetson.benchmark` and `python3 -m jetson.camera_demo`.

  --max-perf     also set the maximum power mode and clocks: sudo nvpmodel -m 0 && sudo jetson_clocks
                 (do this before measuring; it lasts until reboot)
  --check-only   only check, install nothing
  --skip-pycuda  do not build pycuda (TensorRT inference needs it; ONNX Runtime does not)
  --help         this text

Never installs pip's opencv-python: it has no GStreamer, so it would break CSI cameras. Use JetPack's OpenCV.
Environment: NV_TEGRA_RELEASE, PYTHON, CUDA_ROOT, SUDO override the defaults (see the top of this script).
EOF
}

MAX_PERF=0
CHECK_ONLY=0
SKIP_PYCUDA=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --max-perf) MAX_PERF=1 ;;
        --check-only) CHECK_ONLY=1 ;;
        --skip-pycuda) SKIP_PYCUDA=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NV_TEGRA_RELEASE="${NV_TEGRA_RELEASE:-/etc/nv_tegra_release}"
PYTHON="${PYTHON:-python3}"
CUDA_ROOT="${CUDA_ROOT:-/usr/local/cuda}"
SUDO="${SUDO:-sudo}"
PYCUDA_SPEC='pycuda<=2022.1'

ok() { echo "[ ok ] $*"; }
info() { echo "[info] $*"; }
fail() {
    echo "[FAIL] $*" >&2
    exit 1
}

# 1. Jetson / L4T --------------------------------------------------------------------------------------------------
if [ ! -f "$NV_TEGRA_RELEASE" ]; then
    fail "not a Jetson: $NV_TEGRA_RELEASE not found. This script sets up a Jetson Nano with JetPack 4.6.x. On a desktop, install numpy, opencv-python-headless and onnxruntime with pip and use --backend ort (or install TensorRT and pycuda yourself)."
fi
release_line="$(head -n 1 "$NV_TEGRA_RELEASE")"
if [[ "$release_line" =~ R([0-9]+)[[:space:]]*\(release\),[[:space:]]*REVISION:[[:space:]]*([0-9.]+) ]]; then
    l4t_major="${BASH_REMATCH[1]}"
    l4t_revision="${BASH_REMATCH[2]%.}"
else
    fail "$NV_TEGRA_RELEASE does not look like an L4T release file (first line: '$release_line')"
fi
l4t="${l4t_major}.${l4t_revision}"
case "$l4t" in
    32.6.1) jetpack="4.6" ;;
    32.7.1) jetpack="4.6.1" ;;
    32.7.2) jetpack="4.6.2" ;;
    32.7.3) jetpack="4.6.3" ;;
    32.7.4) jetpack="4.6.4" ;;
    32.7.5) jetpack="4.6.5" ;;
    32.7.6) jetpack="4.6.6" ;;
    *) jetpack="unknown" ;;
esac
if [ "$l4t_major" != "32" ]; then
    fail "L4T R$l4t is not JetPack 4.x: this script targets the original Jetson Nano (JetPack 4.6.x, L4T R32.7). On newer Jetsons install pycuda with pip for their Python and run python3 -m jetson.selftest."
fi
ok "Jetson: L4T R$l4t (JetPack $jetpack)"
if [ "$jetpack" = "unknown" ] || [ "$jetpack" = "4.6" ]; then
    info "JetPack 4.6.1 or newer (TensorRT 8.2.1) is recommended; JetPack 4.6.0 has TensorRT 8.0.1"
fi

# 2. Python 3.6 ----------------------------------------------------------------------------------------------------
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    fail "$PYTHON not found (JetPack's Ubuntu 18.04 has python3 = Python 3.6.9)"
fi
py_version="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
case "$py_version" in
    3.6.*) ok "Python $py_version ($(command -v "$PYTHON"))" ;;
    *) fail "$PYTHON is Python $py_version, but JetPack 4.6's TensorRT bindings exist for Python 3.6 only; run this with the system python3 (/usr/bin/python3, 3.6.9), not a venv or conda Python" ;;
esac

# 3. TensorRT and numpy -------------------------------------------------------------------------------------------
if trt_version="$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)"; then
    ok "TensorRT $trt_version"
else
    fail "'import tensorrt' fails with $PYTHON. It is part of JetPack: sudo apt-get install python3-libnvinfer (or the whole SDK: sudo apt-get install nvidia-jetpack)"
fi
if np_version="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)"; then
    ok "numpy $np_version"
else
    fail "numpy is missing: sudo apt-get install python3-numpy"
fi

# 4. OpenCV with GStreamer (never pip's opencv-python) --------------------------------------------------------------
# GStreamer support is read by jetson.camera.cv2_video_backends, the parser the camera code itself uses (it knows the
# one-line OpenCV 4.x layout and the OpenCV 3.x layout with indented components).
if cv2_info="$("$PYTHON" - "$REPO_ROOT" 2>/dev/null <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[1])
import cv2
from jetson.camera import cv2_video_backends
gstreamer = cv2_video_backends(cv2.getBuildInformation()).get("GStreamer")
print(cv2.__version__, cv2.__file__, "YES" if gstreamer else "NO")
PYEOF
)"; then
    read -r cv2_version cv2_file cv2_gst <<<"$cv2_info"
    if [ "$cv2_gst" = "YES" ]; then
        ok "OpenCV $cv2_version with GStreamer ($cv2_file)"
    else
        fail "OpenCV $cv2_version at $cv2_file has no GStreamer, so CSI cameras cannot be opened. It is probably pip's opencv-python: pip3 uninstall opencv-python opencv-python-headless (JetPack's OpenCV 4.1.1 with GStreamer is then used)"
    fi
else
    fail "cv2 cannot be imported: install JetPack's OpenCV (sudo apt-get install nvidia-opencv). Do not pip install opencv-python: it has no GStreamer and breaks CSI cameras"
fi

# 5. pycuda --------------------------------------------------------------------------------------------------------
if pycuda_version="$("$PYTHON" -c 'import pycuda; print(pycuda.VERSION_TEXT)' 2>/dev/null)"; then
    ok "pycuda $pycuda_version (already installed)"
elif [ "$SKIP_PYCUDA" = "1" ]; then
    info "pycuda not installed (--skip-pycuda): TensorRT inference will not work, --backend ort will"
else
    if [ ! -x "$CUDA_ROOT/bin/nvcc" ]; then
        fail "nvcc not found at $CUDA_ROOT/bin/nvcc: install the CUDA toolkit from JetPack (sudo apt-get install cuda-toolkit-10-2) or set CUDA_ROOT"
    fi
    export CUDA_ROOT
    export PATH="$CUDA_ROOT/bin:$PATH"
    export CPATH="$CUDA_ROOT/include${CPATH:+:$CPATH}"
    export LIBRARY_PATH="$CUDA_ROOT/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
    ok "nvcc: $("$CUDA_ROOT/bin/nvcc" --version | tail -n 1)"
    py_include="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    if [ ! -f "$py_include/Python.h" ]; then
        fail "Python headers missing ($py_include/Python.h); pycuda builds from source: sudo apt-get install python3-dev build-essential"
    fi
    if [ "$CHECK_ONLY" = "1" ]; then
        info "pycuda is not installed (--check-only: would run pip3 install --user '$PYCUDA_SPEC' with CUDA_ROOT=$CUDA_ROOT)"
    else
        info "building $PYCUDA_SPEC against $CUDA_ROOT (takes 10-20 minutes on a Nano)"
        "$PYTHON" -m pip install --user "$PYCUDA_SPEC"
        pycuda_version="$("$PYTHON" -c 'import pycuda; print(pycuda.VERSION_TEXT)')" \
            || fail "pycuda was built but does not import; see the pip output above"
        ok "pycuda $pycuda_version"
    fi
fi

# 6. power mode and clocks -----------------------------------------------------------------------------------------
if [ "$MAX_PERF" = "1" ]; then
    if [ "$CHECK_ONLY" = "1" ]; then
        info "--check-only: would run '$SUDO nvpmodel -m 0' and '$SUDO jetson_clocks'"
    else
        command -v nvpmodel >/dev/null 2>&1 || fail "nvpmodel not found (it comes with L4T)"
        $SUDO nvpmodel -m 0
        $SUDO jetson_clocks
        ok "power mode: $(nvpmodel -q 2>/dev/null | grep -m 1 'NV Power Mode' || echo 'set (nvpmodel -q to check)'); clocks pinned by jetson_clocks until reboot"
    fi
elif command -v nvpmodel >/dev/null 2>&1; then
    info "current $(nvpmodel -q 2>/dev/null | grep -m 1 'NV Power Mode' || echo 'power mode unknown'); use --max-perf before measuring"
fi

echo
ok "ready: now run  $PYTHON -m jetson.selftest"
