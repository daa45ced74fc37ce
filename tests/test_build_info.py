"""build_info.json checks: an extension built for another torch/CUDA is refused with both versions
named (before it is loaded), and `python -m fastrnn.info` reports without a GPU."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastrnn import build_info

BUILT = {"torch": "2.11.0+cu130", "torch_cuda": "13.0", "cxx11_abi": True}


@pytest.mark.parametrize("running, cuda, ok", [
    ("2.11.0+cu130", "13.0", True),
    ("2.11.1+cu130", "13.0", True),      # patch releases keep the ABI
    ("2.11.0+cpu", None, True),          # the CPU extension does not care which CUDA torch has
    ("2.12.0+cu130", "13.0", False),
    ("2.10.0", "13.0", False),
])
def test_cpu_extension_needs_the_same_torch_minor(running, cuda, ok):
    why = build_info.mismatch("_ext", BUILT, running, cuda, True)
    assert (why is None) == ok, why
    if not ok:
        assert "2.11.0+cu130" in why and running in why and "rebuild" in why


def test_cuda_extension_needs_the_same_cuda():
    why = build_info.mismatch("_cuda_ext", BUILT, "2.11.0+cu128", "12.8", True)
    assert why and "CUDA 13.0" in why and "CUDA 12.8" in why and "CUDA version differs" in why
    assert build_info.mismatch("_cuda_ext", BUILT, "2.11.0+cu130", "13.0", True) is None


def test_cxx11_abi_mismatch_is_refused():
    assert "ABI" in build_info.mismatch("_ext", BUILT, "2.11.0", "13.0", False)


def test_no_record_means_no_check():
    assert build_info.mismatch("_ext", {}, "2.13.0", None, True) is None


def test_load_reads_the_record(tmp_path):
    (tmp_path / build_info.FILE_NAME).write_text(json.dumps(BUILT))
    assert build_info.load(tmp_path) == BUILT
    (tmp_path / build_info.FILE_NAME).write_text("{not json")
    assert build_info.load(tmp_path) == {}
    assert build_info.load(tmp_path / "missing") == {}


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "fastrnn.info"], capture_output=True, text=True, check=True).stdout
    assert "available_backends('cpu')" in out and "available_backends('cuda')" in out
    assert "cpu:" in out and "torch:" in out
