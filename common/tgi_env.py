"""TGI's launcher variables, and which of them a TGI environment file sets that genfleet ignores.

TGI_VARIABLES is the one list of every environment variable `text-generation-launcher` reads
(its `--flags` with clap's `env`, plus the env-only knobs; TGI's docs/source/reference/launcher.md
and our reference/tgi-api.md §3). Whether genfleet implements one is not written here: it is
implemented when a setting of common/config.py marked `tgi=True` answers to that bare name
(common/env.py), so a new setting such as `--quantize` takes its variable off the report by itself.

At start every set variable that is not implemented is reported: an error where ignoring it would
change what clients get (a quantized model run unquantized, speculation, RoPE scaling, adapters, a
prompt limit), a warning where it only tunes TGI's own machinery. A value that asks for what
genfleet does anyway (NUM_SHARD=1) is not reported.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import FleetConfig, GatewayConfig, ServeConfig, WorkerConfig, settings_of
from common.env import env_names

__all__ = ["TgiVariable", "TGI_VARIABLES", "Ignored", "implemented_names", "ignored_tgi_variables"]


@dataclass(frozen=True)
class TgiVariable:
    name: str
    effect: str  # what TGI does with it, as the report says
    changes_results: bool = False  # ignoring it changes responses or limits: refuse to start
    neutral: tuple[str, ...] = ()  # values (lower case) that ask for what genfleet does anyway
    read_by_library: bool = False  # huggingface_hub reads it itself: honoured without a setting


_T = TgiVariable
TGI_VARIABLES: tuple[TgiVariable, ...] = (
    _T("MODEL_ID", "model to serve"),
    _T("REVISION", "Hub revision of the model"),
    _T("VALIDATION_WORKERS", "tokenizer workers of the router"),
    _T("SHARDED", "tensor parallelism over every visible GPU", True, ("false", "0")),
    _T("NUM_SHARD", "tensor parallelism over this many GPUs", True, ("1",)),
    _T("QUANTIZE", "quantization method of the weights", True),
    _T("SPECULATE", "speculative decoding of this many tokens", True, ("0",)),
    _T("DTYPE", "weights and activations dtype", True),
    _T("KV_CACHE_DTYPE", "dtype of the KV cache", True),
    _T("TRUST_REMOTE_CODE", "run the model repository's own Python code", False, ("false", "0")),
    _T("MAX_CONCURRENT_REQUESTS", "requests in flight before 429"),
    _T("MAX_BEST_OF", "largest best_of"),
    _T("MAX_STOP_SEQUENCES", "most stop sequences per request"),
    _T("MAX_TOP_N_TOKENS", "largest top_n_tokens"),
    _T("MAX_INPUT_TOKENS", "longest prompt in tokens", True),
    _T("MAX_INPUT_LENGTH", "longest prompt in tokens (TGI's legacy name of MAX_INPUT_TOKENS)", True),
    _T("MAX_TOTAL_TOKENS", "longest prompt + generation in tokens", True),
    _T("WAITING_SERVED_RATIO", "waiting-to-running ratio before admitting"),
    _T("MAX_BATCH_PREFILL_TOKENS", "tokens per prefill step"),
    _T("MAX_BATCH_TOTAL_TOKENS", "KV capacity in tokens"),
    _T("MAX_WAITING_TOKENS", "steps before forcing admission"),
    _T("MAX_BATCH_SIZE", "most requests per batch"),
    _T("CUDA_GRAPHS", "batch sizes captured as CUDA graphs"),
    _T("HOSTNAME", "address the HTTP server binds; genfleet reads GENFLEET_HOSTNAME or --hostname"),
    _T("PORT", "HTTP port; genfleet reads GENFLEET_PORT or --port"),
    _T("SHARD_UDS_PATH", "socket of the router-to-shard gRPC"),
    _T("MASTER_ADDR", "torch.distributed address of the shards"),
    _T("MASTER_PORT", "torch.distributed port of the shards"),
    _T("HUGGINGFACE_HUB_CACHE", "Hub cache directory", read_by_library=True),
    _T("WEIGHTS_CACHE_OVERRIDE", "weights cache directory"),
    _T("DISABLE_CUSTOM_KERNELS", "TGI's custom CUDA kernels off", False, ("false", "0")),
    _T("CUDA_MEMORY_FRACTION", "share of GPU memory to use"),
    _T("ROPE_SCALING", "RoPE scaling kind", True),
    _T("ROPE_FACTOR", "RoPE scaling factor", True),
    _T("JSON_OUTPUT", "JSON logs"),
    _T("OTLP_ENDPOINT", "OpenTelemetry trace export"),
    _T("OTLP_SERVICE_NAME", "OpenTelemetry service name"),
    _T("CORS_ALLOW_ORIGIN", "allowed CORS origins"),
    _T("API_KEY", "Bearer token on generation routes"),
    _T("WATERMARK_GAMMA", "watermark green-list share"),
    _T("WATERMARK_DELTA", "watermark bias"),
    _T("NGROK", "ngrok tunnel", False, ("false", "0")),
    _T("NGROK_AUTHTOKEN", "ngrok token"),
    _T("NGROK_EDGE", "ngrok edge"),
    _T("TOKENIZER_CONFIG_PATH", "alternate tokenizer_config.json"),
    _T("DISABLE_GRAMMAR_SUPPORT", "grammar-constrained generation off"),
    _T("MAX_CLIENT_BATCH_SIZE", "most prompts per request"),
    _T("LORA_ADAPTERS", "LoRA adapters served by adapter_id", True),
    _T("USAGE_STATS", "anonymous usage statistics to Hugging Face (genfleet sends none)", False, ("off", "no-stack")),
    _T("PAYLOAD_LIMIT", "largest request body in bytes"),
    _T("ENABLE_PREFILL_LOGPROBS", "allow prompt logprobs"),
    _T("GRACEFUL_TERMINATION_TIMEOUT", "seconds open streams get on SIGTERM"),
    _T("PROMETHEUS_PORT", "separate metrics listener (genfleet's /metrics is on the HTTP port)"),
    _T("MAX_IMAGE_FETCH_SIZE", "largest image a request may fetch"),
    # Env-only knobs of the launcher and shards.
    _T("PREFIX_CACHING", "prefix caching on or off"),
    _T("ATTENTION", "attention backend (flashinfer, flashdecoding, paged)"),
    _T("PREFILL_CHUNKING", "chunked prefill on or off (genfleet always chunks)", False, ("1", "true")),
    _T("TGI_WIGGLE_ROOM", "share of free memory given to the KV cache"),
    _T("LOG_LEVEL", "log filter (genfleet: --log-level, GENFLEET_LOG_LEVEL)"),
    _T("COMPUTE_TYPE", "value of the x-compute-type header"),
    _T("HF_TOKEN", "Hub token", read_by_library=True),
)


@dataclass(frozen=True)
class Ignored:
    """A TGI variable set in the environment that genfleet does not act on."""

    variable: TgiVariable
    value: str

    @property
    def is_error(self) -> bool:
        return self.variable.changes_results

    def describe(self) -> str:
        return f"{self.variable.name}={self.value!r} ({self.variable.effect})"


def implemented_names() -> frozenset[str]:
    """Bare environment names that some genfleet setting answers to (any role: one environment
    file often serves a whole fleet, and a gateway must not refuse a worker's DTYPE)."""
    names: set[str] = set()
    for cls in (FleetConfig, GatewayConfig, WorkerConfig, ServeConfig):
        for f in settings_of(cls):
            names.update(n for n in env_names(f.name, f.metadata["tgi"]) if n == f.name.upper())
    return frozenset(names)


def ignored_tgi_variables(environ: Mapping[str, str]) -> list[Ignored]:
    implemented = implemented_names()
    found = []
    for v in TGI_VARIABLES:
        value = environ.get(v.name, "")
        if value == "" or v.name in implemented or v.read_by_library or value.strip().lower() in v.neutral:
            continue
        if v.name == "HOSTNAME" and value == socket.gethostname():
            continue  # every shell sets it to the machine's name: not a TGI setting
        found.append(Ignored(v, value))
    return found
