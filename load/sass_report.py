"""The SASS of the one-row int4 GEMVs, built for sm_90 on a machine without a GPU.

Triton compiles for a target it is told (here Hopper, compute capability 9.0) with the ptxas and
nvdisasm its wheel ships, so a kernel's machine code can be read before any GPU time is spent:
the instructions of its main loop per weight value, how wide its loads are, and whether it
exchanges values through shared memory (LDS / STS / BAR in the loop). The installed Triton
decides the layouts, so build with the version the GPU runs (docs/perf.md names it).

    python -m load.sass_report                       # the f16x2 shortlist of worker/quant/int_kernels.py
    python -m load.sass_report --f16x2 32,128,4,1 --no-fold
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

_OP = re.compile(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_LABEL = re.compile(r"\s*\.(L_x_\d+):")
_BACK = re.compile(r"BRA `\(\.(L_x_\d+)\)")


def opcode_counts(sass: str) -> collections.Counter[str]:
    """Instructions by opcode (without modifiers) in nvdisasm text."""
    found: collections.Counter[str] = collections.Counter()
    for line in sass.splitlines():
        m = _OP.match(line)
        if m:
            found[m.group(1).split(".")[0]] += 1
    return found


def main_loop(sass: str) -> str:
    """The longest backward-branching block of nvdisasm text (a kernel's main loop), or ''."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    best: list[str] = []
    for i, line in enumerate(lines):
        m = _BACK.search(line)
        if m and labels.get(m.group(1), i) < i and i + 1 - labels[m.group(1)] > len(best):
            best = lines[labels[m.group(1)]:i + 1]
    return "\n".join(best)


def sm90_sass(fn, signature: dict[str, str], constexprs: dict[str, object], num_warps: int,  # type: ignore[no-untyped-def]
              divisible: tuple[int, ...]) -> str:
    """Compile a @triton.jit function for sm_90 and disassemble it. divisible: the argument
    positions known to be multiples of 16 (pointers and sizes, as Triton specializes them)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs,
                    attrs={(i,): [["tt.divisibility", 16]] for i in divisible})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 3})
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout


def f16x2_loop(block_n: int, block_w: int, warps: int, split_k: int, fold: bool, group: int = 128,
               fused: bool = False, ahead: bool = False, pdl: bool = False) -> str:
    from kernels import int_weight_gemv_f16x2 as m

    groups, words = (block_w * 8 // group, group // 8) if block_w * 8 > group else (1, block_w)
    signature = {"x_ptr": "*bf16", "xp_ptr": "*i32", "xs_ptr": "*fp32", "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16",
                 "b_ptr": "*fp16", "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "N": "i32", "kw": "i32",
                 "NG": "i32"}
    constexprs = dict(G=group, BLOCK_N=block_n, GROUPS=groups, WORDS=words, SPLIT_K=split_k, HAS_BIAS=False,
                      EVEN_N=True, EVEN_K=True, FOLD=fold, PTX=True, X4=words % 4 == 0, FUSED=fused, X_BF16=True,
                      AHEAD=ahead, PDL=pdl)
    return main_loop(sm90_sass(m._gemv_f16x2_kernel, signature, constexprs, warps, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11)))


def report(name: str, loop: str, values: int) -> str:
    ops = opcode_counts(loop)
    total = sum(ops.values())
    shown = ", ".join(f"{op} {ops[op]}" for op in ("LDG", "LDS", "STS", "BAR", "HFMA2", "HADD2", "FFMA", "LOP3")
                      if ops[op])
    return f"{name}: {total} instructions a loop, {total / values:.2f} per weight value ({shown})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--f16x2", action="append", help="block_n,block_w,warps,split_k[,fused,ahead] (repeatable; "
                        "fused, ahead: 0 or 1)")
    parser.add_argument("--no-fold", action="store_true")
    args = parser.parse_args(argv)
    from worker.quant.int_kernels import F16X2

    configs = [(tuple(int(v) for v in c.split(",")) + (0, 0))[:6] for c in args.f16x2] if args.f16x2 else \
        [(c[0], c[1], c[3], c[2], *(tuple(c[6:8]) or (False, False))) for c in F16X2]
    for bn, bw, warps, sk, fused, ahead in configs:
        loop = f16x2_loop(bn, bw, warps, sk, not args.no_fold, fused=bool(fused), ahead=bool(ahead))
        values = bn * bw * 8 // (32 * warps)  # weight values a thread takes per loop iteration
        print(report(f"f16x2 n{bn} w{bw} warps{warps} split-K {sk}{'' if args.no_fold else ' fold'}"
                     f"{' fused' if fused else ''}{' ahead' if ahead else ''}", loop, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
