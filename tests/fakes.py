"""FakeRunner: a deterministic stand-in for the model runner, for scheduler and engine tests only.

The "model" is a pure function of the token history: the next token is a hash of the tokens
before it, so a request's greedy continuation is fixed by its prompt alone, and whatever the
batching, chunking or preemption, the engine must reproduce its solo run exactly. A constrained
row (a grammar) samples the model's choice among the tokens its matcher allows when the step
samples, as the real sampler's mask does: a mask filled from a stale matcher changes the text.
The fake also checks the contract: positions, block coverage, the step budget, and that a step
is sampled before it is waited for or followed. A row scheduled on an assumption that proved wrong
(overlapped speculation: worker/engine.py) samples a token outside the vocabulary, which must never
reach an output, and, as on the device, leaves only the "K/V" before its first position computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from worker.batch import NOT_SAMPLED, PLACEHOLDER, ScheduledBatch, StepOutput, VerifiedTokens
from worker.request import RequestKey

__all__ = ["FakeRunner", "FakeStep", "fake_logprob", "next_token", "solo_run"]

VOCAB = 1000
EOS = 0
STALE = VOCAB + 7  # what a stale row samples


def next_token(history: list[int]) -> int:
    h = 17
    for t in history[-8:]:
        h = (h * 1_000_003 + t) % 2_147_483_647
    return 1 + h % (VOCAB - 1)  # never EOS, unless a test asks for it


def fake_logprob(position: int) -> float:
    """The fake's score of the token at `position + 1`: distinct per position, so order shows."""
    return -0.5 - position


def solo_run(prompt: list[int], max_new: int, model: Callable[[list[int]], int] = next_token) -> list[int]:
    history = list(prompt)
    out = []
    for _ in range(max_new):
        token = model(history)
        history.append(token)
        out.append(token)
    return out


@dataclass
class FakeStep:
    """A launched step: its output, the constrained rows' tokens chosen once it samples."""

    output: StepOutput
    histories: list[list[int]]  # per request: the tokens its sample follows
    batch: ScheduledBatch
    sampled: bool = False


