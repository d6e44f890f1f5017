"""What a load run sends: prompts with their output budgets, and when it sends them.

Two prompt sources. The built-in synthetic mix needs no files: chat-like prompts of short, medium
and long length made from a fixed word list, each with an output budget drawn from a matching
distribution; a seed makes the mix reproducible. A ShareGPT-style JSON file (a list of
`{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}`, the format
vLLM's and TGI's benchmarks read) gives real prompts; the answer's length sets the budget.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PromptSpec", "synthetic_mix", "load_sharegpt", "poisson_gaps", "load_prompts"]

_WORDS = (
    "the model server request token batch cache gateway worker stream latency answer question "
    "river mountain city history science music garden kitchen engine market letter story planet "
    "ocean forest winter summer morning evening window bridge signal number theory language "
    "explain describe compare summarize write list why how what when where which simple careful"
).split()

# (share of requests, prompt words lo..hi, output tokens lo..hi): a chat-like mix in which most
# prompts are short, a few long; outputs mostly medium.
_MIX = (
    (0.5, (8, 40), (32, 128)),
    (0.35, (60, 200), (64, 256)),
    (0.15, (300, 700), (128, 384)),
)


@dataclass(frozen=True, slots=True)
class PromptSpec:
    prompt: str
    max_new_tokens: int


def synthetic_mix(n: int, seed: int = 0, max_new_tokens: int | None = None) -> list[PromptSpec]:
    """`n` prompts from the built-in mix; `max_new_tokens` fixes every budget when given."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        _, (w_lo, w_hi), (o_lo, o_hi) = _pick(rng)
        words = [rng.choice(_WORDS) for _ in range(rng.randint(w_lo, w_hi))]
        # A distinct opening per request keeps prefix caches from turning the run into a cache test.
        prompt = f"Request {i}: " + " ".join(words) + "."
        specs.append(PromptSpec(prompt, max_new_tokens or rng.randint(o_lo, o_hi)))
    return specs


def load_sharegpt(path: str | Path, n: int, seed: int = 0, max_new_tokens: int | None = None,
                  max_prompt_chars: int = 8000) -> list[PromptSpec]:
    """The first human turn of `n` conversations sampled from a ShareGPT-style file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    pairs: list[tuple[str, str]] = []
    for item in data:
        if not isinstance(item, dict):
            continue
        turns = item.get("conversations") or item.get("conversation") or []
        human = next((t.get("value", "") for t in turns if t.get("from") in ("human", "user")), "")
        answer = next((t.get("value", "") for t in turns if t.get("from") in ("gpt", "assistant")), "")
        if human and len(human) <= max_prompt_chars:
            pairs.append((human, answer))
    if not pairs:
        raise ValueError(f"{path}: no usable conversations (need a human turn)")
    rng = random.Random(seed)
    chosen = [pairs[rng.randrange(len(pairs))] for _ in range(n)] if n > len(pairs) else rng.sample(pairs, n)
    # About 1.3 tokens per word is close enough for English with a BPE tokenizer.
    return [PromptSpec(p, max_new_tokens or max(4, min(1024, int(len(a.split()) * 1.3)))) for p, a in chosen]


def load_prompts(source: str, n: int, seed: int = 0, max_new_tokens: int | None = None) -> list[PromptSpec]:
    """`synthetic` or a path to a ShareGPT-style JSON file."""
    if source == "synthetic":
        return synthetic_mix(n, seed, max_new_tokens)
    return load_sharegpt(source, n, seed, max_new_tokens)


def poisson_gaps(rate: float, seed: int = 0) -> Iterator[float]:
    """Seconds between arrivals of a Poisson process at `rate` requests/s (inf: all at once)."""
    rng = random.Random(seed)
    while True:
        yield 0.0 if rate == float("inf") else rng.expovariate(rate)


def _pick(rng: random.Random) -> tuple[float, tuple[int, int], tuple[int, int]]:
    x = rng.random()
    for entry in _MIX:
        if x < entry[0]:
            return entry
        x -= entry[0]
    return _MIX[-1]
