"""load/bench_variants.py on the CPU: the child's command line, its JSON result, the ratios, a real child."""

from __future__ import annotations

import sys

import pytest

from load.bench_gpu import build_parser
from load.bench_variants import (RESULT_TAG, ChildFailed, ChildSpec, Result, child_argv, run_child, variant_setting,
                                 variants_of, with_ratios)
from load.roofline import Card, Row

CARD = Card("NVIDIA H200", 4.27e12, 7.89e14)


def _result() -> Result:
    rows = [Row("llama-3.1-8b", "(a) awq: batch 1 (128 in / 256 out)", 532.5, 880.25, None, "TPOT p50 1.80 ms", "a"),
            Row("llama-3.1-8b", "(c) awq: 300 x (1024 in / 128 out) at t=0", 9000.0, None, 12.5, "x", "c"),
            Row("llama-3.1-8b", "(a) without CUDA graphs", 46.8)]
    return Result(rows, ["a note", "µs ✓"], {"a": 532.5, "c": 9000.0}, 600_000, CARD)


def test_result_round_trips_through_json() -> None:
    result = _result()
    assert Result.from_json(result.to_json()) == result
    bare = Result([], [])
    assert Result.from_json(bare.to_json()) == bare


def test_spec_round_trips_with_and_without_a_card() -> None:
    for spec in (ChildSpec("llama-3.1-8b", ""), ChildSpec("mixtral-8x7b", "kv_cache_dtype=fp8_e4m3fn", CARD)):
        assert ChildSpec.from_json(spec.to_json()) == spec


def test_child_parses_the_parents_flags_and_its_spec() -> None:
    argv = ["--models", "8b", "--no-baseline", "--workloads", "a,b,c", "--quantize", "awq",
            "--variants", "quantize=fp8,kv_cache_dtype=fp8_e4m3fn", "--requests", "300"]
    spec = ChildSpec("llama-3.1-8b", "quantize=fp8", CARD)
    command = child_argv(argv, spec)
    assert command[:3] == [sys.executable, "-m", "load.bench_gpu"]
    parent, child = build_parser().parse_args(argv), build_parser().parse_args(command[3:])
    assert parent.variant_child is None
    assert ChildSpec.from_json(child.variant_child) == spec
    assert {**vars(child), "variant_child": None} == vars(parent)


def test_quantize_is_short_for_a_variant() -> None:
    assert variants_of("awq,fp8", "kv_cache_dtype=fp8_e4m3fn") == [
        "quantize=awq", "quantize=fp8", "kv_cache_dtype=fp8_e4m3fn"]
    assert variants_of("", "") == []
    for bad in ("quantize", "quantize=", "no_such_setting=1"):
        with pytest.raises(SystemExit, match="SETTING=VALUE"):
            variants_of("", bad)


def test_a_bool_settings_value_is_read_as_a_bool() -> None:
    assert variant_setting("graph_head=false") == {"graph_head": False}
    assert variant_setting("fused_rotary_store=0") == {"fused_rotary_store": False}
    assert variant_setting("graph_head=True") == {"graph_head": True}
    assert variant_setting("quantize=fp8") == {"quantize": "fp8"}
    with pytest.raises(SystemExit, match="true or false"):
        variant_setting("graph_head=maybe")


def test_ratios_are_against_the_bf16_row_of_the_same_workload() -> None:
    dense = Result([], [], {"a": 213.0, "b": 9800.0}, 300_000)
    out = with_ratios(_result(), dense)
    assert out.rows[0].note == "2.50x bf16 (a); TPOT p50 1.80 ms"
    assert out.rows[1].note == "x"  # bf16 had no (c) row
    assert out.rows[2].note == ""  # not a variant's row
    assert out.notes[-1] == "KV pool 600000 tokens: 2.00x bf16's 300000"
    assert _result().rows[0].note == "TPOT p50 1.80 ms"  # the child's result is left as it was


def test_a_child_passes_its_output_through_and_returns_its_result(capsys: pytest.CaptureFixture[str]) -> None:
    body = f"print('loading'); print({RESULT_TAG!r} + {_result().to_json()!r}); print('done')"
    assert run_child([sys.executable, "-c", body], "8b awq") == _result()
    assert capsys.readouterr().out == "loading\ndone\n"


def test_a_child_that_fails_or_prints_no_result_raises() -> None:
    with pytest.raises(ChildFailed, match="8b fp8: the child exited with status 3"):
        run_child([sys.executable, "-c", "import sys; sys.exit(3)"], "8b fp8")
    with pytest.raises(ChildFailed, match="before printing its rows"):
        run_child([sys.executable, "-c", "print('no rows')"], "8b fp8")
