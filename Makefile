# fastrnn: the README's two commands are `make test` and `make bench`; each sets itself up in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.6.0
export MAX_JOBS ?= 2
# make test fails if these backends did not build/import (so their tests cannot silently vanish)
EXPECT_BACKENDS ?= cpp,numba
PYTEST ?= $(PY) -m pytest -q -p no:cacheprovider

.PHONY: setup test bench test-gpu gpu-check fuzz sanitize clean wheel test-wheel check-cuda

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: setup.py pyproject.toml $(wildcard CMakeLists.txt csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q pybind11 cmake ninja numpy
	$(PY) -m pip install -q "triton==$(TRITON_VERSION)" || echo "fastrnn: triton not installable; its interpreter tests will be skipped"
	FASTRNN_REQUIRE_EXT=1 $(PY) -m pip install -q --no-build-isolation -e ".[test,bench]"
	touch $@

test: setup
	FASTRNN_EXPECT_BACKENDS=$(EXPECT_BACKENDS) $(PYTEST) tests
	@if $(PY) -c "import triton" 2>/dev/null && [ -f tests/test_triton.py ]; then \
		TRITON_INTERPRET=1 $(PYTEST) tests/test_triton.py; fi
	@$(MAKE) --no-print-directory check-cuda
	@$(MAKE) --no-print-directory test-wheel

# The quick grid (layer calls side by side, float32 + bf16/fp16/autocast), the quick whole-model
# set (training steps, torch.nn and fastrnn each in its own process), one frame per call
# (fastrnn.Stream against the modules and ONNX Runtime), the custom cells' quick set (LayerNorm
# LSTM/GRU, peephole, against their Python loops), then the report.
bench: setup
	$(PY) -m fastrnn.bench --quick
	$(PY) -m fastrnn.bench models --quick
	$(PY) -m fastrnn.bench stream
	$(PY) benchmarks/bench_custom.py --quick
	$(PY) -m fastrnn.bench report

# On the lent GPU machine (README "Running on a GPU"): the python3 found there with its torch and
# Triton, straight from the source tree (no venv, no install, no registry). Here, .venv's python.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_DEADLINE ?= 300
# Correctness, speed and cuDNN's algorithm under a hard deadline; results JSON after every case
# (benchmarks/results/gpu-<device>.json). Without CUDA: the same run on CPU, Triton interpreter.
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m fastrnn.gpucheck --deadline $(GPU_CHECK_DEADLINE)

# GPU tests only (tests/gpu, marker gpu): no CPU suite; the CUDA extension is built (every core,
# this GPU's arch) only when missing or older than its sources.
test-gpu:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m fastrnn.gpucheck build
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m pytest -q -p no:cacheprovider tests/gpu -m gpu

clean:
	rm -rf build build-asan dist *.egg-info fastrnn/_ext*.so

# Long property-based run against torch.nn (CI runs a bounded, seeded subset).
FUZZ_EXAMPLES ?= 2000
fuzz: setup
	FASTRNN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTEST) tests/test_fuzz.py

# The C++ extension under AddressSanitizer + UBSan: built into build-asan/site (a copy of the
# package, so the normal build is untouched) and run against every cpp test.
ASAN_SITE := build-asan/site
sanitize: setup
	rm -rf build-asan && mkdir -p $(ASAN_SITE)
	cp -r fastrnn $(ASAN_SITE)/ && rm -f $(ASAN_SITE)/fastrnn/_ext*.so && cp -r kernels $(ASAN_SITE)/fastrnn/kernels
	cmake -S . -B build-asan/cmake -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFASTRNN_SANITIZE=ON \
		-DPython_EXECUTABLE=$(abspath $(PY)) -DFASTRNN_OUTPUT_DIR=$(abspath $(ASAN_SITE)/fastrnn) >/dev/null
	cmake --build build-asan/cmake --parallel $(MAX_JOBS)
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	PYTHONPATH=$(abspath $(ASAN_SITE)) FASTRNN_EXPECT_BACKENDS=cpp \
		$(PY) tools/pytest_without_editable.py -q -p no:cacheprovider tests -k "cpp or expected_backends_are_built"
	@echo "sanitize: the cpp tests ran clean under ASan+UBSan"

# Wheels.  Built with --no-build-isolation against the torch in $(VENV): the C++ extension links
# libtorch, whose C++ ABI changes between torch releases, so it must be compiled against the
# torch it will run with; pip's isolated build env would download some other torch (or none).
# `make wheel CUDA=1` builds the CUDA wheel (needs nvcc and a CUDA torch; fails if it cannot).
# WHEEL_SETUP= skips `setup` (e.g. on the GPU machine: VENV=.venv-gpu WHEEL_SETUP=).
CUDA ?= 0
DIST ?= dist
WHEEL_VENV ?= build/wheel-venv
WHEEL_SETUP ?= setup
wheel: $(WHEEL_SETUP)
	rm -rf $(DIST)/fastrnn-*.whl build/lib.*
	FASTRNN_REQUIRE_EXT=1 FASTRNN_BUILD_CUDA=$(if $(filter 1,$(CUDA)),1,0) \
		$(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(DIST) .
	@ls -l $(DIST)/fastrnn-*.whl

# The wheel in a clean venv (torch $(TORCH_VERSION) + the wheel + test deps, nothing editable),
# conformance tests run from a temp folder against the installed package.
test-wheel: wheel
	PYTHON=$(abspath $(PY)) WHEEL_VENV=$(WHEEL_VENV) TORCH_VERSION=$(TORCH_VERSION) \
		EXPECT_BACKENDS=$(EXPECT_BACKENDS) tools/test_wheel.sh

# Compiles the CUDA sources with nvcc (no GPU needed); skipped where the script or nvcc is missing.
check-cuda:
	@if [ ! -f tools/check_cuda.sh ]; then echo "check-cuda: skipped (tools/check_cuda.sh not present)"; \
	elif ! command -v nvcc >/dev/null 2>&1; then echo "check-cuda: skipped (nvcc not on PATH)"; \
	else PYTHON=$(abspath $(PY)) bash tools/check_cuda.sh; fi
