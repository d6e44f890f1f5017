"""The SASS of the one-row int4 GEMVs (and of paged decode attention's split pass), built for
sm_90 on a machine without a GPU.

Triton compiles for a target it is told (here Hopper, compute capability 9.0) with the ptxas and
nvdisasm its wheel ships, so a kernel's machine code can be read before any GPU time is spent:
the instructions of its main loop per weight value, how wide its loads are, and whether it
exchanges values through shared memory (LDS / STS / BAR in the loop). The installed Triton
decides the layouts, so build with the version the GPU runs (docs/perf.md names it).

    python -m load.sass_report                       # the f16x2 shortlist of worker/quant/int_kernels.py
    python -m load.sass_report --f16x2 32,128,4,1 --no-fold
    python -m load.sass_report --decode-attention   # bf16 pages, FP8 pages cast, FP8 values as words
    python -m load.sass_report --w8                  # the one-byte GEMVs beside bf16 linear_one_row
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
              divisible: tuple[int, ...], num_stages: int = 3) -> str:
    """Compile a @triton.jit function for sm_90 and disassemble it. divisible: the argument
    positions known to be multiples of 16 (pointers and sizes, as Triton specializes them)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs,
                    attrs={(i,): [["tt.divisibility", 16]] for i in divisible})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout


def f16x2_loop(block_n: int, block_w: int, warps: int, split_k: int, fold: bool, group: int = 128,
               fused: bool = False, ahead: bool = False, pdl: bool = False) -> str:
    from genfleet_kernels import int_weight_gemv_f16x2 as m

    groups, words = (block_w * 8 // group, group // 8) if block_w * 8 > group else (1, block_w)
    signature = {"x_ptr": "*bf16", "xp_ptr": "*i32", "xs_ptr": "*fp32", "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16",
                 "b_ptr": "*fp16", "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "N": "i32", "kw": "i32",
                 "NG": "i32"}
    constexprs = dict(G=group, BLOCK_N=block_n, GROUPS=groups, WORDS=words, SPLIT_K=split_k, HAS_BIAS=False,
                      EVEN_N=True, EVEN_K=True, FOLD=fold, PTX=True, X4=words % 4 == 0, FUSED=fused, X_BF16=True,
                      AHEAD=ahead, PDL=pdl)
    return main_loop(sm90_sass(m._gemv_f16x2_kernel, signature, constexprs, warps, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11)))


def decode_attention_loop(pages: str, block_n: int = 64, warps: int = 4, stages: int = 2) -> str:
    """The split pass's key loop at Llama-3.1-8B's heads (group 4 padded to 16 rows, head dim 128,
    pages of 16) with bf16 queries; pages: "bf16", "fp8-cast" or "fp8-words" (e4m3fn)."""
    from genfleet_kernels import paged_decode_attention as m

    fp8, words = pages != "bf16", pages == "fp8-words"
    kv = "*fp8e4nv" if fp8 else "*bf16"
    types = {"q_ptr": "*bf16", "k_cache_ptr": kv, "v_cache_ptr": "*i32" if words else kv,
             "k_scale_ptr": "*fp16" if fp8 else kv, "v_scale_ptr": "*fp16" if fp8 else kv, "bt_ptr": "*i32",
             "seq_lens_ptr": "*i32", "qsl_ptr": "*i32", "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32",
             "scale": "fp32", "softcap": "fp32"}
    constexprs = dict(PAGE=16, HEAD_DIM=128, BLOCK_D=128, DOT_PRECISION="tf32", BLOCK_G=16, BLOCK_N=block_n,
                      NUM_SPLITS=1, KV_FP8=fp8, DOT_F16=fp8, V_LIFT=448.0 if fp8 else 1.0, SOFTCAP=False,
                      FP8_WORDS=words, E4M3=True, V_UNIT=2.0**-8 if words else 1.0)
    args = [a for a in m._decode_partial_kernel.arg_names if a not in constexprs]
    signature = {a: types.get(a, "i32") for a in args}
    divisible = tuple(i for i, a in enumerate(args) if a.endswith("_ptr") or (a.startswith("stride") and a != "stride_bt"))
    return main_loop(sm90_sass(m._decode_partial_kernel, signature, constexprs, warps, divisible, stages))


