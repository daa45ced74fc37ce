"""Build entry point: the Python package, `kernels/` installed as `fastrnn.kernels`,
and the native extension `fastrnn._ext` built by CMake from `csrc/` when a compiler
and torch are present (if not, install still works and the `cpp` backend is absent).
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Runs CMakeLists.txt, the single description of the native build."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler / no torch: the pure-Python backends still install
            if os.environ.get("FASTRNN_REQUIRE_EXT") == "1":
                raise
            print(f"fastrnn: native extension not built ({e}); the cpp backend will be unavailable",
                  file=sys.stderr)

    def build_extension(self, ext):
        if not (ROOT / "CMakeLists.txt").exists() or not any((ROOT / "csrc").glob("*.cpp")):
            return
        try:
            import torch  # noqa: F401  (CMake asks torch for its paths)
        except ImportError as e:
            # pip's default isolated build env has no torch (and installing one there could
            # give an ABI other than the torch we will run with): build against the installed
            # torch with `pip install --no-build-isolation .` (what the Makefile does).
            raise RuntimeError(f"torch is not importable in the build environment ({e}); install torch "
                               "first and build with `pip install --no-build-isolation .`") from e
        out = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build = Path(self.build_temp).resolve()
        build.mkdir(parents=True, exist_ok=True)
        cfg = ["-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}",
               f"-DFASTRNN_OUTPUT_DIR={out}"]
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        for cmd in (["cmake", str(ROOT), *cfg], ["cmake", "--build", ".", "--parallel", jobs]):
            r = subprocess.run(cmd, cwd=build, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            print(r.stdout)
            if r.returncode:  # say why (compiler errors) even though the install goes on
                tail = "\n".join(r.stdout.splitlines()[-40:])
                raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {r.returncode}:\n{tail}")


setup(
    name="fastrnn",
    version="0.1.0",
    description="Fused, drop-in replacements for torch.nn.LSTM, GRU and RNN",
    python_requires=">=3.9",
    packages=["fastrnn", "fastrnn.backends", "fastrnn.bench", "fastrnn.kernels",
              "fastrnn.kernels.triton", "fastrnn.kernels.numba"],
    package_dir={"fastrnn": "fastrnn", "fastrnn.kernels": "kernels"},
    install_requires=["torch>=2.6", "numpy"],
    extras_require={
        "numba": ["numba>=0.59", "scipy"],  # numba's np.dot calls BLAS through SciPy
        "triton": ["triton>=3.3"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "numba>=0.59", "scipy"],
        "bench": ["pytest-benchmark", "tqdm", "matplotlib", "onnxruntime", "onnx"],
    },
    ext_modules=[CMakeExtension("fastrnn._ext")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
