"""Frozen configuration, one dataclass per process role, each field declared exactly once.

A field's metadata carries its help text and whether it mirrors a TGI launcher flag; the CLI
(genfleet/cli.py) turns every field into `--kebab-case` and every environment name from
common/env.py into its fallback. Configs are validated in `__post_init__`, built once in the
entry point, and passed down explicitly. Values found at run time (KV capacity, the model's
context length) live in runtime structs, never written back here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.redis_url import RedisUrlError, parse_redis_url

__all__ = [
    "DEFAULT_MODEL_ID",
    "QUANTIZE_METHODS",
    "FleetConfig",
    "GatewayConfig",
    "WorkerConfig",
    "ServeConfig",
    "ConfigError",
    "setting",
    "settings_of",
]

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# TGI's `--quantize` names. Which of them this build implements is worker/quant's registry.
QUANTIZE_METHODS = (
    "awq", "gptq", "marlin", "compressed-tensors", "fp8", "eetq",
    "bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4", "exl2",
)
KV_CACHE_DTYPES = ("fp8_e4m3fn", "fp8_e5m2")  # TGI's --kv-cache-dtype values
MAX_SPECULATE = 16  # more drafts per step than n-gram lookup ever gets accepted


class ConfigError(ValueError):
    pass


def setting(default: Any, help: str, *, tgi: bool = False, choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"help": help, "tgi": tgi, "choices": choices})


def settings_of(cls: type) -> list[dataclasses.Field[Any]]:
    """The user-settable fields of a config class (nested configs excluded)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


