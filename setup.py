"""Build entry point: the Python package, `kernels/` installed as `fastrnn.kernels`,
and the native extensions built by one CMake run from `csrc/` (CMakeLists.txt is the single
description of the native build): `fastrnn._ext` (CPU) when a compiler and torch are present,
and `fastrnn._cuda_ext` from `csrc/cuda/` in CUDA builds.  Without a compiler the install still
works and the `cpp` backend is absent.

Knobs (environment variables, also in the README):
  FASTRNN_BUILD_CUDA=auto|0|1   auto (default): CUDA when nvcc is found and torch is a CUDA build;
                                1: CUDA or fail; 0: never
  TORCH_CUDA_ARCH_LIST          e.g. "8.0;9.0+PTX" (the default): SASS for sm_80 and sm_90, and PTX
                                for the newest arch listed when any entry has +PTX
  MAX_JOBS                      parallel compile jobs (default: all cores)
  FASTRNN_REQUIRE_EXT=1         fail the install if the extension does not build

Build against the torch you will run with: `pip install --no-build-isolation .` (or `make wheel`).
pip's isolated build env would fetch some other torch, and torch's C++ ABI changes between
releases.  What the build used is written to `fastrnn/build_info.json` (see fastrnn/build_info.py).
"""
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
BASE_VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "fastrnn" / "__init__.py").read_text(), re.M)[1]
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def cuda_plan(torch):
    """(build CUDA?, why) from FASTRNN_BUILD_CUDA; mode 1 raises when CUDA cannot be built."""
    mode = os.environ.get("FASTRNN_BUILD_CUDA", "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"FASTRNN_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, "FASTRNN_BUILD_CUDA=0"
    missing = []
    if torch is None:
        missing.append("torch is not importable in the build environment")
    elif torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)")
    if _nvcc() is None:
        missing.append("nvcc is not on PATH (nor in $CUDA_HOME/bin)")
    if missing:
        if mode == "1":
            raise RuntimeError("FASTRNN_BUILD_CUDA=1 but the CUDA extension cannot be built: " + "; ".join(missing))
        return False, "; ".join(missing)
    return True, f"FASTRNN_BUILD_CUDA={mode}"


def cuda_archs(spec=None):
    """TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX", spaces or ';') -> (["80", "90"], ptx).

    CMake takes one PTX switch: PTX for the newest arch, what forward compatibility needs
    (the driver JIT-compiles it for GPUs newer than every SASS in the wheel).
    """
    spec = (os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS) if spec is None else spec
    archs, ptx = [], False
    for entry in re.split(r"[;\s,]+", spec.strip()):
        if not entry:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", entry, re.I)
        if not m:
            raise RuntimeError(f"TORCH_CUDA_ARCH_LIST: cannot read {entry!r} (expected e.g. 8.0, 9.0a or 9.0+PTX)")
        arch = f"{m[1]}{m[2]}{m[3].lower()}"
        if arch not in archs:
            archs.append(arch)
        ptx = ptx or bool(m[4])
    if not archs:
        raise RuntimeError(f"TORCH_CUDA_ARCH_LIST={spec!r} names no architecture")
    archs.sort(key=lambda a: int(re.match(r"\d+", a)[0]))
    return archs, ptx


def package_version(torch, build_cuda):
    """0.1.0 for CPU builds; CUDA builds carry the torch they need: 0.1.0+cu130.torch2.11."""
    if not build_cuda:
        return BASE_VERSION
    major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return f"{BASE_VERSION}+cu{torch.version.cuda.replace('.', '')}.torch{major_minor}"


def _torch_requirement():
    if not BUILD_CUDA:
        return "torch>=2.6"
    major, minor = (int(v) for v in TORCH.__version__.split("+")[0].split(".")[:2])
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


TORCH = _torch()
BUILD_CUDA, CUDA_WHY = cuda_plan(TORCH)
VERSION = package_version(TORCH, BUILD_CUDA)


