"""Speculative decoding (`--speculate N`): draft a few tokens per decoding request, verify them in
the step's one forward, keep the longest run the model agrees with.

- `ngram.py`: prompt-lookup drafting over a request's own tokens (no weights); plain Python.
- `drafter.py`: which requests draft how many tokens this step, and the turn-down when drafts do
  not pay (per request on low acceptance, per step at large batch); the acceptance counters.
  Plain Python: the scheduler calls it.
- `verify.py`: on the device, the sampling rows of a verified request and how many of its drafts
  the model's own samples accept.
- `overlap.py`: overlapped steps (worker/engine.py): what the engine assumes of a verification
  still on the device, and how its verified tokens settle that (tested through the engine:
  tests/worker/test_engine_speculative_overlap.py).

Lossless by construction: every row of a verified request is sampled exactly as a plain decode
step at that position would be (its own seed step, penalty history and min_tokens count), and a
draft is accepted only where it equals that sample. For a deterministic draft this is rejection
sampling with a one-hot proposal: draft d is kept with probability p(d), and on a rejection the
sample is distributed as p without d, renormalised. With the sampler's seeded noise a request's
text is the same token for token with or without speculation.
"""