def report(name: str, loop: str, values: int) -> str:
    ops = opcode_counts(loop)
    total = sum(ops.values())
    shown = ", ".join(f"{op} {ops[op]}" for op in ("LDG", "LDS", "STS", "BAR", "HFMA2", "HADD2", "FFMA", "LOP3", "F2FP",
                                                   "I2F", "PRMT", "FMNMX", "QGMMA", "HMMA")
                      if ops[op])
    return f"{name}: {total} instructions a loop, {total / values:.2f} per weight value ({shown})"


def w8_loops() -> list[tuple[str, str, int]]:
    """(name, main loop, weight values a thread takes per iteration) of the one-byte GEMVs
    (genfleet_kernels/w8_gemv.py plain and `bits`, genfleet_kernels/w8a8_gemv.py) and bf16 linear_one_row."""
    from genfleet_kernels import linear_one_row as one_row, w8_gemv, w8a8_gemv

    common = {"x_ptr": "*bf16", "s_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}
    loops = []
    for bn, bk, warps in ((8, 1024, 8), (4, 512, 4)):
        sig = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "out_ptr": "*bf16", "N": "i32", "K": "i32",
               "stride_wn": "i32", "stride_xm": "i32"}
        sass = sm90_sass(one_row._gemv_kernel, sig, dict(HAS_BIAS=False, BLOCK_N=bn, BLOCK_K=bk, PDL=False), warps,
                         tuple(range(8)))
        loops.append((f"bf16 linear_one_row n{bn} k{bk} warps{warps}", main_loop(sass), bn * bk // (32 * warps)))
    for w in ("fp8e4nv", "i8"):
        for bn, bk, warps, bits in ((8, 1024, 8, False), (8, 1024, 8, True), (2, 2048, 4, False), (2, 2048, 4, True)):
            sig = {**common, "w_ptr": "*" + w, "N": "i32", "K": "i32", "stride_wn": "i32", "stride_xm": "i32", "numel": "i32"}
            ce = dict(HAS_BIAS=False, IS_FP8=w == "fp8e4nv", BITS=bits, SPLIT_K=1, EVEN_K=True, BLOCK_N=bn, BLOCK_K=bk)
            sass = sm90_sass(w8_gemv._w8_gemv_kernel, sig, ce, warps, tuple(range(12)))
            loops.append((f"{w} w8_gemv n{bn} k{bk} warps{warps}{' bits' if bits else ''}", main_loop(sass),
                          bn * bk // (32 * warps)))
    for bn, bk, _, warps, _ in w8a8_gemv.W8A8_CONFIGS:
        sig = {**common, "w_ptr": "*fp8e4nv", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_wn": "i32"}
        ce = dict(FP8_MAX=448.0, MANTISSA=3, MIN_EXP=-6, MIN_SCALE=2.0**-20, HAS_BIAS=False, SPLIT_K=2, EVEN_K=True,
                  EXACT_CAST=False, BLOCK_N=bn, BLOCK_K=bk, BLOCK_X=256)
        sass = sm90_sass(w8a8_gemv._w8a8_gemv_kernel, sig, ce, warps, (0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11))
        loops.append((f"fp8 w8a8_gemv n{bn} k{bk} warps{warps} split-K 2", main_loop(sass), bn * bk // (32 * warps)))
    return loops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--f16x2", action="append", help="block_n,block_w,warps,split_k[,fused,ahead] (repeatable; "
                        "fused, ahead: 0 or 1)")
    parser.add_argument("--no-fold", action="store_true")
    parser.add_argument("--decode-attention", action="store_true", help="the split pass over bf16 and FP8 pages")
    parser.add_argument("--w8", action="store_true", help="the one-byte GEMVs instead")
    args = parser.parse_args(argv)
    if args.decode_attention:
        for pages in ("bf16", "fp8-cast", "fp8-words"):
            loop = decode_attention_loop(pages)
            ops = opcode_counts(loop)
            shown = ", ".join(f"{op} {ops[op]}" for op in ("LDG", "LDGSTS", "LDS", "LDSM", "STS", "HMMA", "F2FP", "LOP3",
                                                             "PRMT") if ops[op])
            lds_u8 = loop.count("LDS.U8")
            print(f"decode attention, {pages} pages, 64-key tiles, 4 warps, 2 stages: {sum(ops.values())} instructions "
                  f"a key tile ({shown}; LDS.U8 {lds_u8})")
        return 0
    if args.w8:
        for name, loop, values in w8_loops():
            print(report(name, loop, values))
        return 0
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
