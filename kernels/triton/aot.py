"""Compile the step kernels for a GPU target on a machine without one (ptxas ships with triton).

Catches what the interpreter cannot (type errors in compiled mode, spills, missing tensor-core
instructions) and gives the resource report the method asks to read before any device time:

    python -m fastrnn.kernels.triton.aot            # every cell x dtype, sm_90, one line each

Needs the kernels defined without TRITON_INTERPRET (they are then plain JITFunctions).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastrnn.kernels.triton import rnn

_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float64: "*fp64"}
_HALF = (torch.float16, torch.bfloat16)


def _compile(fn, ptrs: dict, consts: dict, target, num_warps=4):
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in fn.arg_names}
    return triton.compile(ASTSource(fn, sig, consts), target=target, options={"num_warps": num_warps})


def compile_step(kind: str, cell: int, dtype, H=67, K=67, block_b=16, block_h=32, block_k=32,
                 num_warps=4, target=GPUTarget("cuda", 90, 32)):
    """Compile `_fwd_step_kernel` (kind "fwd"), `_bwd_step_kernel` ("bwd") or the persistent
    `_fwd_seq_kernel` ("seq") / `_bwd_seq_kernel` ("bseq") (hidden size H, block_h = next power
    of two) for `target`."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gdt = dtype if dtype in _HALF else acc
    common = dict(CELL=cell, ACC=tl.float64 if acc == torch.float64 else tl.float32, PREC="ieee",
                  DOT_F32=False, BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k)
    if kind == "seq":
        ptrs = {n: _PTR[dtype] for n in ("GI", "H0", "W", "BHH", "OUT", "HN")}
        ptrs.update({n: _PTR[acc] for n in ("C0", "CO", "S", "CN")})
        ptrs.update({"BS": "*i32", "OFF": "*i32"})
        consts = dict(H=H, HAS_BIAS=True, STORE_S=True, REVERSE=False, **common)
        consts.pop("BLOCK_K")
        consts["BLOCK_H"] = max(16, triton.next_power_of_2(H))
        return _compile(rnn._fwd_seq_kernel, ptrs, consts, target, num_warps)
    if kind == "bseq":
        ptrs = {n: _PTR[dtype] for n in ("DY", "DHN", "DCN", "W", "OUT", "H0")}
        ptrs.update({n: _PTR[acc] for n in ("S", "C", "C0", "DH0", "DC0")})
        ptrs.update({n: _PTR[gdt] for n in ("DG", "DGN")})
        ptrs.update({"BS": "*i32", "OFF": "*i32"})
        consts = dict(H=H, REVERSE=False, **common)
        consts.pop("BLOCK_K")
        consts["BLOCK_H"] = max(16, triton.next_power_of_2(H))
        return _compile(rnn._bwd_seq_kernel, ptrs, consts, target, num_warps)
    if kind == "fwd":
        ptrs = {n: _PTR[dtype] for n in ("GI", "HP", "H0", "W", "BHH", "HO")}
        ptrs.update({n: _PTR[acc] for n in ("CP", "C0", "CO", "S")})
        consts = dict(H=H, K=K, HAS_BIAS=True, STORE_S=True, **common)
        return _compile(rnn._fwd_step_kernel, ptrs, consts, target, num_warps)
    ptrs = {n: _PTR[dtype] for n in ("DY", "W", "DF", "EF", "HP", "H0")}
    ptrs.update({n: _PTR[acc] for n in ("EN", "S", "CS", "CP", "C0", "EO")})
    ptrs.update({n: _PTR[gdt] for n in ("A", "DG", "DGN")})
    consts = dict(N=H, KA=rnn.GATES.get(cell, 1) * K, HAS_DY=True, HAS_EF=True, **common)
    return _compile(rnn._bwd_step_kernel, ptrs, consts, target, num_warps)


def report(kernel) -> dict:
    """Registers, stack/local bytes, shared memory and counts of the instructions that matter."""
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        run = lambda *a: subprocess.run([os.path.join(tools, "cuobjdump"), *a, f.name],  # noqa: E731
                                        capture_output=True, text=True, check=True).stdout
        usage, sass = run("-res-usage"), run("-sass")
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    out = dict(zip(("regs", "stack", "shared", "local"), map(int, m.groups()))) if m else {}
    for op in ("HGMMA", "HMMA", "DMMA", "FFMA", "LDL", "STL"):
        out[op] = len(re.findall(rf"\b{op}\b", sass))
    return out


def main():
    names = {v: k for k, v in rnn.CELL_IDS.items()} | {rnn.NONE: "none"}
    for cell in (rnn.LSTM, rnn.GRU, rnn.RNN_TANH, rnn.RNN_RELU, rnn.NONE):
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for kind in ("fwd", "bwd", "seq", "bseq"):
                if kind != "bwd" and cell == rnn.NONE:
                    continue
                seq = kind in ("seq", "bseq")  # at the backend's persistent limit, with its 8 warps
                if seq and dtype == torch.float64:
                    continue  # fp64 never runs persistent (spills at H=16)
                H = {torch.float32: 32}.get(dtype, 64) if seq else 67
                r = report(compile_step(kind, cell, dtype, H=H, K=H, num_warps=8 if seq else 4))
                print(f"{kind} {names[cell]:8s} {str(dtype)[6:]:9s} {r}")


if __name__ == "__main__":
    sys.exit(main())
