"""Where a benchmark run's time went, beyond its median step: per engine step and per request.

A run's output tok/s can fall far below what its median step allows (late first tokens, a few
slow steps, requests that end early); its TPOT alone cannot tell which. `TimedRunner` wraps a
Runner (worker/engine.py) and counts the host seconds of its launches and deferred samplings, the
seconds the engine blocked waiting for the device, and the seconds the model runner spent filling
grammar masks (`ModelRunner.mask_seconds`); `KernelCompiles` notes each Triton kernel compiled
(or loaded from Triton's disk cache) and how long it took; `Timeline` takes one record per engine
step and per request output, and `summary` says in one line what the run's time went to, with the
steps over 50 ms and what they held (a compile, a long mask fill, a long wait on the device).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KernelCompiles", "StepRecord", "Timeline", "TimedRunner"]

SLOW_STEP_MS = 50.0  # a step this long is listed with what it held


class TimedRunner:
    """A Runner that forwards every call to `inner` and times it (host seconds, perf_counter)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.can_overlap = inner.can_overlap
        self.uniform_drafts = inner.uniform_drafts
        self.launch_s = 0.0  # host seconds in launch (inputs, forward queued; the masks too unless deferred)
        self.sample_s = 0.0  # host seconds in deferred samplings (the masks filled, the sampling queued)
        self.wait_s = 0.0  # seconds blocked until a step's results were on the host

    def execute(self, batch: Any) -> Any:
        return self.wait(self.launch(batch, None))

    def launch(self, batch: Any, previous: Any, *, defer_sample: bool = False) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.launch(batch, previous, defer_sample=defer_sample)
        finally:
            self.launch_s += time.perf_counter() - started

    def sample(self, handle: Any, ended: frozenset[Any]) -> None:
        started = time.perf_counter()
        try:
            self.inner.sample(handle, ended)
        finally:
            self.sample_s += time.perf_counter() - started

    def wait(self, handle: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.wait(handle)
        finally:
            self.wait_s += time.perf_counter() - started

    @property
    def mask_s(self) -> float:
        """Host seconds spent filling grammar masks so far (0 for a runner that does not count them)."""
        return float(getattr(self.inner, "mask_seconds", 0.0))


class KernelCompiles:
    """Triton's JIT compiles while installed, as (kernel name, perf_counter at its end, seconds).

    Through Triton's hooks (`triton.knobs.runtime.jit_cache_hook`, called before a compile, and
    `jit_post_compile_hook`, after); a kernel found in Triton's disk cache counts too (its load is
    short). Without Triton, or a Triton without those hooks, nothing is noted."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float, float]] = []
        self._started: dict[str, float] = {}
        self._saved: tuple[Any, Any] | None = None
        self._runtime: Any = None

    def __enter__(self) -> KernelCompiles:
        try:
            import triton
        except ImportError:
            return self
        runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
        if runtime is None or not hasattr(runtime, "jit_cache_hook"):
            return self
        self._runtime = runtime
        self._saved = (runtime.jit_cache_hook, runtime.jit_post_compile_hook)
        runtime.jit_cache_hook, runtime.jit_post_compile_hook = self._before, self._after
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            self._runtime.jit_cache_hook, self._runtime.jit_post_compile_hook = self._saved
            self._saved = None

    # Keyword arguments (key, repr, fn, compile, ...) as Triton passes them; *args in case a
    # version passes some by position. Returning None lets the compile go ahead.
    def _before(self, *args: Any, **kw: Any) -> None:
        self._started[str(kw.get("repr", ""))] = time.perf_counter()

    def _after(self, *args: Any, **kw: Any) -> None:
        name = str(kw.get("repr", ""))
        now = time.perf_counter()
        self.done.append((name.split("[")[0] or "?", now, now - self._started.pop(name, now)))


@dataclass(slots=True)
class StepRecord:
    """One engine step, in milliseconds (its wall time ends when `engine.step()` returns).

    Overlapped, a step reads one batch's outputs (`rows`, `decodes`, `tokens` are that batch's)
    and launches the next: its times count that launch, and what compiled in it."""

    ended_ms: float  # since the run started
    wall_ms: float
    rows: int  # requests in the batch whose outputs this step read
    decodes: int  # of them, decodes (rows - decodes prompts: a step with both runs eagerly)
    tokens: int  # tokens that batch computed
    mask_ms: float  # host time filling grammar masks
    wait_ms: float  # blocked waiting for the device
    launch_ms: float
    sample_ms: float  # deferred samplings
    compiles: list[tuple[str, float]] = field(default_factory=list)  # (kernel, ms) compiled in this step


@dataclass(slots=True)
class Timeline:
    runner: TimedRunner
    kernels: KernelCompiles | None = None  # installed by the caller around the run
    started: float = field(default_factory=time.perf_counter)
    steps: list[StepRecord] = field(default_factory=list)
    first: dict[Any, float] = field(default_factory=dict)  # request key -> seconds to its first output
    last: dict[Any, float] = field(default_factory=dict)
    tokens: dict[Any, int] = field(default_factory=dict)  # request key -> tokens it produced
    errors: list[str] = field(default_factory=list)
    _mark: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        self._mark = (self.started, *self._counters())

    def _counters(self) -> tuple[float, float, float, float]:
        r = self.runner
        return r.mask_s, r.wait_s, r.launch_s, r.sample_s

    def step(self, batch: Any, outputs: list[Any]) -> None:
        """Record one `engine.step()` that returned `outputs` (`batch`: `engine.last_batch`)."""
        now = time.perf_counter()
        counters = self._counters()
        then, *before = self._mark
        deltas = [(c - b) * 1e3 for c, b in zip(counters, before, strict=True)]
        compiles = [(name, seconds * 1e3) for name, ended, seconds in (self.kernels.done if self.kernels else ())
                    if then < ended <= now]
        self.steps.append(StepRecord((now - self.started) * 1e3, (now - then) * 1e3,
                                     len(batch.requests) if batch is not None else 0,
                                     batch.num_decode if batch is not None else 0,
                                     batch.num_tokens if batch is not None else 0, *deltas, compiles))
        self._mark = (now, *counters)
        for out in outputs:
            self.first.setdefault(out.key, now - self.started)
            self.last[out.key] = now - self.started
            self.tokens[out.key] = self.tokens.get(out.key, 0) + len(out.new_token_ids)
            if out.error is not None:
                self.errors.append(out.error)

    def summary(self, slowest: int = 3) -> str:
        """One line: tokens per request, TTFT spread, step-time spread and the slowest steps, mask
        fill and device waits per step."""
        produced = sorted(self.tokens.values())
        ttft = sorted(self.first.values())
        walls = sorted(s.wall_ms for s in self.steps)
        masks = sorted(s.mask_ms for s in self.steps)
        waits = sorted(s.wait_ms for s in self.steps)
        slow = [s for s in self.steps if s.wall_ms > SLOW_STEP_MS]
        listed = slow[:slowest] if slow else sorted(self.steps, key=lambda s: -s.wall_ms)[:1]
        compiled = [c for s in self.steps for c in s.compiles]
        line = (f"tokens per request min/p50/max {_q(produced, 0)}/{_q(produced, .5)}/{_q(produced, 1)} "
                f"({sum(produced)} in all), {len(self.errors)} ended by an error"
                + (f" (first: {self.errors[0][:80]})" if self.errors else "")
                + f"; TTFT min/p50/p90/max {_ms(ttft, 0)}/{_ms(ttft, .5)}/{_ms(ttft, .9)}/{_ms(ttft, 1)} ms"
                f"; {len(self.steps)} steps, wall p50/p90/max {_q(walls, .5):.2f}/{_q(walls, .9):.2f}/{_q(walls, 1):.1f} ms"
                f", mask fill p50/max {_q(masks, .5):.2f}/{_q(masks, 1):.2f} ms (all steps {sum(masks):.0f} ms)"
                f", blocked on the device p50 {_q(waits, .5):.2f} ms (all steps {sum(waits):.0f} ms)"
                f"; {len(compiled)} kernel compiles ({sum(ms for _, ms in compiled):.0f} ms)"
                f"; {len(slow)} steps over {SLOW_STEP_MS:.0f} ms ({sum(s.wall_ms for s in slow):.0f} ms)"
                + (": " if slow else ", the slowest: "))
        return line + "; ".join(_step(s) for s in listed) + (f"; {len(slow) - len(listed)} more" if len(slow) > len(listed) else "")

    def dump(self, path: Path, **facts: Any) -> None:
        """Every step and request as JSON, for a closer look than `summary` gives."""
        body = {**facts, "steps": [asdict(s) for s in self.steps],
                "requests": {str(k): {"ttft_s": self.first[k], "last_s": self.last[k], "tokens": self.tokens.get(k, 0)}
                             for k in self.first},
                "errors": self.errors}
        path.write_text(json.dumps(body))


def _step(s: StepRecord) -> str:
    kind = "decode" if s.decodes == s.rows else "prefill" if s.decodes == 0 else "mixed"
    built = ", compiled " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in s.compiles) if s.compiles else ""
    return (f"{s.wall_ms:.1f} ms ending at {s.ended_ms:.0f} ms ({kind}, {s.rows} rows, {s.tokens} tokens; mask "
            f"{s.mask_ms:.1f}, wait {s.wait_ms:.1f}, launch {s.launch_ms:.1f}, sample {s.sample_ms:.1f}{built})")


def _q(values: list[Any], q: float) -> Any:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0


def _ms(seconds: list[float], q: float) -> str:
    return f"{_q(seconds, q) * 1e3:.0f}"