@dataclass(frozen=True)
class FleetConfig:
    """What every process of one fleet must agree on."""

    model_id: str = setting(DEFAULT_MODEL_ID, "Model to serve: a Hub id or a local HF directory", tgi=True)
    revision: str | None = setting(None, "Hub revision of the model", tgi=True)
    redis_url: str | None = setting(
        None, "Redis URL: redis[s]://[user:password@]host:port[/db], or redis[s]+sentinel://h1:p1,h2:p2/<master-name> "
        "for a Sentinel set; `serve` starts a local server when unset, gateway/worker use redis://127.0.0.1:6379"
    )
    redis_cluster: bool = setting(
        False, "--redis-url is a node of a Redis Cluster: keys spread over its shards, gateways' token channels "
        "use sharded pub/sub"
    )
    stream_partitions: int = setting(
        1, "Request streams per model, read round-robin by its workers (spreads a hot model over cluster shards)"
    )
    key_prefix: str = setting("genfleet", "Prefix of every Redis key, so fleets can share one Redis")
    model_cache: str | None = setting(
        None, "Where converted/downloaded models are kept (default: $XDG_CACHE_HOME/genfleet)"
    )
    max_input_tokens: int | None = setting(None, "Longest prompt in tokens (default: max-total-tokens - 1)", tgi=True)
    max_total_tokens: int | None = setting(
        None, "Longest prompt + generation in tokens (default: the model's context, at most 8192)", tgi=True
    )
    heartbeat_interval: float = setting(1.0, "Seconds between heartbeats")
    heartbeat_ttl: float = setting(5.0, "Seconds after which a silent process counts as dead")
    graceful_termination_timeout: float = setting(
        90.0, "Seconds a process finishes its work on SIGTERM (gateway: open streams; worker: running "
        "requests, the rest handed back)", tgi=True,
    )
    resume_ttl: float = setting(
        60.0, "Seconds a request's journal (its tokens, for resuming a stream or answering a retry with the "
        "same id) outlives its last write in Redis",
    )
    watermark_gamma: float = setting(
        0.5, "Watermark: expected share of the vocabulary on each green list (generation and detection)", tgi=True
    )
    watermark_delta: float = setting(2.0, "Watermark: logit bias added to the green tokens", tgi=True)
    json_output: bool = setting(False, "Log as JSON lines", tgi=True)
    log_level: str = setting("info", "Log level", choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        if not self.model_id:
            raise ConfigError("--model-id must not be empty")
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ConfigError("--max-input-tokens must be >= 1")
        if (
            self.max_input_tokens is not None
            and self.max_total_tokens is not None
            and self.max_input_tokens >= self.max_total_tokens
        ):
            raise ConfigError(
                f"`max_input_tokens` must be < `max_total_tokens`; given {self.max_input_tokens} "
                f"and {self.max_total_tokens}"
            )
        if self.resume_ttl <= 0:
            raise ConfigError("--resume-ttl must be > 0")
        if self.redis_url is not None:
            try:
                parse_redis_url(self.redis_url, self.redis_cluster)
            except RedisUrlError as exc:
                raise ConfigError(str(exc)) from None
        elif self.redis_cluster:
            raise ConfigError("--redis-cluster needs --redis-url, the address of a cluster node")
        if not 1 <= self.stream_partitions <= 1024:
            raise ConfigError(f"--stream-partitions must be in 1..1024, got {self.stream_partitions}")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ConfigError("--heartbeat-ttl must exceed --heartbeat-interval")
        if not 0 < self.watermark_gamma < 1:
            raise ConfigError(f"--watermark-gamma must be in (0, 1), got {self.watermark_gamma}")
        if not 0 <= self.watermark_delta < float("inf"):
            raise ConfigError(f"--watermark-delta must be finite and >= 0, got {self.watermark_delta}")

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class GatewayConfig:
    fleet: FleetConfig = field(default_factory=FleetConfig)
    hostname: str = setting("0.0.0.0", "Address the HTTP server binds", tgi=True)
    port: int = setting(8080, "HTTP port", tgi=True)
    gateway_id: str | None = setting(None, "Stable id of this gateway (default: random)")
    max_concurrent_requests: int = setting(128, "Requests in flight before 429", tgi=True)
    max_best_of: int = setting(2, "Largest best_of", tgi=True)
    max_stop_sequences: int = setting(4, "Most stop sequences per request", tgi=True)
    max_top_n_tokens: int = setting(5, "Largest top_n_tokens", tgi=True)
    max_client_batch_size: int = setting(4, "Most prompts in one /v1/completions request", tgi=True)
    payload_limit: int = setting(2_000_000, "Largest request body in bytes (413 above)", tgi=True)
    body_read_timeout: float = setting(10.0, "Seconds a client has to send its whole request body (408 after)")
    max_unfinished_bodies: int = setting(
        512, "Requests still sending their body before new ones get 429 (counted apart from admitted requests)"
    )
    header_read_timeout: float = setting(10.0, "Seconds a client has to send a request's line and headers (408 after)")
    max_header_bytes: int = setting(32_768, "Largest request line plus headers in bytes (431 above)")
    max_header_count: int = setting(100, "Most request header fields (431 above)")
    api_key: str | None = setting(None, "Bearer token required on generation routes", tgi=True)
    cors_allow_origin: str | None = setting(None, "Comma-separated CORS origins (default: any)", tgi=True)
    chat_template: str | None = setting(None, "Jinja chat template (or a path to one) overriding the model's")
    request_timeout: float = setting(0.0, "Seconds a request may take end to end; 0 = no limit")
    max_queue_length: int = setting(
        10_000, "Requests waiting in a priority level's stream of the model before new ones of that level get 429"
    )
    enable_prefill_logprobs: bool = setting(False, "Allow decoder_input_details (prompt logprobs)", tgi=True)
    disable_grammar_support: bool = setting(
        False, "Refuse `grammar`, `response_format` and `tools` (422 `grammar is not supported`)", tgi=True
    )
    allow_runtime_lora_updating: bool = setting(
        False, "Serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's routes and its "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING): the model's workers load or drop a PEFT adapter from a path on their "
        "host without a restart"
    )
    merge_worker_metrics: bool = setting(
        False, "Append the metrics of the workers on this host (their --metrics-port) to /metrics, labelled "
        "worker_id: one endpoint for a single box (`serve` turns it on; leave it off where Prometheus scrapes workers)"
    )

    def __post_init__(self) -> None:
        for name in ("max_concurrent_requests", "max_best_of", "max_client_batch_size", "payload_limit",
                     "max_unfinished_bodies", "max_header_bytes", "max_header_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        if self.body_read_timeout <= 0 or self.header_read_timeout <= 0:
            raise ConfigError("--body-read-timeout and --header-read-timeout must be > 0")


@dataclass(frozen=True)
class WorkerConfig:
    fleet: FleetConfig = field(default_factory=FleetConfig)
    worker_id: str | None = setting(None, "Stable id of this worker (default: host-pid-random)")
    device: str = setting("auto", "Where the model runs", choices=("auto", "cpu", "cuda"))
    dtype: str = setting(
        "auto",
        "Weights and activations dtype (auto: bfloat16 on CUDA and on CPUs with native bfloat16, AVX512-BF16 or AMX; "
        "else float32)",
        tgi=True,
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    max_batch_prefill_tokens: int = setting(4096, "Tokens computed per engine step (prefill budget)", tgi=True)
    max_batch_total_tokens: int | None = setting(
        None, "KV capacity in tokens (default: from free GPU memory, or 32768 on CPU)", tgi=True
    )
    max_batch_size: int = setting(256, "Most requests in the running batch", tgi=True)
    waiting_served_ratio: float = setting(0.3, "TGI's ratio of waiting to running requests before admitting", tgi=True)
    max_waiting_tokens: int = setting(20, "TGI's steps a waiting request may wait before forcing admission", tgi=True)
    max_priority_wait: float = setting(
        30.0, "Seconds a waiting request may be passed over by higher priorities; then it goes first (0: no bound)"
    )
    kv_cache_dtype: str | None = setting(
        None, "KV cache dtype, fp8_e4m3fn or fp8_e5m2: FP8 pages with a scale per token and KV head, about twice the tokens "
        "in the same memory (default: the model's dtype)", tgi=True, choices=KV_CACHE_DTYPES,
    )
    block_size: int = setting(16, "Tokens per KV block")
    cpu_kernels: bool = setting(
        True, "CPU: the decode layer's fused C++ ops (norms, rotary, KV store, paged attention), built with the "
        "system's g++ on first use (a minute or two) and cached on disk; off, or without a compiler: torch's ops"
    )
    prefix_caching: bool = setting(True, "Reuse KV blocks of shared prompt prefixes", tgi=True)
    cuda_memory_fraction: float = setting(1.0, "Share of free GPU memory the worker may use", tgi=True)
    quantize: str | None = setting(
        None, "Quantization method (default: the checkpoint's quantization_config, else none)", tgi=True,
        choices=QUANTIZE_METHODS,
    )
    speculate: int | None = setting(
        None, "Speculative decoding: draft up to this many tokens per decode step and verify them in one forward "
        "(greedy output and sampled distributions unchanged): with the model's Medusa or MLP-speculator heads when "
        "it has them (default: as many as it has), an EAGLE-3 draft model (default: 3), else by n-gram prompt lookup "
        "(default: off); 0 = off", tgi=True,
    )
    speculative_model: str | None = setting(
        None, "Speculator for --model-id: a directory (or Hub id) of Medusa heads (medusa_lm_head.safetensors), of an "
        "MLP speculator (model_type mlp_speculator) or of an EAGLE-3 draft model (LlamaForCausalLMEagle3); TGI's way, "
        "--model-id naming the heads' directory, works too",
    )
    speculate_max_batch_size: int = setting(
        32, "Speculation pauses for a step with more running requests than this (decoding is no longer "
        "bandwidth-bound there, so verifying drafts would cost more than it saves)"
    )
    cuda_graphs: str = setting(
        "1,2,4,8,16,32,64,128,256", "Decode batch sizes captured as CUDA graphs (with --speculate, verification "
        "steps too, for the sizes up to --speculate-max-batch-size); 0 = off", tgi=True,
    )
    graph_head: bool = setting(
        True, "CUDA: the decode graphs run the LM head and the greedy argmax too, so one replay gives a greedy "
        "step's tokens (other sampling reads the replayed logits); off: the graphs stop at the hidden states"
    )
    fused_rotary_store: bool = setting(
        True, "CUDA: rotary embedding and the KV-cache store in one Triton kernel (genfleet_kernels/rotary_store_kv.py); "
        "off: the two kernels apart"
    )
    pdl: bool = setting(
        False, "CUDA sm_90+: the Triton kernels of a step (norms, one-row linears, rotary + KV store, activations) "
        "launch with programmatic dependent launch, each starting while the one before it finishes (genfleet_kernels/pdl.py)"
    )
    overlap_scheduling: bool = setting(
        True, "Schedule and launch the next step while the device runs the current one (CUDA)"
    )
    metrics_port: int = setting(0, "Port of the worker's own /metrics listener; 0 = none")
    stats_interval: float = setting(10.0, "Seconds between the worker's one-line engine summaries in the log; 0 = none")
    synthetic_tokens_per_s: float = setting(0.0, "Synthetic mode: emit tokens at this rate per request, no model")
    random_weights: bool = setting(
        False, "Benchmark mode: random weights of the model's shape (only config.json and the tokenizer are read)"
    )
    max_deliveries: int = setting(3, "Deliveries of a stream entry before it is dead-lettered")
    num_shard: int | None = setting(
        None, "Tensor parallelism: one worker over this many GPUs of the host (ranks of CPU processes with --device "
        "cpu); the first N visible devices (CUDA_VISIBLE_DEVICES) (default: 1, or every visible GPU with --sharded)",
        tgi=True,
    )
    sharded: bool | None = setting(
        None, "Shard the model over every visible GPU (TGI's flag; --num-shard N picks the count)", tgi=True
    )
    gateway_grace_period: float = setting(
        30.0, "Seconds a request whose gateway stopped heart-beating keeps running, so that its client can "
        "reconnect through another gateway (Last-Event-ID), before it is cancelled"
    )
    lora_adapters: str | None = setting(
        None, "LoRA adapters (PEFT checkpoints) loaded at start, comma-separated: `id=/local/path`, a bare hub id "
        "`org/name[@revision]` (its id) or a bare local directory (its name the id); a request picks one with "
        "`adapter_id` (OpenAI routes: `model`)", tgi=True,
    )
    max_loras: int = setting(8, "Most LoRA adapters one worker holds at once (a load past it is refused)")
    checkpoint_tokens: bool = setting(
        True, "Append the events of every running request to its journal in Redis (in the publish pipeline), "
        "which stream resumption and retries by request id replay"
    )
    checkpoint_interval: float = setting(
        1.0, "Seconds between two journal writes of the running requests (one RPUSH per request each time; a "
        "request that ends or is adopted by another gateway is written at once)"
    )

    def __post_init__(self) -> None:
        if self.gateway_grace_period < 0:
            raise ConfigError("--gateway-grace-period must be >= 0")
        if self.checkpoint_interval < 0:
            raise ConfigError("--checkpoint-interval must be >= 0")
        if self.max_batch_prefill_tokens < 1 or self.max_batch_size < 1 or self.block_size < 1:
            raise ConfigError("--max-batch-prefill-tokens, --max-batch-size and --block-size must be >= 1")
        if not 0 < self.cuda_memory_fraction <= 1:
            raise ConfigError("--cuda-memory-fraction must be in (0, 1]")
        if self.max_batch_total_tokens is not None and self.max_batch_total_tokens < self.block_size:
            raise ConfigError("--max-batch-total-tokens must hold at least one block")
        if self.quantize == "exl2":
            # As in vLLM and SGLang: exllamav2's kernels are CUDA-only builds with a layout of their own.
            raise ConfigError(
                "--quantize exl2 is not supported: serve a GPTQ, AWQ or compressed-tensors export of the model "
                "(--quantize gptq|awq|compressed-tensors), or quantize on load with --quantize fp8"
            )
        if self.num_shard is not None and self.num_shard < 1:
            raise ConfigError(f"--num-shard must be >= 1, got {self.num_shard}")
        if self.sharded is False and (self.num_shard or 1) > 1:
            raise ConfigError(f"--sharded false contradicts --num-shard {self.num_shard}")
        if self.sharded and self.num_shard == 1:
            raise ConfigError("--sharded asks for more than one shard, but --num-shard is 1")
        if self.speculate is not None and not 0 <= self.speculate <= MAX_SPECULATE:
            raise ConfigError(f"--speculate must be in 0..{MAX_SPECULATE}, got {self.speculate}")
        if self.speculate_max_batch_size < 0:
            raise ConfigError("--speculate-max-batch-size must be >= 0")
        if self.max_loras < 1:
            raise ConfigError("--max-loras must be >= 1")
        if self.kv_cache_dtype is not None and self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ConfigError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")

    @property
    def cuda_graph_sizes(self) -> tuple[int, ...]:
        sizes = tuple(sorted({int(s) for s in self.cuda_graphs.split(",") if s.strip()}))
        return () if sizes in ((), (0,)) else tuple(s for s in sizes if s > 0)


@dataclass(frozen=True)
class ServeConfig:
    """`genfleet serve`: a local fleet of one gateway and N workers (and Redis when none is given)."""

    gateway: GatewayConfig
    worker: WorkerConfig
    workers: int = setting(1, "Workers to start")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("--workers must be >= 1")