class CMakeExtension(Extension):
    """One CMake run builds every native target (`_ext`, and `_cuda_ext` when CUDA is on)."""

    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Runs CMakeLists.txt, the single description of the native build."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler / no torch: the pure-Python backends still install
            if os.environ.get("FASTRNN_REQUIRE_EXT") == "1" or os.environ.get("FASTRNN_BUILD_CUDA") == "1":
                raise
            print(f"fastrnn: native extension not built ({e}); the cpp backend will be unavailable",
                  file=sys.stderr)

    # The CMake run leaves more beside _ext than setuptools knows of (build_info.json, and
    # _cuda_ext in CUDA builds).  A wheel takes the whole build folder; an editable install
    # (`pip install -e .`, inplace) copies only the declared extension back into the source
    # tree, so the others are copied here too (and a stale _cuda_ext there is removed).
    def _companions(self):
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
            src, dst = Path(regular_file).parent, Path(inplace_file).parent
            for stale in dst.glob("_cuda_ext*"):
                if not (src / stale.name).exists():
                    stale.unlink()
            for f in [*src.glob("build_info.json"), *src.glob("_cuda_ext*")]:
                yield str(f), str(dst / f.name)

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        for src, dst in self._companions():
            self.copy_file(src, dst, level=self.verbose)

    def build_extension(self, ext):
        if not (ROOT / "CMakeLists.txt").exists() or not any((ROOT / "csrc").glob("*.cpp")):
            return
        if TORCH is None:
            # pip's default isolated build env has no torch (and installing one there could
            # give an ABI other than the torch we will run with): build against the installed
            # torch with `pip install --no-build-isolation .` (what the Makefile does).
            raise RuntimeError("torch is not importable in the build environment; install torch "
                               "first and build with `pip install --no-build-isolation .`")
        out = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build = Path(self.build_temp).resolve()
        build.mkdir(parents=True, exist_ok=True)
        cuda_error = None
        if BUILD_CUDA:
            try:
                self._cmake(build, out, cuda=True)
            except RuntimeError as e:
                if os.environ.get("FASTRNN_BUILD_CUDA") == "1":
                    raise
                # auto: a CUDA toolchain that cannot build us must not cost the CPU backend
                cuda_error = str(e).splitlines()[0]
                print(f"fastrnn: WARNING: the CUDA extension did not build ({cuda_error}); "
                      "building the CPU extension only (FASTRNN_BUILD_CUDA=1 makes this an error)",
                      file=sys.stderr)
                self._cmake(build, out, cuda=False)
        else:
            self._cmake(build, out, cuda=False)
        write_build_info(out, build, cuda_error)

    def _cmake(self, build, out, cuda):
        cfg = ["-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}",
               f"-DFASTRNN_OUTPUT_DIR={out}", f"-DFASTRNN_BUILD_CUDA={'ON' if cuda else 'OFF'}"]
        if cuda:
            archs, ptx = cuda_archs()
            cfg += [f"-DFASTRNN_CUDA_ARCHS={';'.join(archs)}", f"-DFASTRNN_CUDA_PTX={'ON' if ptx else 'OFF'}",
                    f"-DCMAKE_CUDA_COMPILER={_nvcc()}"]
        else:
            for stale in out.glob("_cuda_ext*"):  # from an earlier CUDA build: build_info would not describe it
                stale.unlink()
        # The cmake that the build requirements pinned (next to this Python), else the one on PATH.
        cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or "cmake"
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        for cmd in ([cmake, str(ROOT), *cfg], [cmake, "--build", ".", "--parallel", jobs]):
            r = subprocess.run(cmd, cwd=build, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            print(r.stdout)
            if r.returncode:  # say why (compiler errors) even though the install goes on
                tail = "\n".join(r.stdout.splitlines()[-40:])
                raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {r.returncode}:\n{tail}")


def _toolchain(build):
    """What CMakeLists.txt recorded in fastrnn_toolchain.txt (compilers, targets)."""
    f = build / "fastrnn_toolchain.txt"
    if not f.is_file():
        return {}
    return dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line)


def write_build_info(out, build, cuda_error=None):
    tc = _toolchain(build)
    built = sorted(name for name in ("_ext", "_cuda_ext")
                   if name in tc.get("targets", "").split(";") and any(out.glob(f"{name}.*")))
    cuda_built = "_cuda_ext" in built
    archs, ptx = cuda_archs() if cuda_built else ([], False)
    when = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds pin the date
    when = (datetime.datetime.fromtimestamp(int(when), datetime.timezone.utc) if when
            else datetime.datetime.now(datetime.timezone.utc))
    info = {
        "fastrnn": VERSION,
        "torch": TORCH.__version__,
        "torch_cuda": TORCH.version.cuda,
        "cxx11_abi": getattr(TORCH._C, "_GLIBCXX_USE_CXX11_ABI", None),
        "python": platform.python_version(),
        "platform": sysconfig.get_platform(),
        "compiler": tc.get("cxx", "unknown"),
        "cuda_built": cuda_built,
        "cuda_why_not": None if cuda_built else (cuda_error or CUDA_WHY),
        "nvcc": tc.get("cuda") or None,
        "cuda_archs": archs,
        "cuda_ptx": ptx,
        "extensions": built,
        "build_date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"fastrnn: wrote {out / 'build_info.json'}: extensions {built}")


setup(
    name="fastrnn",
    version=VERSION,
    description="Fused, drop-in replacements for torch.nn.LSTM, GRU and RNN",
    python_requires=">=3.9",
    packages=["fastrnn", "fastrnn.backends", "fastrnn.bench", "fastrnn.kernels",
              "fastrnn.kernels.triton", "fastrnn.kernels.numba"],
    package_dir={"fastrnn": "fastrnn", "fastrnn.kernels": "kernels"},
    # A CUDA wheel is tied to the torch minor and CUDA it was built with (its local tag says so):
    # pin it so pip keeps them together.  A CPU wheel stays usable on any torch (a mismatched
    # _ext is refused with a clear reason and the numba/torch backends run instead).
    install_requires=[_torch_requirement(), "numpy"],
    extras_require={
        "numba": ["numba>=0.59", "scipy"],  # numba's np.dot calls BLAS through SciPy
        "triton": ["triton>=3.3"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "numba>=0.59", "scipy",
                 "onnx", "onnxruntime", "onnxscript"],  # exports are run where fastrnn is not
        "bench": ["pytest-benchmark", "tqdm", "matplotlib", "onnxruntime", "onnx"],
    },
    ext_modules=[CMakeExtension("fastrnn._ext")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
