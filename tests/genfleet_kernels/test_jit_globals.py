"""Every global a Triton kernel reads is one the compiler accepts: a jit function, a module, a
`tl.constexpr` or a builtin. The CPU interpreter (TRITON_INTERPRET=1, what CI runs) reads any
Python global, so a plain float constant passes every CPU test and fails to compile on a GPU;
this test is what catches it without one."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import types

import pytest
import triton
import triton.language as tl

import genfleet_kernels


def _kernel_modules() -> list[types.ModuleType]:
    return [importlib.import_module(f"genfleet_kernels.{m.name}") for m in pkgutil.iter_modules(genfleet_kernels.__path__)]


def _is_jit(fn: object) -> bool:
    return isinstance(fn, triton.runtime.jit.JITFunction) or type(fn).__name__ in {"JITFunction", "InterpretedFunction"}


def _jit_functions(module: types.ModuleType) -> list[tuple[str, ast.FunctionDef]]:
    tree = ast.parse(inspect.getsource(module))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
            found.append((node.name, node))
    return found


def _allowed(value: object) -> bool:
    return (_is_jit(value) or inspect.ismodule(value) or isinstance(value, tl.constexpr)
            or callable(value) and getattr(value, "__module__", "").startswith("triton"))


@pytest.mark.parametrize("module", _kernel_modules(), ids=lambda m: m.__name__)
def test_kernels_read_only_globals_the_compiler_accepts(module: types.ModuleType) -> None:
    bad = []
    for name, fn in _jit_functions(module):
        local = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        local |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local:
                if hasattr(builtins, node.id) or node.id not in vars(module):
                    continue
                if not _allowed(vars(module)[node.id]):
                    bad.append(f"{name} reads {node.id} = {vars(module)[node.id]!r}")
    assert not bad, f"{module.__name__}: wrap these in tl.constexpr(...): {bad}"
