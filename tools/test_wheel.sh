#!/usr/bin/env bash
# Install a built fastrnn wheel into a clean venv and run the conformance tests against the
# installed package, from outside the source tree (so the checkout is not what gets imported).
#
#   tools/test_wheel.sh [WHEEL]      (default: the one dist/fastrnn-*.whl; `make test-wheel`)
#
# Environment: PYTHON (interpreter the venv is made from; must match the wheel's cpXY tag),
# WHEEL_VENV (default build/wheel-venv, recreated every run), TORCH_VERSION (default 2.13.0),
# EXPECT_BACKENDS (default cpp,numba: these must load from the wheel, or the run fails),
# TESTS (test files under tests/), PYTEST_ARGS (extra pytest arguments).
# WHEEL_SITE=system: for a machine without a registry (the GPU machine): the venv sees the system's
# packages (its torch, pytest, ...) and only the wheel is installed, with --no-deps, e.g.
#   WHEEL_SITE=system PYTHON=python3 EXPECT_BACKENDS=cpp,cuda TESTS="test_conformance.py gpu" \
#     PYTEST_ARGS="-m 'gpu or not gpu'" tools/test_wheel.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=${WHEEL_VENV:-$REPO/build/wheel-venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXPECT_BACKENDS=${EXPECT_BACKENDS:-cpp,numba}
TESTS=${TESTS:-test_conformance.py test_cells.py test_gradcheck.py test_errors.py test_dispatch.py}
WHEEL_SITE=${WHEEL_SITE:-clean}

if [ $# -ge 1 ]; then
  WHEEL=$(realpath "$1")
else
  shopt -s nullglob
  wheels=("$REPO"/dist/fastrnn-*.whl)
  [ ${#wheels[@]} -eq 1 ] || { echo "test_wheel: expected one dist/fastrnn-*.whl, found ${#wheels[@]} (run make wheel)" >&2; exit 1; }
  WHEEL=${wheels[0]}
fi
case "$VENV" in /*) ;; *) VENV=$REPO/$VENV ;; esac
echo "test_wheel: $WHEEL into $VENV"

start=$SECONDS
rm -rf "$VENV"
if [ "$WHEEL_SITE" = system ]; then
  "$PYTHON" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"
else
  "$PYTHON" -m venv "$VENV"
  # Not editable, no source tree: the wheel file itself, plus what the tests import.
  # --no-compile: byte-compiling all of torch at install is most of the install time, and the
  # tests import a small part of it.
  "$VENV/bin/python" -m pip install -q --no-compile "torch==$TORCH_VERSION" "$WHEEL" pytest hypothesis \
    "numba>=0.59" scipy
fi
echo "test_wheel: venv ready in $((SECONDS - start)) s"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"  # python puts the current folder on sys.path: make it one with no fastrnn in it

# pytest plugin: before any test runs, the fastrnn in use must be the installed one, and the
# source tree must not be importable.  pytest itself prepends tests/ (for `from conftest import`),
# which holds no package, so that is allowed.
cat > fastrnn_wheel_guard.py <<EOF
import os, sys, sysconfig

REPO = os.path.realpath("$REPO")
SITE = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}


def _check():
    import fastrnn
    where = os.path.realpath(fastrnn.__file__)
    bad = [p for p in sys.path if p and os.path.realpath(p) in (REPO, os.path.join(REPO, "fastrnn"))]
    if not any(where.startswith(s + os.sep) for s in SITE) or bad:
        raise SystemExit(f"test_wheel: fastrnn comes from {where} (site-packages: {sorted(SITE)}); "
                         f"source tree on sys.path: {bad}")
    return where


def pytest_configure(config):
    print(f"test_wheel: testing fastrnn at {_check()}")


def pytest_collection_finish(session):
    _check()  # again, after the test modules (and tests/conftest.py) were imported
EOF

"$VENV/bin/python" -c "
import sys, os
assert not any(os.path.realpath(p or '.') == os.path.realpath('$REPO') for p in sys.path), sys.path
import fastrnn, fastrnn._ext
print('test_wheel: import fastrnn ->', fastrnn.__file__)
print('test_wheel: import fastrnn._ext ->', fastrnn._ext.__file__)
"
"$VENV/bin/python" -m fastrnn.info

args=()
for t in $TESTS; do args+=("$REPO/tests/$t"); done
eval "extra=(${PYTEST_ARGS:-})"  # shell words, so quoted arguments ("-m 'gpu or not gpu'") survive
# -p no:cacheprovider and no bytecode: write nothing into the checkout; PYTHONPATH only adds the guard.
export PYTHONPATH="$WORK" PYTHONDONTWRITEBYTECODE=1 FASTRNN_EXPECT_BACKENDS="$EXPECT_BACKENDS"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -p fastrnn_wheel_guard ${extra[@]+"${extra[@]}"} "${args[@]}"
echo "test_wheel: passed in $((SECONDS - start)) s (venv + tests)"
