"""Compile the Triton kernels for real GPU targets on a machine without a GPU, and read what ptxas says.

    python -m speechnorm.norm.kernels.compile_check          # every kernel x dtype x D x target, a table
    python -m speechnorm.norm.kernels.compile_check --json   # the same, one JSON report per line

Run it without ``TRITON_INTERPRET=1``: the interpreter swaps ``triton.language``'s functions for
its own, and compiling for a GPU then fails (the tests, which set it, run this in a subprocess).

Triton compiles ahead of time for a named target (``GPUTarget("cuda", 90, 32)``: H100/H200;
80: A100) with the ptxas that ships in its wheel; no driver is needed. For each kernel
configuration the models use (the tile sizes ``triton_ops._blocks`` picks for D = 1, 21, 257,
1500) this reports ptxas's registers, stack frame and spill bytes, and counts the global loads in
the PTX that are vectorized (``ld.global.v2/.v4``). The launcher specializes 16-byte-aligned
pointers and widths divisible by 16, so the check does too (``tt.divisibility``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import triton_ops as ops

TARGETS = {"sm_80": 80, "sm_90": 90}
WIDTHS = (1, 21, 257, 1500)  # D: one-component features, a small and a large spectrum, a long row
ROWS = 1 << 16
TYPES = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16", "fp64": "*fp64"}


@dataclass(frozen=True)
class Report:
    kernel: str
    dtype: str
    target: str
    width: int
    block: tuple[int, int]
    registers: int
    stack_bytes: int
    spill_bytes: int
    loads: int
    vector_loads: int


def _signature(kernel: str, dtype: str) -> tuple[object, dict, list[int]]:
    """The kernel function, its signature and which arguments are pointers."""
    data, f32 = TYPES[dtype], "*fp32"
    if kernel == "moments":
        return ops._moments_kernel, {"x_ptr": data, "mean_ptr": f32, "var_ptr": f32, "rows": "i32", "width": "i32"}, [0, 1, 2]
    if kernel == "affine":
        return ops._affine_kernel, {"x_ptr": data, "scale_ptr": f32, "shift_ptr": f32, "out_ptr": data, "rows": "i32",
                                    "width": "i32"}, [0, 1, 2, 3]
    if kernel == "grad_moments":
        return ops._grad_moments_kernel, {"g_ptr": data, "x_ptr": data, "sum_g_ptr": f32, "sum_gx_ptr": f32, "rows": "i32",
                                          "width": "i32"}, [0, 1, 2, 3]
    if kernel == "grad_affine":
        return ops._grad_affine_kernel, {"g_ptr": data, "x_ptr": data, "cg_ptr": f32, "cx_ptr": f32, "c0_ptr": f32,
                                         "out_ptr": data, "rows": "i32", "width": "i32"}, [0, 1, 2, 3, 4, 5]
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")


KERNELS = ("moments", "affine", "grad_moments", "grad_affine", "scan")


def compile_kernel(kernel: str, dtype: str, target: str, width: int) -> Report:
    """Compile one configuration for ``target`` and read ptxas's resource usage."""
    if kernel == "scan":
        block = (min(triton.next_power_of_2(ROWS), 256), 1)
        signature = {"a_ptr": TYPES[dtype], "b_ptr": TYPES[dtype], "h0_ptr": TYPES[dtype], "h_ptr": TYPES[dtype],
                     "lanes": "i32", "length": "i32", "CONSTANT": "constexpr", "BLOCK": "constexpr"}
        fn, constexprs, pointers = ops._scan_kernel, {"CONSTANT": True, "BLOCK": block[0]}, [0, 1, 2, 3]
        aligned = [*pointers, 4]
    else:
        fn, signature, pointers = _signature(kernel, dtype)
        block = ops._blocks(ROWS, width)
        signature = {**signature, "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"}
        constexprs = {"BLOCK_R": block[0], "BLOCK_D": block[1]}
        width_index = list(signature).index("width")
        aligned = pointers + ([width_index] if width % 16 == 0 else [])
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    source = ASTSource(fn=_jit(fn), signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", TARGETS[target], 32))
    ptx = compiled.asm["ptx"]
    usage = ptxas_usage(ptx)
    loads = re.findall(r"ld\.global(?:\.[a-z0-9]+)*", ptx)
    return Report(kernel, dtype, target, width, block, usage["registers"], usage["stack"], usage["spill"], len(loads),
                  sum(1 for op in loads if ".v2" in op or ".v4" in op))


def _jit(kernel):
    """The compilable kernel, also when ``TRITON_INTERPRET=1`` made it an interpreted function."""
    from triton.runtime.jit import JITFunction

    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)


def ptxas_usage(ptx: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes, from ``ptxas -v`` on the PTX (Triton's bundled ptxas)."""
    arch = re.search(r"\.target (\S+)", ptx).group(1)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as handle:
            handle.write(ptx)
        info = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", path, "-o", os.devnull], capture_output=True, text=True,
                              check=True).stderr
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", info)
    registers = re.search(r"Used (\d+) registers", info)
    return {"registers": int(registers.group(1)), "stack": int(frame.group(1)),
            "spill": int(frame.group(2)) + int(frame.group(3))}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Compile the Triton kernels for sm_80/sm_90 and report ptxas's usage.")
    parser.add_argument("--json", action="store_true", help="one JSON report per line instead of a table")
    parser.add_argument("--only", default=None, help="one configuration, KERNEL:DTYPE:TARGET:D (e.g. affine:fp32:sm_90:1)")
    parser.add_argument("--tile", type=int, default=None, help="override triton_ops.TILE (to see a spill)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("compile_check: TRITON_INTERPRET=1 swaps triton.language for the interpreter's; "
                         "run it without (the tests call it in a subprocess)")
    if args.tile is not None:
        ops.TILE = args.tile
    if args.only:
        kernel, dtype, target, width = args.only.split(":")
        configurations = [(kernel, dtype, target, int(width))]
    else:
        configurations = [(kernel, dtype, target, width) for kernel in KERNELS for target in TARGETS
                          for dtype in (("fp32", "fp64") if kernel == "scan" else ("fp32", "bf16", "fp16"))
                          for width in ((1,) if kernel == "scan" else WIDTHS)]
    if not args.json:
        print("| kernel | dtype | target | D | tile (rows, D) | registers | stack B | spill B | global loads | vectorized |")
        print("|---|---|---|---:|---|---:|---:|---:|---:|---:|")
    for configuration in configurations:
        r = asdict(compile_kernel(*configuration))
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"| {r['kernel']} | {r['dtype']} | {r['target']} | {r['width']} | {r['block']} | {r['registers']} "
                  f"| {r['stack_bytes']} | {r['spill_bytes']} | {r['loads']} | {r['vector_loads']} |", flush=True)


if __name__ == "__main__":
    main()
