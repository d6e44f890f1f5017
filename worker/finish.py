"""When a request stops generating: every rule in one place, in TGI's finish reasons.

- `eos_token`: the sampled token is one of the model's EOS ids (unless `ignore_eos`);
- `length`: the output reached `max_new_tokens`, or the sequence the model's length;
- `stop_sequence`: the decoded text ends a match of one of `params.stop` (TGI keeps the stop
  text in the output). Text exists only on the output thread, so that thread applies this rule
  and the worker loop then aborts the request in the engine;
- past its deadline a request is not finished but expired: it ends with a `timeout` Error.

The engine applies the token rules after each sampled token (and, running ahead, to know which
requests end by length before their token is read); the scheduler and the synthetic engine the
deadline.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import FinishReason
from worker.request import Request

__all__ = ["FinishRules", "is_expired", "stop_sequence_hit"]


class FinishRules:
    def __init__(self, eos_token_ids: frozenset[int], max_model_len: int) -> None:
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def after_token(self, req: Request, token: int) -> FinishReason | None:
        """The finish reason of `req` once `token` is its newest token, if it ends there."""
        if token in self.eos_token_ids and not req.params.ignore_eos:
            return "eos_token"
        # reaches_length(req), spelled out: this runs once per generated token.
        num_tokens = len(req.all_token_ids)
        if num_tokens - len(req.prompt_ids) >= req.params.max_new_tokens or num_tokens >= self.max_model_len:
            return "length"
        return None

    def reaches_length(self, req: Request, extra: int = 0) -> bool:
        """True when `extra` more tokens would leave no room for another one."""
        return (
            req.num_output_tokens + extra >= req.params.max_new_tokens
            or req.num_tokens + extra >= self.max_model_len
        )


def is_expired(deadline: float, now: float) -> bool:
    """`deadline` is unix time, 0 for none."""
    return bool(deadline) and deadline < now


def stop_sequence_hit(text: str, piece: str, stops: Sequence[str]) -> bool:
    """Whether `text`, whose newest part is `piece`, now ends a match of a stop sequence.

    Only a match that ends inside the new piece is new.
    """
    if not stops or not piece:
        return False
    for stop in stops:
        if stop in text[-(len(stop) + len(piece)) :]:
            return True
    return False
