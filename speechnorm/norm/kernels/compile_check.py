"""Compile the Triton kernels for real GPU targets on a machine without a GPU, and read what ptxas says.

    python -m speechnorm.norm.kernels.compile_check          # every kernel x dtype x D x target, a table
    python -m speechnorm.norm.kernels.compile_check --json   # the same, one JSON report per line
    python -m speechnorm.norm.kernels.compile_check --stages 1 --only track:fp32:sm_90:256:aligned
                                                             # an unpipelined loop, to see it reported

Run it without ``TRITON_INTERPRET=1``: the interpreter swaps ``triton.language``'s functions for
its own, and compiling for a GPU then fails (the tests, which set it, run this in a subprocess).

Triton compiles ahead of time for a named target (``GPUTarget("cuda", 90, 32)``: H100/H200;
80: A100) with the ptxas that ships in its wheel; no driver is needed. Each kernel is compiled
as its launcher would specialize it at the sizes the models use: pointers 16-byte aligned (torch
allocations are), unit strides as constants, and — in the ``aligned`` variant — the other integer
arguments divisible by 16 (feature counts and strides that are multiples of 16; the launcher marks
such values itself). The report gives ptxas's registers, stack frame and spill bytes, the global
loads in the PTX (plain loads and asynchronous copies) and how many move 8 or 16 bytes at once
(``ld.global.v2/.v4``, ``cp.async`` of 8/16 bytes), and whether the kernel's loop is
software-pipelined (asynchronous copies, ``cp.async``, in the PTX).
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
ROW_WIDTHS = (21, 81, 161, 256, 257, 1500)  # D: the models' spectra (odd bin counts), an aligned one, a long row
LANES = (64, 256, 1024)  # C: features one stream kernel holds
TYPES = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}
#: kernel -> (big-tensor pointers, the unit-stride argument(s) of its innermost axis, loops?)
KERNELS = {
    "moments": (ops._moments_kernel, ("x_ptr",), ("sxd",), True),
    "grad_moments": (ops._grad_moments_kernel, ("g_ptr", "x_ptr"), ("sgd", "sxd"), True),
    "affine_rows": (ops._affine_rows_kernel, ("x_ptr", "out_ptr"), ("sxd", "sod"), True),
    "affine_flat": (ops._affine_flat_kernel, ("x_ptr", "out_ptr"), (), False),
    "grad_affine_rows": (ops._grad_affine_rows_kernel, ("g_ptr", "x_ptr", "out_ptr"), ("sgd", "sxd", "sod"), True),
    "grad_affine_flat": (ops._grad_affine_flat_kernel, ("g_ptr", "x_ptr", "out_ptr"), (), False),
    "track": (ops._track_kernel, (), ("sl",), True),
    "control": (ops._control_kernel, (), ("sl",), True),
    "rows_control_summary": (ops._rows_control_summary_kernel, (), ("sl",), True),
    "d1_tracking_summary": (ops._tracking_summary_kernel, ("x_ptr",), ("sxc",), True),
    "rows_tracking_summary": (ops._tracking_summary_kernel, (), ("sxl",), True),
    "tracking_entry": (ops._tracking_entry_kernel, (), (), True),
    "d1_forward": (ops._d1_forward_kernel, ("x_ptr", "out_ptr"), ("sxc", "soc"), True),
    "d1_control_summary": (ops._d1_control_summary_kernel, ("x_ptr", "g_ptr"), ("sxc", "sgc"), True),
    "control_entry": (ops._control_entry_kernel, (), (), True),
    "d1_backward": (ops._d1_backward_kernel, ("x_ptr", "g_ptr", "gx_ptr"), ("sxc", "sgc", "soc"), True),
}
ROW_KERNELS = ("moments", "grad_moments", "affine_rows", "affine_flat", "grad_affine_rows", "grad_affine_flat")
FLOATS = ("alpha", "eps", "alpha_fwd", "alpha_bkw", "log_alpha")
SUMMARY = ("d1_tracking_summary", "rows_tracking_summary", "tracking_entry", "control_entry")  # no layer scaling: lanes split


@dataclass(frozen=True)
class Report:
    kernel: str
    dtype: str
    target: str
    size: int  # D for the row kernels, C for the per-stream kernels
    aligned: bool
    block: tuple[int, ...]
    warps: int
    registers: int
    stack_bytes: int
    spill_bytes: int
    loads: int
    vector_loads: int
    pipelined: bool
    has_loop: bool
    reads_data: bool  # reads x or g (the big tensors), not only per-sample statistics


def _jit(kernel):
    """The compilable kernel, also when ``TRITON_INTERPRET=1`` made it an interpreted function."""
    from triton.runtime.jit import JITFunction

    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)


def _launch_config(kernel: str, size: int, layer_scaling: bool) -> tuple[dict, tuple[int, ...], int]:
    """The constexprs, the tile and the warps the wrappers in ``triton_ops`` pick for ``size``."""
    if kernel in ("affine_flat", "grad_affine_flat"):
        return {"BLOCK": ops.TILE}, (ops.TILE,), 4
    if kernel in ROW_KERNELS:
        block_r, block_d = ops.row_blocks(size)
        return {"BLOCK_R": block_r, "BLOCK_D": block_d, "STAGES": ops.STAGES}, (block_r, block_d), 4
    if kernel in SUMMARY:
        block_c, _, warps = ops.lane_blocks(size, False)
        constexprs = {"BLOCK_C": block_c, "STAGES": ops.STAGES}
        if kernel.endswith("tracking_summary"):  # x itself (D = 1) or the per-sample mean and variance
            constexprs["HAS_VAR"] = kernel.startswith("rows")
        return constexprs, (block_c,), warps
    block_c, _, warps = ops.lane_blocks(size, layer_scaling)
    return ({"BLOCK_C": block_c, "STAGES": ops.STAGES, "AFFINE": True, "LS": layer_scaling}, (block_c,), warps)


def compile_kernel(kernel: str, dtype: str, target: str, size: int, aligned: bool = True,
                   layer_scaling: bool = True) -> Report:
    """Compile one configuration for ``target`` and read ptxas's resource usage."""
    fn, big, unit, has_loop = KERNELS[kernel]
    fn = _jit(fn)
    constexprs, block, warps = _launch_config(kernel, size, layer_scaling)
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in unit:
            signature[name] = "constexpr"
            constexprs[name] = 1
        elif name.endswith("_ptr"):
            signature[name] = TYPES[dtype] if name in big else "*fp32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if aligned or name == "total":  # a flat kernel's element count: a multiple of 16 at the models' sizes
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", TARGETS[target], 32), options={"num_warps": warps})
    ptx = compiled.asm["ptx"]
    usage = ptxas_usage(ptx)
    loads = re.findall(r"ld\.global(?:\.[a-z0-9]+)*", ptx)
    copies = [int(size, 0) for size in re.findall(r"cp\.async\.c[ag]\.shared\.global[^;]*?,\s*(0x[0-9a-fA-F]+|\d+)\s*[,;]", ptx)]
    vector = sum(1 for op in loads if ".v2" in op or ".v4" in op) + sum(1 for size in copies if size >= 8)
    return Report(kernel, dtype, target, size, aligned or kernel.endswith("_flat"), block, warps, usage["registers"],
                  usage["stack"], usage["spill"], len(loads) + len(copies), vector, bool(copies), has_loop, bool(big))


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


