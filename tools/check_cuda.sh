#!/usr/bin/env bash
# Proves the CUDA build compiles, without a GPU and without linking: every source in csrc/cuda/
# is compiled to an object, the .cu files by nvcc for sm_80 and sm_90, the host .cpp files by the
# C++ compiler with torch's and CUDA's include directories (what cmake/fastrnn_cuda.cmake does).
#
#   bash tools/check_cuda.sh [python]        (python: the one whose torch to compile against;
#                                             default $PYTHON, else python3)
# Env: NVCC (default: nvcc on PATH), CXX (default: g++), CUDA_ARCHS (default "80 90").
# Exits nonzero on the first compile error; prints how long it took.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-${PYTHON:-python3}}"
NVCC="${NVCC:-nvcc}"
CXX="${CXX:-g++}"
ARCHS="${CUDA_ARCHS:-80 90}"
start=$(date +%s)

command -v "$NVCC" >/dev/null || { echo "check_cuda: nvcc not found (set NVCC or put it on PATH)" >&2; exit 2; }
# torch's include dirs, its C++ ABI flag, and Python's headers (torch/extension.h includes pybind11).
mapfile -t INFO < <("$PY" - <<'PYEOF'
import sysconfig, torch
from torch.utils.cpp_extension import include_paths
print(" ".join("-I" + p for p in include_paths()))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(sysconfig.get_paths()["include"])
print(torch.__version__)
import os
# A CPU-only torch ships c10/cuda headers without the generated cuda_cmake_macros.h; on Linux it
# only defines C10_CUDA_BUILD_SHARED_LIBS, which matters for Windows dllexport, so skip it there.
have = os.path.exists(os.path.join(include_paths()[0], "c10", "cuda", "impl", "cuda_cmake_macros.h"))
print("" if have else "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
# The C++ standard torch's headers need (TorchConfig.cmake: 17 up to torch 2.9-ish, 20 later).
import re
cfg = os.path.join(os.path.dirname(torch.__file__), "share", "cmake", "Torch", "TorchConfig.cmake")
m = re.search(r"CXX_STANDARD (\d+)", open(cfg).read()) if os.path.exists(cfg) else None
print(max(17, int(m.group(1))) if m else 17)
PYEOF
)
TORCH_INC="${INFO[0]}"
ABI="${INFO[1]}"
PY_INC="${INFO[2]}"
C10_FLAG="${INFO[4]:-}"
CXX_STD="${INFO[5]:-17}"
NVCC_DIR="$(dirname "$(readlink -f "$(command -v "$NVCC")")")"
CUDA_INC=""
for d in "${CUDA_HOME:-}/include" "$NVCC_DIR/../include" /usr/local/cuda/include; do
  if [ -f "$d/cuda_runtime_api.h" ]; then CUDA_INC="$(cd "$d" && pwd)"; break; fi
done
[ -n "$CUDA_INC" ] || { echo "check_cuda: cuda_runtime_api.h not found (set CUDA_HOME)" >&2; exit 2; }

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "check_cuda: $("$NVCC" --version | tail -1); torch ${INFO[3]} (host C++$CXX_STD); CUDA headers $CUDA_INC; archs $ARCHS"

GENCODE=()
for a in $ARCHS; do GENCODE+=(-gencode "arch=compute_${a},code=sm_${a}"); done
COMMON=(-DTORCH_EXTENSION_NAME=_cuda_ext -DTORCH_API_INCLUDE_EXTENSION_H "-D_GLIBCXX_USE_CXX11_ABI=$ABI"
        $TORCH_INC $C10_FLAG "-I$PY_INC" "-I$CUDA_INC" "-I$ROOT/csrc/cuda")

shopt -s nullglob
n=0
for src in "$ROOT"/csrc/cuda/*.cu; do
  echo "  nvcc  $(basename "$src")"
  "$NVCC" -std=c++17 -O3 -c "${GENCODE[@]}" -Xcompiler -fPIC "${COMMON[@]}" "$src" -o "$OUT/$(basename "$src").o"
  n=$((n + 1))
done
for src in "$ROOT"/csrc/cuda/*.cpp; do
  echo "  $CXX $(basename "$src")"
  # emulate.cpp is the tests' CPU stand-in for the kernels: it is compiled with its macro.
  extra=()
  [ "$(basename "$src")" = emulate.cpp ] && extra=(-DFASTRNN_CUDA_EMULATE)
  "$CXX" "-std=c++$CXX_STD" -O2 -fPIC -c "${COMMON[@]}" "${extra[@]}" "$src" \
    -o "$OUT/$(basename "$src").o"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "check_cuda: no sources in csrc/cuda" >&2; exit 1; }
echo "check_cuda: $n sources compiled in $(( $(date +%s) - start )) s"
