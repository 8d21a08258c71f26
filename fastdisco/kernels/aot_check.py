"""Compile every kernel configuration the launchers can pick, for A100 (sm_80) and Hopper (sm_90),
without a GPU (ptxas ships with triton):

    python -m fastdisco.kernels.aot_check                  # sm_80 and sm_90, every configuration
    python -m fastdisco.kernels.aot_check --quick --arch 90   # the boundary configurations only
    python -m fastdisco.kernels.aot_check --jobs 16        # compile in 16 processes

The interpreter (CPU tests) does not type-check like the compiler does; this catches
compiled-mode errors (loop-carried types, dot shapes, shared memory, registers) on a machine with no
GPU. It runs nothing: numerical checks on CUDA are the `gpu`-marked tests. It is not part of the
test suite: the full set is 264 compilations per architecture (minutes on a many-core machine,
3-7 s each on one core); --quick compiles the 162 at the boundaries.

What the launchers pick (see each launcher), per input dtype (bf16, fp16, fp32):
  infonce   BLOCK_D = next_pow2(D) clamped to [16, 128] (16, 32, 64, 128), ONE_D when D <= 128,
            else BLOCK_D = 128 looped over D; 2 pipeline stages for fp32, 3 for 16-bit inputs.
  distill   BLOCK_D = next_pow2(D) for D <= MAX_D (1 .. 16384), ROWS = min(64, TILE_ELEMS // BLOCK_D),
            8 warps above 2048; gradients for the student, both, or none (GRAD_S, GRAD_T).
  kl        one tile per row when next_pow2(C) <= MAX_SINGLE_C (BLOCK_C 1 .. 4096, so the 2,049-4,096
            class rows are one 4096 tile with 8 warps), else CHUNK_C chunks; sym-KL or soft-CE;
            the same gradient flags.
Every block size is compiled with the flags that use the most registers and shared memory (both
gradients); every flag combination at the smallest, the boundary and the largest block sizes,
where resource limits would bite (resource use grows with the block and with the flags).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

DTYPES = ("bf16", "fp16", "fp32")
GRADS_ALL = ((True, False), (True, True), (False, False))
HEAVIEST = (True, True)


def _pow2(lo: int, hi: int) -> list[int]:
    out, b = [], lo
    while b <= hi:
        out.append(b)
        b *= 2
    return out


def variants(quick: bool = False):
    """(kernel, signature, constexprs, options) for every configuration the launchers can pick."""
    from . import distill, infonce, kl

    for dt in DTYPES:
        prec, stages = ("ieee", 2) if dt == "fp32" else ("tf32", 3)
        ptrs = {"Q": "*" + dt, "B": "*" + dt}
        ints = {n: "i32" for n in ("N", "K", "D", "sq_n", "sq_d", "sb_k", "sb_d")}
        blocks = ("BLOCK_N", "BLOCK_K", "BLOCK_D", "ONE_D", "PREC")
        nce_blocks = [(b, True) for b in _pow2(16, infonce.MAX_BLOCK_D)] + [(infonce.MAX_BLOCK_D, False)]
        for block_d, one_d in nce_blocks:
            if quick and block_d not in (16, infonce.MAX_BLOCK_D):
                continue
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
        distill_sig = {**io, "N": "i32", "D": "i32", "ss_n": "i32", "ss_d": "i32", "st_n": "i32", "st_d": "i32",
                       "eps": "fp32", **{b: "constexpr" for b in ("ROWS", "BLOCK_D", "GRAD_S", "GRAD_T")}}
        d_blocks = _pow2(1, triton_next_pow2(distill.MAX_D))
        d_edges = (1, 128, 2048, 4096, d_blocks[-1])  # 128: the usual D; 2048 | 4096: the warp switch
        for block_d in d_blocks:
            if quick and block_d not in d_edges:
                continue
            for gs, gt in (GRADS_ALL if block_d in d_edges else (HEAVIEST,)):
                rows = max(1, min(64, distill.TILE_ELEMS // block_d))
                yield (distill._distill_kernel, distill_sig,
                       dict(ROWS=rows, BLOCK_D=block_d, GRAD_S=gs, GRAD_T=gt),
                       {"num_warps": 4 if block_d <= 2048 else 8})
        kl_sig = {**io, "C": "i32", "ss_n": "i32", "ss_c": "i32", "st_n": "i32", "st_c": "i32", "inv_t": "fp32",
                  **{b: "constexpr" for b in ("BLOCK_C", "SINGLE", "MODE", "GRAD_S", "GRAD_T")}}
        c_blocks = [(b, True) for b in _pow2(1, kl.MAX_SINGLE_C)] + [(kl.CHUNK_C, False)]
        c_edges = (1, 1024, 2048, kl.MAX_SINGLE_C)  # 1024 | 2048: the warp switch; 4096: 2,049-4,096 classes
        for bc, single in c_blocks:
            edge = bc in c_edges or not single
            if quick and not edge:
                continue
            for mode in (kl.SYM_KL, kl.SOFT_CE):
                for gs, gt in (GRADS_ALL if edge else (HEAVIEST,)):
                    yield (kl._kl_kernel, kl_sig, dict(BLOCK_C=bc, SINGLE=single, MODE=mode, GRAD_S=gs, GRAD_T=gt),
                           {"num_warps": 4 if bc <= 1024 else 8})


def triton_next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _compile(job):
    """Compile one variant (by index) for one architecture; returns a printable line."""
    arch, index, quick = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, sig, consts, opts = list(variants(quick))[index]
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                       options=opts)
    dtype = sig["S" if "S" in sig else "Q"][1:]
    return (f"ok sm_{arch} {fn.__name__:16s} {dtype:5s} {consts} warps={opts['num_warps']} "
            f"shared={k.metadata.shared}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="80,90", help="CUDA compute capabilities, comma-separated (80: A100, 90: H100)")
    p.add_argument("--quick", action="store_true", help="the boundary configurations only")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the kernels for real")
    archs = [int(a) for a in args.arch.split(",") if a]
    n = sum(1 for _ in variants(args.quick))
    jobs = [(arch, i, args.quick) for arch in archs for i in range(n)]
    print(f"compiling {n} configurations for {', '.join(f'sm_{a}' for a in archs)} ({len(jobs)} in all, "
          f"{args.jobs} processes)", flush=True)
    t0, failed = time.perf_counter(), 0
    if args.jobs <= 1:
        results = map(_compile_safe, jobs)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.jobs)
        results = pool.imap(_compile_safe, jobs)
    for ok, line in results:
        failed += not ok
        print(line, flush=True)
    print(f"{len(jobs) - failed}/{len(jobs)} compiled in {time.perf_counter() - t0:.0f} s"
          + (f"; {failed} FAILED" if failed else ""))
    return 1 if failed else 0


def _compile_safe(job):
    try:
        return True, _compile(job)
    except Exception as e:  # noqa: BLE001 (report every failing configuration, not just the first)
        arch, index, quick = job
        fn, _sig, consts, _ = list(variants(quick))[index]
        return False, f"FAILED sm_{arch} {fn.__name__} {consts}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"


if __name__ == "__main__":
    sys.exit(main())
