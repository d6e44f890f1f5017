"""Triton kernels: each launcher lives in the module of its own name (`genfleet_kernels.store_kv.store_kv`;
`gelu_tanh_and_mul` is a variant in genfleet_kernels/silu_and_mul.py), with its torch reference in
genfleet_kernels/reference.py; genfleet_kernels/paged_kv.py holds what the two paged attention kernels share.

Nothing is imported here, so `genfleet_kernels.reference` imports without Triton installed (and
TRITON_INTERPRET, read when a kernel is defined, can still be set by the CPU tests): import a
launcher from its module.
"""

from __future__ import annotations

__all__: list[str] = []