def configurations() -> list[tuple[str, str, str, int, bool]]:
    """Every (kernel, dtype, target, size, aligned) the models use: the row kernels at each D in
    the three data types (aligned when D is a multiple of 16), the per-stream kernels at each C
    (statistics are fp32; the D = 1 kernels read the data type), aligned and not."""
    out = []
    for target in TARGETS:
        for kernel in KERNELS:
            if kernel in ROW_KERNELS:
                for dtype in TYPES:
                    for width in ROW_WIDTHS:
                        out.append((kernel, dtype, target, width, width % 16 == 0))
            else:
                dtypes = TYPES if kernel.startswith("d1_") else ("fp32",)
                for dtype in dtypes:
                    for lanes in LANES:
                        for aligned in (True, False):
                            out.append((kernel, dtype, target, lanes, aligned))
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Compile the Triton kernels for sm_80/sm_90 and report ptxas's usage.")
    parser.add_argument("--json", action="store_true", help="one JSON report per line instead of a table")
    parser.add_argument("--only", default=None,
                        help="one configuration, KERNEL:DTYPE:TARGET:SIZE[:aligned|unaligned] (e.g. track:fp32:sm_90:256)")
    parser.add_argument("--kernels", nargs="*", default=None, help="only these kernels")
    parser.add_argument("--targets", nargs="*", default=None, help="only these targets")
    parser.add_argument("--tile", type=int, default=None, help="override triton_ops.TILE (to see a spill)")
    parser.add_argument("--stages", type=int, default=None, help="override triton_ops.STAGES (1: no pipelining)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("compile_check: TRITON_INTERPRET=1 swaps triton.language for the interpreter's; "
                         "run it without (the tests call it in a subprocess)")
    if args.tile is not None:
        ops.TILE = args.tile
    if args.stages is not None:
        ops.STAGES = args.stages
    if args.only:
        parts = args.only.split(":")
        kernel, dtype, target, size = parts[:4]
        aligned = len(parts) < 5 or parts[4] == "aligned"
        chosen = [(kernel, dtype, target, int(size), aligned)]
    else:
        chosen = [c for c in configurations() if (args.kernels is None or c[0] in args.kernels)
                  and (args.targets is None or c[2] in args.targets)]
    if not args.json:
        print("| kernel | dtype | target | D or C | aligned | tile | warps | registers | stack B | spill B | global loads "
              "| vectorized | pipelined |")
        print("|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|")
    for configuration in chosen:
        r = asdict(compile_kernel(*configuration))
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            pipelined = ("yes" if r["pipelined"] else "no") if r["has_loop"] else "(no loop)"
            print(f"| {r['kernel']} | {r['dtype']} | {r['target']} | {r['size']} | {'yes' if r['aligned'] else 'no'} "
                  f"| {r['block']} | {r['warps']} | {r['registers']} | {r['stack_bytes']} | {r['spill_bytes']} "
                  f"| {r['loads']} | {r['vector_loads']} | {pipelined} |", flush=True)


if __name__ == "__main__":
    main()
