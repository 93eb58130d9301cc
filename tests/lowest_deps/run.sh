#!/usr/bin/env bash
# The test suite against the lowest dependency versions pyproject.toml admits (tests/lowest_deps/requirements.txt),
# in a fresh virtual environment (default .venv-lowest): what a user whose environment already holds older
# packages gets, since pip keeps any installed version that satisfies a lower bound. Not part of .ci/run (it would
# double its time); run it after changing a dependency or using a newer API of one.
#
#   bash tests/lowest_deps/run.sh [VENV]        # then: python -m pytest -q, in that environment
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-lowest}"
python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q --only-binary=:all: -r tests/lowest_deps/requirements.txt
# The pins as constraints of the project's own extras: a pin below a pyproject.toml bound fails here.
python -m pip install -q -c tests/lowest_deps/requirements.txt -e '.[host,dev]'
python -m pip check
python -c "import numpy, onnx, onnxruntime, cv2, yaml, matplotlib; print('numpy', numpy.__version__, '| onnx', \
onnx.__version__, '| ort', onnxruntime.__version__, '| cv2', cv2.__version__, '| matplotlib', matplotlib.__version__)"
set +e
python -m pytest -q
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
