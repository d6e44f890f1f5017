"""Perplexity of a served model on a fixed text: the quality check of quantized weights.

The text (load/texts/, public domain) is tokenized with the model's tokenizer and run as one
prefill through the worker's own model runner (any --quantize method, device and dtype), and the
perplexity is exp(mean negative log-likelihood of each token given the ones before it).

    python -m load.perplexity MODEL_DIR                        # the checkpoint as it is
    python -m load.perplexity MODEL_DIR --dtype bfloat16
    python -m load.perplexity MODEL_DIR --quantize fp8
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

__all__ = ["TEXT", "perplexity"]

TEXT = Path(__file__).resolve().parent / "texts" / "declaration_of_independence.txt"


def perplexity(model_dir: Path, *, text: Path = TEXT, quantize: str | None = None, device: str = "cpu",
               dtype: str = "float32", max_tokens: int = 2048) -> float:
    import torch
    from transformers import AutoTokenizer

    from common.config import WorkerConfig
    from common.sampling_params import SamplingParams
    from worker.attention import AttentionMetadata, forward_context
    from worker.batch import ScheduledBatch, ScheduledRequest
    from worker.input_builder import build_inputs
    from worker.model_runner import ModelRunner

    ids = AutoTokenizer.from_pretrained(model_dir)(text.read_text()).input_ids[:max_tokens]
    config = WorkerConfig(device=device, dtype=dtype, quantize=quantize, max_batch_total_tokens=len(ids) + 64,
                          max_batch_prefill_tokens=len(ids), cuda_graphs="0")
    runner = ModelRunner(config, model_dir)
    blocks = list(range(runner.num_blocks))
    req = ScheduledRequest("text", ids, 0, blocks, True, SamplingParams(max_new_tokens=1))
    inputs = build_inputs(ScheduledBatch(0, [req], 0, len(ids)), runner.block_size, runner.device)
    meta = AttentionMetadata(inputs.slot_mapping, inputs.block_tables, inputs.seq_lens, inputs.query_start_loc,
                             runner.kv.layers, inputs.max_query_len)
    with torch.inference_mode(), forward_context(meta):
        logits = runner.model.compute_logits(runner.model(inputs.input_ids, inputs.positions))  # (T, V) float32
        logp = torch.log_softmax(logits[:-1], dim=-1)  # (T - 1, V)
        nll = -logp.gather(1, inputs.input_ids[1:].unsqueeze(1)).mean()
    return math.exp(float(nll))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--text", type=Path, default=TEXT)
    args = parser.parse_args(argv)
    ppl = perplexity(args.model_dir, text=args.text, quantize=args.quantize, device=args.device, dtype=args.dtype)
    print(f"{args.model_dir.name} quantize={args.quantize} {args.device}/{args.dtype}: perplexity {ppl:.3f} "
          f"on {args.text.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
