"""What running requests' journals cost: the Redis memory of N requests' claims and checkpoints
(INFO memory), and the time a worker's publish round takes with and without them.

Each request gets its claim (the GenerateRequest with a prompt of `--prompt-tokens` ids) and the
checkpoints of `--tokens` engine steps of one token each (worker/checkpoint.py, through a real
pipeline against a private Redis-compatible server), written every `--flush-every` steps as a
worker writes them every --checkpoint-interval (50 steps: one second at 50 steps/s), so the
figure is the memory of N requests that have each generated that many tokens and are still
running.

The second figure times, for `--batch` running requests, the output thread's round: build the
events, then one pipeline that PUBLISHes the step's EventBatch to the gateway, alone and with the
checkpoints (worker/output.py's `_publish`), against a private server on loopback: "every round"
writes each request's journal each round (a flush interval of 0), "flushed" every `--flush-every`
rounds; rounds alternate between the three so that all see the same machine.

    python -m load.journal_cost --requests 1000 --prompt-tokens 128 --tokens 256 --batch 256
"""

from __future__ import annotations

import argparse
import json
import random
import time

import redis

from common.protocol import Accepted, Event, EventBatch, GenerateRequest, Token, encode
from common.sampling_params import SamplingParams
from common.streams import Keys
from genfleet.embedded_redis import EmbeddedRedis
from worker.checkpoint import Checkpointer

__all__ = ["measure", "round_cost", "main"]


def _round(checkpoint: Checkpointer, pipe: redis.client.Pipeline, step: int, events: list[Event], flush: bool) -> None:
    checkpoint.add(step, {"gateway-0": events})
    if flush:
        checkpoint.urge()
    checkpoint.write(pipe)


def measure(requests: int, prompt_tokens: int, tokens: int, flush_every: int = 50, seed: int = 0) -> dict[str, float]:
    rng = random.Random(seed)
    keys = Keys("mem")
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        before = int(client.info("memory")["used_memory"])
        checkpoint = Checkpointer(keys, "worker-0", ttl=60.0, interval=60.0)  # flushed when urged
        ids = [f"{rng.getrandbits(64):016x}{i}" for i in range(requests)]
        pipe = client.pipeline(transaction=False)
        for req_id in ids:
            prompt = [rng.randrange(49152) for _ in range(prompt_tokens)]
            claim = GenerateRequest(req_id, 0, "gateway-0", "model", prompt, SamplingParams(max_new_tokens=tokens * 2),
                                    enqueued_at=time.time(), scope="0" * 32)
            pipe.set(keys.claim(req_id), encode(claim), px=60_000)
        pipe.execute()
        started = time.perf_counter()
        for step in range(tokens):
            pipe = client.pipeline(transaction=False)
            events: list[Event] = []
            for req_id in ids:
                if step == 0:
                    events.append(Accepted(req_id, 0, "worker-0"))
                token_id = rng.randrange(49152)
                events.append(Token(req_id, 0, step, token_id, f" w{token_id % 997}", -rng.random(), False))
            _round(checkpoint, pipe, step, events, step % flush_every == flush_every - 1 or step == tokens - 1)
            pipe.execute()
            checkpoint.written(True)
        write_s = time.perf_counter() - started
        after = int(client.info("memory")["used_memory"])
        client.close()
    used = after - before
    return {"requests": requests, "prompt_tokens": prompt_tokens, "tokens": tokens, "flush_every": flush_every,
            "used_memory_bytes": used, "bytes_per_request": used / requests,
            "mib_per_1000_requests": used / requests * 1000 / 2**20,
            "bytes_per_token": used / (requests * tokens), "write_seconds_per_step": write_s / tokens}


def round_cost(batch: int, steps: int = 200, flush_every: int = 50, seed: int = 0) -> dict[str, float]:
    """Seconds per publish round of `batch` requests with one token each: publish only, publish
    plus each request's journal every round, and publish plus the journals flushed every
    `flush_every` rounds; the three alternated round by round so that all see the same machine.
    Also the Redis commands each sends per round, on average."""
    rng = random.Random(seed)
    keys = Keys("cost")
    ids = [f"{rng.getrandbits(64):016x}{i}" for i in range(batch)]
    modes = ("off", "every_round", "flushed")
    times = dict.fromkeys(modes, 0.0)
    commands = dict.fromkeys(modes, 0)
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        checkpoints = {"every_round": Checkpointer(keys, "worker-0", ttl=60.0, interval=0.0),
                       "flushed": Checkpointer(keys, "worker-1", ttl=60.0, interval=60.0)}
        for step in range(1, steps + 1):
            for mode in modes[step % 3:] + modes[: step % 3]:
                started = time.perf_counter()
                events: list[Event] = [Token(req_id, 0, step, 1000 + step, " word", -0.5, False) for req_id in ids]
                pipe = client.pipeline(transaction=False)
                checkpoint = checkpoints.get(mode)
                if checkpoint is not None:
                    _round(checkpoint, pipe, step, events, step % flush_every == 0)
                pipe.publish(keys.gateway_channel("gateway-0"), encode(EventBatch("worker-0", step, events)))
                commands[mode] += len(pipe.command_stack)
                pipe.execute()
                if checkpoint is not None:
                    checkpoint.written(True)
                times[mode] += time.perf_counter() - started
        client.close()
    off = times["off"] / steps
    out: dict[str, float] = {"batch": batch, "flush_every": flush_every, "round_ms_off": off * 1000}
    for mode in modes[1:]:
        out[f"round_ms_{mode}"] = times[mode] / steps * 1000
        out[f"added_us_per_request_{mode}"] = (times[mode] / steps - off) / batch * 1e6
    for mode in modes:
        out[f"commands_per_round_{mode}"] = commands[mode] / steps
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.journal_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--tokens", type=int, default=256, help="tokens each request has generated so far")
    p.add_argument("--batch", type=int, default=256, help="running requests per publish round (0: skip)")
    p.add_argument("--flush-every", type=int, default=50, help="steps between two journal flushes")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.requests, args.prompt_tokens, args.tokens, args.flush_every), indent=1))
    if args.batch:
        print(json.dumps(round_cost(args.batch, flush_every=args.flush_every), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
