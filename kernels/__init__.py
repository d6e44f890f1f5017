"""Triton kernels: each launcher lives in the module of its own name (`kernels.store_kv.store_kv`;
`gelu_tanh_and_mul` is a variant in kernels/silu_and_mul.py), with its torch reference in
kernels/reference.py; kernels/paged_kv.py holds what the two paged attention kernels share.

Nothing is imported here, so `kernels.reference` imports without Triton installed (and
TRITON_INTERPRET, read when a kernel is defined, can still be set by the CPU tests): import a
launcher from its module.
"""

from __future__ import annotations

__all__: list[str] = []
