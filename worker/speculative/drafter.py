"""Which decoding requests draft this step, how many tokens, and what their drafts earned.

The scheduler asks `Drafter.propose` for each decode it schedules, after `active` said the step
speculates at all; the engine reports each verified request's outcome to `observe`. Plain Python.

Two sources of drafts (`method`): "ngram", prompt lookup over the request's tokens
(worker/speculative/ngram.py), or speculator heads ("medusa", "mlp_speculator";
worker/speculative/heads.py), which run on the device in the step that samples a token and
propose the drafts that follow it. The scheduler asks heads for proposals where `wants_proposals`
says so; the engine hands them over with `offer`, and the next step verifies them, provided the
request's token count is still the one they follow.

Turn-down, the two ways speculation stops paying:
- per step: past `--speculate-max-batch-size` running requests a decode step is no longer
  bandwidth-bound, so the extra query tokens cost real compute; the step drafts nothing (and on
  CUDA it may overlap with the next one again);
- per request: a request whose drafts are mostly rejected (an acceptance rate below
  MIN_ACCEPTANCE, a moving mean over its recent verified steps) stops drafting for a pause that
  doubles each time it happens again (PAUSE_STEPS up to MAX_PAUSE_STEPS), then tries again. A
  request without an n-gram match drafts nothing and costs nothing; a paused request's heads
  propose nothing either. Not for n-gram drafts on a runner with verification CUDA graphs
  (`pauses` False): there a verification step costs about a plain decode step (1.05x on an H200)
  and a step that verifies anything gives every other decode fillers anyway, so a pause saves
  next to nothing and gives up the drafts that would have been accepted (the input-grounded
  prompts of load/bench_speculative.py: 2.28 tokens per step without pauses, 2.01 with).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.speculative.ngram import NgramIndex

__all__ = ["Drafter", "DraftState", "SpeculationStats"]

NGRAM_MIN, NGRAM_MAX = 1, 4  # suffix lengths tried, longest first
MIN_ACCEPTANCE = 0.2  # below this moving acceptance rate a request pauses drafting
ACCEPTANCE_WEIGHT = 0.3  # weight of the newest verified step in the moving rate
PAUSE_STEPS, MAX_PAUSE_STEPS = 8, 256


@dataclass(slots=True)
class DraftState:
    """One request's drafting state (lives on its Request, as its block table does)."""

    index: NgramIndex | None  # n-gram lookup; None when heads propose
    proposed: list[int] = field(default_factory=list)  # the heads' drafts to follow token number `proposed_at`
    proposed_at: int = -1  # the request's token count when they were proposed
    acceptance: float = 1.0  # moving mean of accepted / drafted over its verified steps
    paused_until: int = 0  # scheduler step before which it drafts nothing
    all_accepted: bool = True  # its latest verified step kept every draft (none verified yet: True)
    next_pause: int = PAUSE_STEPS


@dataclass(slots=True)
class SpeculationStats:
    """Running totals since start (metrics turn them into increments)."""

    draft_tokens: int = 0  # tokens proposed and verified
    accepted_tokens: int = 0  # of those, accepted
    # Per draft position j (0-based): verified steps that drafted a token j, and that accepted it.
    drafted_by_position: list[int] = field(default_factory=list)
    accepted_by_position: list[int] = field(default_factory=list)


class Drafter:
    def __init__(self, num_speculative: int, max_batch_size: int, method: str = "ngram", pauses: bool = True) -> None:
        self.num_speculative = num_speculative  # --speculate: most drafts per request and step
        self.max_batch_size = max_batch_size
        self.pauses = pauses  # a request whose drafts keep failing pauses (the turn-down per request)
        self.method = method if num_speculative > 0 else None  # /info's name of the method
        self.uses_heads = method != "ngram"
        per_position = num_speculative
        self.stats = SpeculationStats(drafted_by_position=[0] * per_position, accepted_by_position=[0] * per_position)

    def active(self, num_running: int) -> bool:
        """Whether a step with `num_running` running requests drafts at all."""
        return self.num_speculative > 0 and num_running <= self.max_batch_size

    def propose(self, tokens: list[int], state: DraftState | None, limit: int, step: int,
                known: int | None = None) -> tuple[list[int], DraftState]:
        """min(--speculate, limit) draft tokens to follow `tokens`, or none (no n-gram match, no
        proposal of the heads for this token count, paused); and the request's state. `known`: how
        many of `tokens` are not assumed (worker/speculative/ngram.py); all by default."""
        if state is None:
            state = self._new_state()
        if step < state.paused_until:
            return [], state
        k = min(self.num_speculative, limit)
        if state.index is None:
            return (state.proposed[:k] if state.proposed_at == len(tokens) else []), state
        return state.index.propose(tokens, k, known), state

    def wants_proposals(self, state: DraftState | None, step: int) -> bool:
        """Whether a request sampling at `step` has the heads propose drafts for step + 1."""
        return self.uses_heads and (state is None or step + 1 >= state.paused_until)

    def offer(self, state: DraftState | None, num_tokens: int, drafts: list[int]) -> DraftState:
        """The heads' drafts to follow a request's first `num_tokens` tokens; its state."""
        if state is None:
            state = self._new_state()
        state.proposed, state.proposed_at = drafts, num_tokens
        return state

    def _new_state(self) -> DraftState:
        return DraftState(None if self.uses_heads else NgramIndex(NGRAM_MIN, NGRAM_MAX))

    def observe(self, state: DraftState, num_drafted: int, num_accepted: int, step: int) -> None:
        """A verified step of one request: `num_accepted` of its `num_drafted` drafts were kept."""
        stats = self.stats
        stats.draft_tokens += num_drafted
        stats.accepted_tokens += num_accepted
        for j in range(num_drafted):
            stats.drafted_by_position[j] += 1
        for j in range(num_accepted):
            stats.accepted_by_position[j] += 1
        rate = num_accepted / num_drafted
        state.all_accepted = num_accepted == num_drafted
        state.acceptance += ACCEPTANCE_WEIGHT * (rate - state.acceptance)
        if self.pauses and state.acceptance < MIN_ACCEPTANCE:
            state.paused_until = step + state.next_pause
            state.next_pause = min(2 * state.next_pause, MAX_PAUSE_STEPS)
            state.acceptance = 2 * MIN_ACCEPTANCE  # after the pause it gets a few chances again
