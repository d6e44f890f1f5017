"""Decode CUDA graphs: replay gives the eager path's greedy tokens (8B and SmolLM2 shapes); steps
launched ahead (overlapped scheduling) give the tokens of steps run one at a time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from load.bench_gpu import write_model_dir
from worker.batch import ScheduledBatch, ScheduledRequest
from worker.engine import LLMEngine
from worker.request import Request
from worker.input_builder import build_inputs
from worker.model_runner import ModelRunner


def _runner(tmp_path: Path, shape: str, graphs: str) -> ModelRunner:
    torch.manual_seed(0)
    config = WorkerConfig(device="cuda", dtype="bfloat16", max_batch_total_tokens=8192, cuda_graphs=graphs)
    return ModelRunner(config, write_model_dir(tmp_path, shape), load=False)


def _greedy(runner: ModelRunner, prompts: list[list[int]], new: int, params: SamplingParams | None = None,
            overlap: bool = True) -> list[list[int]]:
    config = replace(runner.config, overlap_scheduling=overlap)
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    assert engine.overlap == overlap
    params = params or SamplingParams(max_new_tokens=new, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(Request(f"r{i}", p, params, seed=i, arrival_time=0.0))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.key] += out.new_token_ids
    return [tokens[f"r{i}"] for i in range(len(prompts))]


def test_graphs_are_off_on_cpu(tmp_path: Path) -> None:
    config = WorkerConfig(device="cpu", max_batch_total_tokens=256)
    runner = ModelRunner(config, write_model_dir(tmp_path, "smollm2-135m"), load=False)
    assert runner.graphs is None


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["smollm2-135m", "llama-3.1-8b"])
def test_replay_gives_eager_greedy_tokens(tmp_path: Path, shape: str) -> None:
    runner = _runner(tmp_path, shape, "1,2,4,8")
    graphs = runner.graphs
    assert graphs is not None and sorted(graphs.graphs) == [1, 2, 4, 8]
    assert graphs.capture_seconds > 0
    gen = torch.Generator().manual_seed(1)
    # Four sequences decode together: bucket 4 exactly, so eager and replay run the same shapes.
    prompts = [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (5, 17, 33, 64)]
    replayed = _greedy(runner, prompts, 24)
    runner.graphs = None
    eager = _greedy(runner, prompts, 24)
    runner.graphs = graphs
    assert replayed == eager


@pytest.mark.gpu
def test_padded_bucket_matches_eager_hidden_states(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "smollm2-135m", "4")
    graphs = runner.graphs
    assert graphs is not None
    params = SamplingParams(max_new_tokens=4)
    # Three sequences with 40, 16 and 3 cached tokens decode one token: bucket 4 with one padding row.
    reqs = [
        ScheduledRequest("a", [11], 40, [0, 1, 2], True, params),
        ScheduledRequest("b", [12], 16, [3, 4], True, params),
        ScheduledRequest("c", [13], 3, [5], True, params),
    ]
    inputs = build_inputs(ScheduledBatch(0, reqs, 3, 3), runner.block_size, runner.device)
    with torch.inference_mode():
        replayed = runner._forward(inputs).clone()  # (3, hidden)
        runner.graphs = None
        eager = runner._forward(inputs)  # (3, hidden)
    runner.graphs = graphs
    assert replayed.shape == eager.shape == (3, 576)
    torch.testing.assert_close(replayed.float(), eager.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_overlapped_steps_give_the_tokens_of_one_step_at_a_time(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "smollm2-135m", "1,2,4,8")
    gen = torch.Generator().manual_seed(2)
    # Staggered lengths: sequences finish at different steps while others keep decoding.
    prompts = [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (3, 9, 30, 64, 100)]
    for params in (SamplingParams(max_new_tokens=20, ignore_eos=True),
                   SamplingParams(max_new_tokens=20, ignore_eos=True, do_sample=True, temperature=0.8, top_p=0.9)):
        assert _greedy(runner, prompts, 20, params, overlap=True) == _greedy(runner, prompts, 20, params, overlap=False)
