"""A request's journal folded into what a gateway needs to take it over: the request as first
submitted (the claim), its current attempt, whom its owner publishes to, and the tokens so far.

The journal ({p}:log:{req_id}, common/protocol.py JournalEntry) holds, in order, the gateway's
GenerateRequest of each continuation, the owner's EventBatch of each step (worker/checkpoint.py)
and the Cancel or Adopt of a gateway. Folding it applies the relay's rules (gateway/lifecycle.py):
a token counts when its seq is the next one and its attempt is current, or when an older attempt
produced it before the current one started (a continuation starts at its `generated_ids`, the
tokens its gateway had relayed, so every counted token is one some client may have been sent).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from common.errors import GATEWAY_GONE
from common.protocol import Accepted, Adopt, Cancel, Error, EventBatch, Finish, GenerateRequest, JournalEntry, Token

__all__ = ["Replay"]


@dataclass
class Replay:
    first: GenerateRequest  # attempt 0 as claimed: the prompt, the parameters (seed), the scope
    current: GenerateRequest = field(init=False)  # the latest attempt
    reply_to: str = field(init=False)  # the gateway the owner publishes to
    owner: str | None = None  # worker of the current attempt, once it accepted
    tokens: list[Token] = field(default_factory=list)  # seq 0, 1, 2, ...
    finish: Finish | None = None
    error: Error | None = None  # the current attempt's
    cancelled: Cancel | None = None  # by its gateway: the client left, or it failed there
    read: int = 0  # journal entries folded so far: the next read starts here

    def __post_init__(self) -> None:
        self.current = self.first
        self.reply_to = self.first.gateway_id

    @property
    def req_id(self) -> str:
        return self.first.req_id

    @property
    def ended(self) -> bool:
        return self.finish is not None or self.error is not None or self.cancelled is not None

    @property
    def gone(self) -> bool:
        """Cancelled before it ended: its client left, or no gateway adopted it in time."""
        return self.cancelled is not None or (self.error is not None and self.error.error_type == GATEWAY_GONE)

    def fold(self, entries: Iterable[JournalEntry]) -> list[Token]:
        """Apply more of the journal; the tokens it added."""
        added: list[Token] = []
        for entry in entries:
            self.read += 1
            if isinstance(entry, EventBatch):
                for event in entry.events:
                    self._event(event, entry.worker_id, added)
            elif isinstance(entry, GenerateRequest):
                if entry.attempt > self.current.attempt:
                    self._new_attempt(entry, added)
            elif isinstance(entry, Adopt):
                self.reply_to = entry.gateway_id
            elif entry.reason != "superseded" and entry.attempt in (-1, self.current.attempt):
                self.cancelled = entry
        return added

    def _new_attempt(self, request: GenerateRequest, added: list[Token]) -> None:
        # Tokens of older attempts past the point the new one starts from were never relayed.
        start = len(request.generated_ids)
        del self.tokens[start:]
        added[:] = [t for t in added if t.seq < start]
        self.current, self.reply_to, self.owner = request, request.gateway_id, None

    def _event(self, event: object, worker_id: str, added: list[Token]) -> None:
        current = self.current
        if isinstance(event, Token):
            if event.seq != len(self.tokens):
                return  # a duplicate, or past a hole (the journal missed a step)
            if event.attempt == current.attempt or (event.attempt < current.attempt
                                                    and event.seq < len(current.generated_ids)):
                self.tokens.append(event)
                added.append(event)
            return
        if getattr(event, "attempt", None) != current.attempt:
            return  # a stale attempt's Accepted, Finish or Error
        if isinstance(event, Accepted):
            self.owner = event.worker_id
            self.reply_to = event.gateway_id or self.reply_to
        elif isinstance(event, Finish):
            if event.seq <= len(self.tokens):
                self.finish = event
        elif isinstance(event, Error):
            self.error = event
        self.owner = self.owner or worker_id
