"""Which heads, FFN columns and vocabulary rows each rank holds; settings a sharded worker refuses."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.config import ConfigError, WorkerConfig
from genfleet.cli import parse_configs
from tests.worker.parallel.test_sharded_logits import UNSHARDABLE
from tests.worker.test_models import _COMMON, FAMILIES
from worker.models.config import ModelConfig, MoEConfig
from worker.parallel import ShardingError, ShardPlan
from worker.parallel.launch import check_shardable, world_size_of
from worker.parallel.plan import split_range
from worker.quant import QuantizationError


def _cfg(heads: int, kv: int, inter: int = 96, vocab: int = 211) -> ModelConfig:
    return ModelConfig("LlamaForCausalLM", vocab, 64, inter, 2, heads, kv, 16, 1e-5, 1e4, None, 256, False,
                       frozenset())


def test_ranges_are_contiguous_near_equal_and_cover_everything() -> None:
    for total, parts in ((9, 2), (96, 4), (97, 3), (4, 4)):
        ranges = [split_range(total, parts, r) for r in range(parts)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


@pytest.mark.parametrize(("heads", "kv", "world", "expected"), [
    (4, 2, 2, [(0,), (1,)]),  # divides: one KV head a rank
    (8, 8, 4, [(0, 1), (2, 3), (4, 5), (6, 7)]),  # multi-head attention
    (4, 1, 2, [(0,), (0,)]),  # one KV head: replicated on both ranks
    (8, 2, 4, [(0,), (0,), (1,), (1,)]),  # fewer KV heads than ranks
    (6, 3, 2, [(0, 0, 1), (1, 2, 2)]),  # 3 do not divide 2: the straddled head kept twice
    (9, 3, 2, [(0, 0, 0, 1, 1), (1, 2, 2, 2)]),  # the default model's shape: 5 and 4 query heads
])
def test_each_rank_keeps_the_kv_heads_its_query_heads_read(
    heads: int, kv: int, world: int, expected: list[tuple[int, ...]]
) -> None:
    plans = [ShardPlan.build(_cfg(heads, kv), r, world) for r in range(world)]
    assert [p.kv_heads for p in plans] == expected
    for p in plans:
        local = p.q_heads[1] - p.q_heads[0]
        per = local // len(p.kv_heads)  # the kernels' grouping: local head i reads local KV head i // per
        assert local % len(p.kv_heads) == 0
        assert [p.kv_heads[i // per] for i in range(local)] == [h // (heads // kv) for h in range(*p.q_heads)]


def test_the_vocabulary_pads_the_last_rank() -> None:
    plans = [ShardPlan.build(_cfg(4, 2, vocab=211), r, 2) for r in range(2)]
    assert [(p.vocab_start, p.vocab_per_rank) for p in plans] == [(0, 106), (106, 106)]
    local = plans[1].local_config(_cfg(4, 2, vocab=211))
    assert (local.vocab_size, local.num_heads, local.num_kv_heads, local.intermediate_size) == (106, 2, 1, 48)


def test_experts_split_their_ffn_and_keep_the_router_whole() -> None:
    # Tensor parallel inside each expert: gate/up rows and down columns of every expert's FFN (and
    # the shared expert's), the router and the shared expert's gate read whole on every rank.
    moe = MoEConfig(num_experts=4, top_k=2, intermediate_size=33, normalize_top_k=False, shared_intermediate_size=47)
    cfg = dataclasses.replace(_cfg(4, 2), moe=moe)
    plans = [ShardPlan.build(cfg, r, 2) for r in range(2)]
    assert [p.moe_ffn for p in plans] == [(0, 17), (17, 33)]
    assert [p.shared_ffn for p in plans] == [(0, 24), (24, 47)]
    local = plans[1].local_config(cfg).moe
    assert local is not None and (local.intermediate_size, local.shared_intermediate_size) == (16, 23)
    assert (local.num_experts, local.top_k) == (4, 2)
    shared = "layers.0.mlp.shared_expert"
    assert plans[1].rows(f"{shared}.gate_up_proj.weight", 1) == [(24, 47)]
    assert plans[1].columns(f"{shared}.down_proj.weight") == (24, 47)
    assert plans[1].rows("layers.0.mlp.gate_up_proj.weight", 0) == [(48, 96)]  # a dense layer beside them
    for name in ("layers.0.mlp.gate.weight", "layers.0.mlp.shared_expert_gate.weight"):
        assert plans[1].rows(name, None) is None and plans[1].columns(name) is None


@pytest.mark.parametrize(("width", "shared", "named"), [(1, 0, "expert FFN width 1"), (8, 1, "shared expert FFN width 1")])
def test_an_expert_narrower_than_the_ranks_is_refused(width: int, shared: int, named: str) -> None:
    moe = MoEConfig(num_experts=4, top_k=2, intermediate_size=width, normalize_top_k=True,
                    shared_intermediate_size=shared)
    with pytest.raises(ValueError, match=f"{named} cannot shard over 2"):
        ShardPlan.build(dataclasses.replace(_cfg(4, 2), moe=moe), 0, 2)


def test_more_ranks_than_heads_is_refused_with_the_counts() -> None:
    with pytest.raises(ValueError, match="4 attention heads: it cannot shard over 8"):
        ShardPlan.build(_cfg(4, 2), 0, 8)


def test_num_shard_settings() -> None:
    _, config = parse_configs(["worker", "--num-shard", "2"], environ={})
    assert config.num_shard == 2
    _, config = parse_configs(["worker"], environ={"NUM_SHARD": "4"})  # TGI's variable
    assert config.num_shard == 4
    _, config = parse_configs(["worker", "--sharded"], environ={})
    assert config.sharded is True
    for bad in ({"num_shard": 0}, {"sharded": False, "num_shard": 2}, {"sharded": True, "num_shard": 1}):
        with pytest.raises(ConfigError, match="shard"):
            WorkerConfig(**bad)  # type: ignore[arg-type]


def test_world_size_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert world_size_of(WorkerConfig(), cpu) == 1
    assert world_size_of(WorkerConfig(num_shard=2), cpu) == 2
    with pytest.raises(ShardingError, match="--num-shard N"):
        world_size_of(WorkerConfig(sharded=True), cpu)


@pytest.mark.parametrize("family", sorted(UNSHARDABLE))
def test_whole_projection_qk_norms_are_refused_by_name(tmp_path: Path, family: str) -> None:
    config_cls, _, extra = FAMILIES[family]
    config_cls(**{**_COMMON, **extra}).save_pretrained(tmp_path)
    with pytest.raises(ShardingError, match="--num-shard 2: .*cannot be sharded yet"):
        check_shardable(WorkerConfig(num_shard=2), tmp_path, 2)


def test_a_prequantized_checkpoint_is_refused_before_any_rank_starts(tmp_path: Path) -> None:
    config_cls, _, extra = FAMILIES["llama"]
    config = config_cls(**{**_COMMON, **extra})
    config.quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": True}
    config.save_pretrained(tmp_path)
    with pytest.raises(QuantizationError, match="--quantize gptq cannot be sharded yet"):
        check_shardable(WorkerConfig(num_shard=2), tmp_path, 2)


def test_the_worker_names_the_counts_and_exits_2_before_starting_any_rank(default_model_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "genfleet", "worker", "--device", "cpu", "--num-shard", "16",
                           "--redis-url", "redis://127.0.0.1:1/0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: --num-shard 16: LlamaForCausalLM has 9 attention heads: it cannot shard over 16" in proc.stderr
