"""Kernel sources, installed as `fastrnn.kernels`: Triton (`triton/`) and Numba (`numba/`)."""
