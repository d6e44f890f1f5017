"""The drafter's turn-down (per step at large batch, per request on low acceptance) and counters."""

from __future__ import annotations

from worker.speculative.drafter import MIN_ACCEPTANCE, PAUSE_STEPS, Drafter

REPEATING = [1, 2, 3, 4] * 4


def test_a_step_with_more_running_requests_than_the_bound_drafts_nothing() -> None:
    drafter = Drafter(num_speculative=3, max_batch_size=8)
    assert drafter.active(1) and drafter.active(8) and not drafter.active(9)
    assert not Drafter(num_speculative=0, max_batch_size=8).active(1)
    assert Drafter(0, 8).method is None and drafter.method == "ngram"


def test_drafts_are_bounded_by_speculate_and_the_callers_limit() -> None:
    drafter = Drafter(num_speculative=3, max_batch_size=8)
    drafts, state = drafter.propose(REPEATING, None, 10, step=1)
    assert drafts == [1, 2, 3]
    assert drafter.propose(REPEATING, state, 2, step=2)[0] == [1, 2]


def test_low_acceptance_pauses_a_request_for_a_doubling_number_of_steps() -> None:
    drafter = Drafter(num_speculative=4, max_batch_size=8)
    _, state = drafter.propose(REPEATING, None, 4, step=1)
    step = 1
    while state.paused_until <= step:  # every draft rejected: the moving rate falls below the bound
        drafter.observe(state, 4, 0, step)
        step += 1
    assert step < 10 and state.paused_until == step - 1 + PAUSE_STEPS
    assert drafter.propose(REPEATING, state, 4, step)[0] == []  # paused
    resumed = state.paused_until
    assert drafter.propose(REPEATING, state, 4, resumed)[0] == [1, 2, 3, 4]
    for s in range(resumed, resumed + 20):  # failing again: a longer pause
        drafter.observe(state, 4, 0, s)
        if state.paused_until > s:
            break
    assert state.paused_until - s == 2 * PAUSE_STEPS
    # Good drafts never pause.
    _, good = drafter.propose(REPEATING, None, 4, step=1)
    for s in range(50):
        drafter.observe(good, 4, 3, s)
    assert good.paused_until == 0 and good.acceptance > MIN_ACCEPTANCE


def test_counters_per_position() -> None:
    drafter = Drafter(num_speculative=3, max_batch_size=8)
    _, state = drafter.propose(REPEATING, None, 3, step=1)
    drafter.observe(state, 3, 2, 1)
    drafter.observe(state, 2, 0, 2)
    stats = drafter.stats
    assert (stats.draft_tokens, stats.accepted_tokens) == (5, 2)
    assert stats.drafted_by_position == [2, 2, 1] and stats.accepted_by_position == [1, 1, 0]


def test_a_drafter_that_does_not_pause_keeps_drafting_whatever_its_acceptance() -> None:
    # n-gram on a runner with verification graphs: a verification costs about a decode there.
    drafter = Drafter(num_speculative=4, max_batch_size=8, pauses=False)
    _, state = drafter.propose(REPEATING, None, 4, step=1)
    for step in range(1, 40):
        drafter.observe(state, 4, 0, step)
        assert drafter.propose(REPEATING, state, 4, step + 1)[0] == [1, 2, 3, 4]
    assert state.paused_until == 0
