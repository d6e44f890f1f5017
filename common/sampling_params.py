"""Sampling parameters as they travel from gateway to worker.

The gateway validates user input (TGI's rules, see gateway/) and normalises it into this
struct; the worker builds its sampling tensors from it. Only resolved values travel: no
`None` means "TGI default" here, the gateway has already applied the defaults.
"""

from __future__ import annotations

import msgspec

__all__ = ["SamplingParams"]


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    max_new_tokens: int  # remaining budget for this attempt (>= 1)
    do_sample: bool = False  # False: greedy, and every warper below is ignored
    temperature: float = 1.0  # > 0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    typical_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # CTRL-style multiplicative; 1.0 = off
    frequency_penalty: float = 0.0  # OpenAI-style, subtracted per occurrence; 0 = off
    presence_penalty: float = 0.0  # OpenAI-style, subtracted once per seen token; 0 = off
    seed: int | None = None  # per-request generator seed; None only when greedy
    stop: tuple[str, ...] = ()  # stop sequences, matched on decoded text (kept in the output)
    top_n_tokens: int = 0  # alternatives returned per generated token
    logprobs: bool = True  # compute the chosen token's logprob (cheap; TGI always returns it)
    prefill_logprobs: bool = False  # decoder_input_details: logprobs of the prompt tokens
    ignore_eos: bool = False  # keep generating past EOS (benchmarks)
    min_tokens: int = 0  # EOS is not sampled before this many output tokens (vLLM's min_tokens)
    skip_special_tokens: bool = True  # decoded text leaves special tokens out
    # Bias each step toward the green list of the previous token (common/watermark.py), with the
    # fleet's --watermark-gamma/-delta; it depends on the tokens alone, so a continuation keeps it.
    watermark: bool = False
    # The llguidance grammar (its JSON or Lark text, built and checked by gateway/grammar.py) the
    # output must match; None = unconstrained. The worker compiles it (worker/grammar.py).
    grammar: str | None = None

    def is_greedy(self) -> bool:
        return not self.do_sample

    def has_penalties(self) -> bool:
        """Repetition, frequency or presence penalty on: sampling reads the token history."""
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
