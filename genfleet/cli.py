"""`genfleet serve | gateway | worker | watermark-detect`: flags generated from the config dataclasses.

Every settable field of common/config.py becomes `--kebab-case`; its fallback is the environment
(`GENFLEET_<FIELD>`, or TGI's bare name for TGI flags, see common/env.py); its default is the
dataclass default. Nothing here declares a default of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from common.config import (
    ConfigError,
    FleetConfig,
    GatewayConfig,
    ServeConfig,
    WorkerConfig,
    settings_of,
)
from common.env import EnvSnapshot, env_names
from common.tgi_env import ignored_tgi_variables
from genfleet.cpu_threads import prepare_openmp
from common.watermark import DEFAULT_Z_THRESHOLD

__all__ = ["main", "build_parser", "ROLE_CLASSES", "parse_configs", "check_tgi_env"]

# Which config classes feed each subcommand's flags.
ROLE_CLASSES: dict[str, tuple[type, ...]] = {
    "gateway": (FleetConfig, GatewayConfig),
    "worker": (FleetConfig, WorkerConfig),
    "serve": (FleetConfig, GatewayConfig, WorkerConfig, ServeConfig),
}

# `watermark-detect` needs only these fleet settings: the tokenizer's model and the green lists' gamma.
_DETECT_FIELDS = ("model_id", "revision", "model_cache", "watermark_gamma")
_DETECT_HELP = "Score a text file for the fleet's watermark (as POST /watermark/detect does) and print JSON"

_ROLE_HELP = {
    "serve": "Run a local fleet: Redis (unless --redis-url), one gateway and --workers workers",
    "gateway": "Run one HTTP gateway (stateless; scale out freely)",
    "worker": "Run one worker (one per GPU, or CPU for development)",
}


def _base_type(cls: type, name: str) -> type:
    # The configs use `from __future__ import annotations`: field types are strings until resolved.
    hints = typing.get_type_hints(cls)[name]
    origin = typing.get_origin(hints)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hints) if a is not type(None)]
        return args[0]  # type: ignore[no-any-return]
    return hints  # type: ignore[no-any-return]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _version() -> str:
    """pyproject.toml's version, as the installed package's metadata carries it."""
    try:
        return importlib.metadata.version("genfleet")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown (not installed: run scripts/bootstrap.sh)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genfleet", description="TGI-compatible LLM serving as a fleet of gateways and workers"
    )
    parser.add_argument("--version", action="version", version=f"genfleet {_version()}")
    sub = parser.add_subparsers(dest="role", required=True)
    for role, classes in ROLE_CLASSES.items():
        p = sub.add_parser(role, help=_ROLE_HELP[role], description=_ROLE_HELP[role])
        seen: set[str] = set()
        for cls in classes:
            group = p.add_argument_group(cls.__name__)
            for f in settings_of(cls):
                if f.name in seen:
                    continue
                seen.add(f.name)
                _add_flag(group, cls, f)
    detect = sub.add_parser("watermark-detect", help=_DETECT_HELP, description=_DETECT_HELP)
    detect.add_argument("file", help="the text to score; - reads stdin")
    detect.add_argument("--z-threshold", type=float, default=DEFAULT_Z_THRESHOLD,
                        help=f"z-score above which the text counts as watermarked (default: {DEFAULT_Z_THRESHOLD})")
    detect.add_argument("--token-ids", action="store_true", help="FILE holds a JSON list of token ids, not text")
    group = detect.add_argument_group(FleetConfig.__name__)
    for f in settings_of(FleetConfig):
        if f.name in _DETECT_FIELDS:
            _add_flag(group, FleetConfig, f)
    return parser


def _add_flag(group: argparse._ArgumentGroup, cls: type, f: dataclasses.Field[Any]) -> None:
    flag = "--" + f.name.replace("_", "-")
    kind = _base_type(cls, f.name)
    envs = ", ".join(env_names(f.name, f.metadata["tgi"]))
    help_text = f"{f.metadata['help']} (env: {envs}; default: {f.default!r})"
    choices = f.metadata["choices"] or None
    if kind is bool:
        # `--flag` alone means true; `--flag false` is accepted too, as TGI's clap flags are.
        group.add_argument(flag, nargs="?", const=True, type=_parse_bool, default=None, help=help_text)
    else:
        group.add_argument(flag, type=kind, choices=choices, default=None, help=help_text)


def _values_for(cls: type, args: argparse.Namespace, env: EnvSnapshot) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in settings_of(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
            continue
        found = env.lookup(f.name, f.metadata["tgi"])
        if found is None:
            continue
        name, raw = found
        kind = _base_type(cls, f.name)
        try:
            values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"environment variable {name}={raw!r}: {exc}") from exc
        choices = f.metadata["choices"]
        if choices and values[f.name] not in choices:
            raise ConfigError(f"environment variable {name}={raw!r}: expected one of {', '.join(choices)}")
    return values


def parse_configs(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> tuple[str, Any]:
    """Parse argv + environment into the role's frozen config. Returns (role, config)."""
    args = build_parser().parse_args(argv)
    env = EnvSnapshot.capture(environ)
    fleet = FleetConfig(**_values_for(FleetConfig, args, env))
    if args.role == "watermark-detect":
        from genfleet.watermark_detect import DetectJob

        return "watermark-detect", DetectJob(fleet, args.file, args.z_threshold, args.token_ids)
    if args.role == "gateway":
        return "gateway", GatewayConfig(fleet=fleet, **_values_for(GatewayConfig, args, env))
    if args.role == "worker":
        return "worker", WorkerConfig(fleet=fleet, **_values_for(WorkerConfig, args, env))
    gateway = GatewayConfig(fleet=fleet, **_values_for(GatewayConfig, args, env))
    worker = WorkerConfig(fleet=fleet, **_values_for(WorkerConfig, args, env))
    return "serve", ServeConfig(gateway=gateway, worker=worker, **_values_for(ServeConfig, args, env))


def check_tgi_env(environ: dict[str, str]) -> None:
    """Report the TGI launcher variables set here that genfleet ignores (common/tgi_env.py):
    a warning each, and a ConfigError naming every one whose absence would change results."""
    ignored = ignored_tgi_variables(environ)
    for item in ignored:
        if not item.is_error:
            print(f"genfleet: warning: TGI setting {item.describe()} is not implemented and is ignored", file=sys.stderr)
    errors = [f"\n  {item.describe()}" for item in ignored if item.is_error]
    if errors:
        raise ConfigError("TGI settings that genfleet does not implement, and ignoring them would change "
                          "results:" + "".join(errors) + "\nUnset them to start.")


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    env = EnvSnapshot.capture(environ)
    try:
        role, config = parse_configs(argv, dict(env.values))
        check_tgi_env(dict(env.values))
    except ConfigError as exc:
        print(f"genfleet: error: {exc}", file=sys.stderr)
        return 2
    if role == "watermark-detect":
        from genfleet.watermark_detect import run_detect

        return run_detect(config)
    if role == "gateway":
        from gateway.server import run as run_gateway

        run_gateway(config)
        return 0
    if role == "worker":
        prepare_openmp()  # before torch loads its OpenMP runtime
        from worker.worker import run_worker

        return run_worker(config)
    from genfleet.serve import serve

    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
