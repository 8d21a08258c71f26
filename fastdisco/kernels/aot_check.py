"""Compile every kernel variant for a CUDA target without a GPU (ptxas ships with triton).

    python -m fastdisco.kernels.aot_check [--arch 90]

The interpreter (CPU tests) does not type-check like the compiler does; this catches
compiled-mode errors (loop-carried types, dot shapes, shared memory) on a machine with no GPU.
It does not run anything: numerical checks on CUDA are the `gpu`-marked tests. ~1-2 min.
"""
from __future__ import annotations

import argparse
import os


def variants():
    """(kernel, signature, constexprs, options) for every dtype / path the launchers can pick."""
    from . import distill, infonce, kl

    for dt in ("bf16", "fp16", "fp32"):
        prec, stages = ("ieee", 2) if dt == "fp32" else ("tf32", 3)
        ptrs = {"Q": "*" + dt, "B": "*" + dt}
        ints = {n: "i32" for n in ("N", "K", "D", "sq_n", "sq_d", "sb_k", "sb_d")}
        blocks = ("BLOCK_N", "BLOCK_K", "BLOCK_D", "ONE_D", "PREC")
        for block_d, one_d in ((128, True), (128, False), (16, True)):
            c = dict(BLOCK_N=infonce.BLOCK_N, BLOCK_K=infonce.BLOCK_K, BLOCK_D=block_d, ONE_D=one_d, PREC=prec)
            opts = {"num_warps": infonce.NUM_WARPS, "num_stages": stages}
            yield (infonce._lse_fwd_kernel,
                   {**ptrs, "PART": "*fp32", **ints, "scale_log2": "fp32", "tiles_per_split": "i32",
                    **{b: "constexpr" for b in blocks}}, c, opts)
            c2 = dict(c, BLOCK_DO=block_d)
            tail = {**ints, "scale_log2": "fp32", "scale": "fp32", "tiles_per_split": "i32",
                    **{b: "constexpr" for b in blocks + ("BLOCK_DO",)}}
            yield infonce._dq_kernel, {**ptrs, "LSE2": "*fp32", "G": "*fp32", "DQP": "*fp32", **tail}, c2, opts
            yield (infonce._db_kernel,
                   {**ptrs, "LSE2": "*fp32", "G": "*fp32", "GMAX": "*fp32", "DBP": "*fp32", **tail}, c2, opts)
        io = {"S": "*" + dt, "T": "*" + dt, "LOSS": "*fp32", "DS": "*" + dt, "DT": "*" + dt}
        for gs, gt in ((True, False), (True, True), (False, False)):
            yield (distill._distill_kernel,
                   {**io, "N": "i32", "D": "i32", "ss_n": "i32", "ss_d": "i32", "st_n": "i32", "st_d": "i32",
                    "eps": "fp32", "ROWS": "constexpr", "BLOCK_D": "constexpr", "GRAD_S": "constexpr",
                    "GRAD_T": "constexpr"},
                   dict(ROWS=32, BLOCK_D=128, GRAD_S=gs, GRAD_T=gt), {"num_warps": 4})
            for single, bc in ((True, 1024), (False, kl.CHUNK_C)):
                for mode in (kl.SYM_KL, kl.SOFT_CE):
                    yield (kl._kl_kernel,
                           {**io, "C": "i32", "ss_n": "i32", "ss_c": "i32", "st_n": "i32", "st_c": "i32",
                            "inv_t": "fp32", **{b: "constexpr" for b in ("BLOCK_C", "SINGLE", "MODE", "GRAD_S", "GRAD_T")}},
                           dict(BLOCK_C=bc, SINGLE=single, MODE=mode, GRAD_S=gs, GRAD_T=gt),
                           {"num_warps": 4 if bc <= 1024 else 8})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the kernels for real")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    n = 0
    for fn, sig, consts, opts in variants():
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target, options=opts)
        n += 1
        print(f"ok {fn.__name__:16s} {sig['S' if 'S' in sig else 'Q'][1:]:5s} {consts} shared={k.metadata.shared}")
    print(f"{n} variants compiled for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