@dataclass
class FakeRunner:
    block_size: int
    token_budget: int
    batches: list[ScheduledBatch] = field(default_factory=list)
    computed: dict[RequestKey, list[int]] = field(default_factory=dict)  # tokens whose "K/V" exist
    can_overlap: bool = False  # True: the engine launches step N+1 before it reads step N
    uniform_drafts: bool = False  # True: as a runner with verification CUDA graphs (drafts evened out)
    model: Callable[[list[int]], int] = next_token  # the next token of a history
    # ("launch" | "sample" | "wait", step) in the order the engine called them.
    calls: list[tuple[str, int]] = field(default_factory=list)
    unmasked: list[RequestKey] = field(default_factory=list)  # rows `sample` was told had ended, in order
    stale_rows: int = 0  # rows scheduled on a wrong assumption (overlapped speculation)

    def launch(self, batch: ScheduledBatch, previous: FakeStep | None, *, defer_sample: bool = False) -> FakeStep:
        """As the real runner: a placeholder takes the previous step's sample for that request, in
        its sampling row `placeholder_row` (after that many drafts, assumed accepted)."""
        assert previous is None or previous.sampled, "a step launched after one not sampled yet"
        ahead = set()
        for i, req in enumerate(batch.requests):
            for k, token in enumerate(req.token_ids):
                if token == PLACEHOLDER:
                    assert previous is not None, "a placeholder without the step that samples it"
                    assert k == 0 and i < batch.num_decode, "a placeholder outside the start of a decode row"
                    row = previous.output.keys.index(req.key)
                    value = previous.output.sampled_token_ids[row]
                    if req.placeholder_row:  # past the drafts it verified: what sampled there, if any did
                        kept = previous.output.verified[row].token_ids
                        value = kept[req.placeholder_row - 1] if len(kept) >= req.placeholder_row else STALE
                    assert value >= 0
                    req.token_ids = [value, *req.token_ids[1:]]
                    ahead.add(req.key)
                    req.all_token_ids = req.all_token_ids[: req.start_pos] + [value]  # a resolved copy
        self.calls.append(("launch", batch.step))
        step = FakeStep(self.forward(batch, ahead), [r.all_token_ids[: r.start_pos + len(r.token_ids)] for r in batch.requests],
                        batch)
        if not defer_sample:
            self.sample(step, frozenset())
        return step

    def sample(self, step: FakeStep, ended: frozenset[RequestKey]) -> None:
        assert not step.sampled, "a step sampled twice"
        self.calls.append(("sample", step.batch.step))
        self.unmasked += [r.key for r in step.batch.requests if r.key in ended]
        for i, req in enumerate(step.batch.requests):
            if req.grammar is not None and req.do_sample and req.key not in ended:
                allowed = _allowed(req.grammar.compute_bitmask())
                assert allowed, "a live matcher allows nothing"
                step.output.sampled_token_ids[i] = allowed[self.model(step.histories[i]) % len(allowed)]
        step.sampled = True

    def wait(self, handle: FakeStep) -> StepOutput:
        assert handle.sampled, "a step waited for before it was sampled"
        self.calls.append(("wait", handle.batch.step))
        return handle.output

    def execute(self, batch: ScheduledBatch) -> StepOutput:
        return self.wait(self.launch(batch, None))

    def forward(self, batch: ScheduledBatch, ahead: set[RequestKey] | frozenset[RequestKey] = frozenset()) -> StepOutput:
        """The step's computation, every row sampled unconstrained (what a subclass checks);
        `ahead`: the rows whose first token was a placeholder."""
        assert batch.num_tokens <= self.token_budget, "step budget exceeded"
        assert batch.num_tokens == sum(len(r.token_ids) for r in batch.requests)
        assert all(len(r.token_ids) == 1 + r.num_draft_tokens and r.do_sample for r in batch.requests[: batch.num_decode])
        assert not any(r.num_draft_tokens for r in batch.requests[batch.num_decode :]), "drafts outside a decode"
        assert len({r.key for r in batch.requests}) == len(batch.requests), "a request twice in one step"
        for key in batch.released_keys:
            self.computed.pop(key, None)
        self.batches.append(batch)
        sampled = []
        verified: dict[int, VerifiedTokens] = {}
        prompt_lps: dict[RequestKey, list[float]] = {}
        for req in batch.requests:
            seen = self.computed.get(req.key)
            if seen and req.start_pos != len(seen) and req.key in ahead:  # scheduled on a wrong assumption
                self.computed[req.key] = seen[: req.start_pos]  # it overwrites the "K/V" from there on
                self.stale_rows += 1
                sampled.append(STALE)
                verified[len(sampled) - 1] = VerifiedTokens([STALE], [0.0], [[]])
                continue
            if seen:  # a request continues exactly where its cache ends
                assert req.start_pos == len(seen), (req.key, req.start_pos, len(seen))
            else:  # new or resumed: from the start, or after whole blocks served by the prefix cache
                assert req.start_pos % self.block_size == 0 and req.start_pos < len(req.all_token_ids)
            assert len(req.block_table) * self.block_size >= req.start_pos + len(req.token_ids), "blocks do not cover the step"
            drafts = req.token_ids[len(req.token_ids) - req.num_draft_tokens :]
            end = req.start_pos + len(req.token_ids) - len(drafts)
            assert req.all_token_ids[req.start_pos : end] == req.token_ids[: len(req.token_ids) - len(drafts)]
            self.computed[req.key] = req.all_token_ids[:end]
            sampled.append(self.model(req.all_token_ids[:end]) if req.do_sample else NOT_SAMPLED)
            if drafts:  # as the runner: a sample after each draft, kept while the drafts match
                history = req.all_token_ids[:end]
                kept: list[int] = []
                while len(kept) < len(drafts) and (kept or [sampled[-1]])[-1] == drafts[len(kept)]:
                    history = history + [drafts[len(kept)]]
                    kept.append(self.model(history))
                self.computed[req.key] = history
                verified[len(sampled) - 1] = VerifiedTokens(kept, [0.0] * len(kept), [[] for _ in kept])
            if req.prefill_logprobs:  # as the runner: a score for each next token already known
                known = len(req.all_token_ids[req.start_pos + 1 : end + 1])
                prompt_lps[req.key] = [fake_logprob(req.start_pos + k) for k in range(known)]
        n = len(batch.requests)
        return StepOutput(batch.step, [r.key for r in batch.requests], sampled, [0.0] * n, [[] for _ in range(n)],
                          prompt_lps, verified)


def _allowed(bitmask: bytes) -> list[int]:
    """The token ids an llguidance bitmask allows (bit t of little-endian word w: token 32w + t)."""
    return [8 * i + b for i, byte in enumerate(bitmask) if byte for b in range(8) if byte >> b & 1]
