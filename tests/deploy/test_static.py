"""Static checks of the Docker and compose deployment (CI has no Docker engine).

Every file the images and the compose stack reference exists; the commands the containers run
parse with the real CLI and build valid configs from the compose environment; the gateway image
installs no torch; Prometheus finds scaled replicas by DNS; the dashboard queries real metrics.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from genfleet.cli import ROLE_CLASSES, build_parser, parse_configs
from common.config import settings_of
from tests.deploy.compose_files import (
    ROOT,
    as_argv,
    bind_sources,
    interpolate,
    load_compose,
    parse_dockerfile,
    read_env_file,
    variables_used,
)

COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
GATEWAY_DF = ROOT / "Dockerfile.gateway"
WORKER_DF = ROOT / "Dockerfile.worker"


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(env: dict[str, str]) -> dict[str, Any]:
    return interpolate(load_compose(COMPOSE), env)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _ignored_by_dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_required_variable_is_in_the_env_example(env: dict[str, str]) -> None:
    used = variables_used(COMPOSE.read_text()) | variables_used(CPU_OVERRIDE.read_text())
    required = {name for name, op in used.items() if op in (":?", "?", None)}
    assert {"REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    assert required <= set(env), f"missing from deploy/.env.example: {required - set(env)}"
    assert set(used) <= set(env) | {"HF_TOKEN"}, f"undocumented: {set(used) - set(env)}"


def test_redis_persistent_password_protected_and_private(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = " ".join(as_argv(redis["command"]))
    assert "--appendonly yes" in command and "--requirepass" in command
    assert "ports" not in redis, "Redis must not be published to the host"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "ping" in " ".join(as_argv(redis["healthcheck"]["test"]))
    password = redis["environment"]["REDIS_PASSWORD"]
    for name in ("gateway", "worker", "model-init"):
        url = services[name]["environment"]["GENFLEET_REDIS_URL"]
        assert url == f"redis://:{password}@redis:6379/0"


def test_gateway_published_after_redis_is_healthy(services: dict[str, Any]) -> None:
    gateway = services["gateway"]
    assert gateway["ports"] and gateway["ports"][0].endswith(":8080")
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["model-init"]["condition"] == "service_completed_successfully"


def test_worker_scales_with_a_gpu_each_and_shares_the_model_cache(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=N needs neither"
    # Built here rather than pulled: the image name exists on no registry.
    assert worker["build"] == services["model-init"]["build"] and worker["image"] == services["model-init"]["image"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    mounts = {name: {v.split(":")[0]: v.split(":")[1] for v in services[name]["volumes"]}
              for name in ("worker", "gateway", "model-init")}
    assert {m["model-cache"] for m in mounts.values()} == {"/models"}
    assert all(services[n]["environment"]["GENFLEET_MODEL_CACHE"] == "/models" for n in mounts)


def test_cpu_override_drops_the_gpu_reservation(env: dict[str, str]) -> None:
    override = load_compose(CPU_OVERRIDE)["services"]
    assert override["worker"]["deploy"] == {"__reset__": True}
    assert override["worker"]["environment"]["GENFLEET_DEVICE"] == "cpu"
    args = override["model-init"]["build"]["args"]
    assert "cpu" in args["TORCH_INDEX_URL"] and "gpu" not in args["EXTRAS"]
    # The build args override ARGs that Dockerfile.worker declares.
    declared = set(parse_dockerfile(WORKER_DF).global_args) | {
        a.partition("=")[0] for s in parse_dockerfile(WORKER_DF).stages for a in s.all("ARG")}
    assert set(args) <= declared
    assert override["worker"]["image"] == override["model-init"]["image"]
    assert override["worker"]["build"] == override["model-init"]["build"]


def test_referenced_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build["dockerfile"]).is_file(), f"{name}: missing Dockerfile"
        for source in bind_sources(service):
            assert (ROOT / source).exists(), f"{name}: bind mount {source} missing"
    for df in (GATEWAY_DF, WORKER_DF):
        ignored = _ignored_by_dockerignore()
        for stage in parse_dockerfile(df).stages:
            for args in stage.all("COPY"):
                if args.startswith("--from"):
                    continue
                *sources, _ = args.split()
                for source in sources:
                    assert (ROOT / source).exists(), f"{df.name}: COPY {source} missing"
                    assert source not in ignored, f"{df.name}: COPY {source} is in .dockerignore"


def _genfleet_argv(service: dict[str, Any], image_cmd: list[str], image_entry: list[str]) -> list[str]:
    entry = as_argv(service.get("entrypoint")) or image_entry
    command = as_argv(service.get("command")) or image_cmd
    assert entry == ["genfleet"], f"entrypoint {entry}"
    return command


def _environment_for(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


@pytest.mark.parametrize("name,dockerfile", [("gateway", GATEWAY_DF), ("worker", WORKER_DF)])
def test_container_commands_parse_with_the_cli_and_build_valid_configs(
    services: dict[str, Any], name: str, dockerfile: Path
) -> None:
    df = parse_dockerfile(dockerfile)
    entry, cmd = df.exec_form("ENTRYPOINT"), df.exec_form("CMD")
    assert entry == ["genfleet"] and cmd and cmd[0] == name
    build_parser().parse_args(cmd)  # the image's own default command
    argv = _genfleet_argv(services[name], cmd, entry)
    assert argv[0] == name
    environ = _environment_for(services[name])
    role, config = parse_configs(argv, environ)
    assert role == name
    # Every GENFLEET_ variable the service sets names a real setting of that role.
    fields = {f.name.upper() for cls in ROLE_CLASSES[name] for f in settings_of(cls)}
    unknown = {k for k in environ if k.startswith("GENFLEET_") and k[len("GENFLEET_"):] not in fields}
    assert not unknown, f"{name}: {unknown} match no flag"
    assert config.fleet.model_cache == "/models" and config.fleet.json_output is True
    assert config.fleet.redis_url.startswith("redis://:")
    if name == "worker":
        assert config.metrics_port == 9100 and config.device == "cuda"
        exposed = df.final.all("EXPOSE")
        assert exposed == ["9100"] and services[name]["expose"] == ["9100"]
    else:
        assert config.port == 8080 and config.hostname == "0.0.0.0"


def test_model_init_prepares_the_model_with_real_code(services: dict[str, Any]) -> None:
    entry = as_argv(services["model-init"]["entrypoint"])
    assert entry[:2] == ["python", "-c"]
    tree = ast.parse(entry[2])
    imported = [(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    for module, attr in imported:
        assert hasattr(__import__(module, fromlist=[attr]), attr), f"{module}.{attr} does not exist"


def test_images_are_multistage_non_root_and_gateway_has_a_healthcheck() -> None:
    for path in (GATEWAY_DF, WORKER_DF):
        df = parse_dockerfile(path)
        assert len(df.stages) >= 2 and df.stages[0].name == "build", f"{path.name}: multi-stage"
        users = df.final.all("USER")
        assert users and users[-1] not in ("root", "0"), f"{path.name}: must run as a non-root user"
        assert any("/opt/venv" in c for c in df.final.all("COPY")), f"{path.name}: copies the built venv"
    health = parse_dockerfile(GATEWAY_DF).final.all("HEALTHCHECK")
    assert len(health) == 1 and "/health" in health[0]


def test_gateway_image_installs_no_torch_and_worker_image_does() -> None:
    gateway = parse_dockerfile(GATEWAY_DF)
    for stage in gateway.stages:
        assert "cuda" not in stage.base.lower() and "${" in stage.base
    assert "cuda" not in gateway.global_args["PYTHON_IMAGE"]
    installs = [r for s in gateway.stages for r in s.all("RUN") if "pip install" in r]
    assert installs
    for run in installs:
        pip_args = run.split("pip install", 1)[1].split("&&")[0]
        assert "torch" not in pip_args and "[" not in pip_args, f"gateway installs extras: {pip_args}"
    # The base dependencies of pyproject (what `pip install .` brings) contain no torch either.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if re.match(r"(torch|triton|nvidia)", d)]
    worker = parse_dockerfile(WORKER_DF)
    assert "cuda" in worker.global_args["BASE_IMAGE"] and "runtime" in worker.global_args["BASE_IMAGE"]
    runs = " ".join(r for s in worker.stages for r in s.all("RUN"))
    assert "${TORCH_SPEC}" in runs and "${EXTRAS}" in runs
    extras = {a.partition("=")[0]: a.partition("=")[2] for a in worker.stages[0].all("ARG")}
    assert "gpu" in extras["EXTRAS"] and "worker" in extras["EXTRAS"]
    assert "triton" in " ".join(project["optional-dependencies"]["gpu"])
    env = " ".join(worker.final.all("ENV"))
    assert "GENFLEET_MODEL_CACHE=/models" in env and worker.final.all("VOLUME") == ['["/models"]']


def test_gateway_code_imports_only_what_its_image_carries() -> None:
    copied = {args.split()[0] for s in parse_dockerfile(GATEWAY_DF).stages for args in s.all("COPY")
              if not args.startswith("--from")}
    local = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    sources = list((ROOT / "gateway").rglob("*.py")) + list((ROOT / "common").rglob("*.py"))
    for path in sources:
        for name in _import_time_imports(ast.parse(path.read_text())):
            top = name.split(".")[0]
            assert top not in ("torch", "triton"), f"{path}: imports {top}"
            if top in local:
                assert top in copied, f"{path} imports {top}, which Dockerfile.gateway does not copy"


def _import_time_imports(tree: ast.AST) -> list[str]:
    # Imports that run when the module loads; those inside functions run only when called (the
    # model converter's torch import, used by workers only).
    names: list[str] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        else:
            names += _import_time_imports(node)
    return names


def test_gateway_runs_without_torch_importable() -> None:
    modules = sorted(p.stem for p in (ROOT / "gateway").glob("*.py") if p.stem not in ("__init__", "__main__"))
    if not modules:
        pytest.skip("gateway package has no modules yet")
    code = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'triton'):\n"
        "            raise ImportError('torch is not in the gateway image')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module('gateway.' + m)\n"
        "import genfleet.cli\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_prometheus_discovers_every_replica_by_dns(services: dict[str, Any]) -> None:
    import yaml

    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gw, wk = jobs["gateway"]["dns_sd_configs"][0], jobs["worker"]["dns_sd_configs"][0]
    assert gw["names"] == ["gateway"] and gw["port"] == 8080 and gw["type"] == "A"
    assert wk["names"] == ["worker"] and wk["port"] == 9100 and wk["type"] == "A"
    assert set(gw["names"] + wk["names"]) <= set(services)
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith("./")}
    assert "/etc/prometheus/prometheus.yml" in mounted


def test_grafana_is_provisioned_with_the_dashboard(services: dict[str, Any]) -> None:
    import yaml

    grafana = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provisioning = ROOT / next(src for src, dst in mounts.items() if dst == "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "genfleet.yml").read_text())["providers"]
    dash_dir = ROOT / next(src for src, dst in mounts.items() if dst == provider["options"]["path"])
    dashboard = json.loads((dash_dir / "genfleet.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("request", "latency", "first token", "tokens/s", "queue", "batch", "live workers", "kv"):
        assert needed in titles, f"dashboard lacks a {needed} panel"
    assert all(t["datasource"]["uid"] == "prometheus" for p in dashboard["panels"] for t in p["targets"])


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/genfleet.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    return set(re.findall(r"\b((?:tgi|genfleet)_[a-z_]+)", exprs))


def _declared(series: str, declared: set[str]) -> bool:
    # A histogram's _bucket and a counter's _total series come from one declared name.
    return series in declared or re.sub(r"_(bucket|total|sum|count)$", "", series) in declared


def test_dashboard_is_generated_and_queries_worker_metrics_that_exist() -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
    try:
        import dashboard as generator
    finally:
        sys.path.pop(0)
    assert (ROOT / "deploy/grafana/dashboards/genfleet.json").read_text() == generator.render(), \
        "run python deploy/grafana/dashboard.py"
    from prometheus_client import CollectorRegistry

    from worker.metrics import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics("w", "m", "cpu", registry)
    exported = {m.name for m in registry.collect()}
    wanted = {n for n in _dashboard_metrics() if n.startswith("genfleet_worker_")}
    missing = {n for n in wanted if not _declared(n, exported)}
    assert wanted and not missing, f"not exported by worker/metrics.py: {missing}"


def test_dashboard_gateway_metrics_are_exported_by_the_gateway() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "gateway").rglob("*.py"))
    if "prometheus_client" not in sources:
        pytest.skip("the gateway exports no metrics yet")
    wanted = {n for n in _dashboard_metrics() if not n.startswith("genfleet_worker_")}
    declared = set(re.findall(r"[\"']((?:tgi|genfleet)_[a-z_]+)[\"']", sources))
    missing = {n for n in wanted if not _declared(n, declared)}
    assert not missing, f"dashboard queries metrics the gateway does not define: {missing}"


def _arg_defaults(df_path: Path) -> dict[str, str]:
    df = parse_dockerfile(df_path)
    args = dict(df.global_args)
    for stage in df.stages:
        for arg in stage.all("ARG"):
            key, _, default = arg.partition("=")
            args.setdefault(key, default.strip('"'))
    return args


_DEFAULTED = re.compile(r"^\$\{([A-Z_]+):-([^}]*)\}$")


@pytest.mark.parametrize("service,dockerfile", [("gateway", GATEWAY_DF), ("worker", WORKER_DF)])
def test_every_build_arg_is_a_knob_with_the_dockerfile_s_default(service: str, dockerfile: Path) -> None:
    # Each is taken from the environment or .env; unset or empty, the Dockerfile's own default.
    raw = load_compose(COMPOSE)["services"][service]["build"]["args"]
    declared = _arg_defaults(dockerfile)
    documented = read_env_file(ENV_EXAMPLE)
    for name, value in raw.items():
        m = _DEFAULTED.match(value)
        assert m, f"{service}: build arg {name}={value!r} cannot be overridden"
        variable, default = m.groups()
        assert variable == name and name in documented, f"{name} is not documented in deploy/.env.example"
        assert declared[name] == default, f"{name}: compose default {default!r}, Dockerfile {declared[name]!r}"
    cpu = load_compose(CPU_OVERRIDE)["services"]["worker"]["build"]["args"]
    for name in ("BASE_IMAGE", "TORCH_INDEX_URL"):
        m = _DEFAULTED.match(cpu[name])
        assert m and m.group(1) == name, f"the CPU override hard-codes {name}"


def test_every_image_compose_runs_can_be_renamed() -> None:
    for path in (COMPOSE, CPU_OVERRIDE):
        for name, service in load_compose(path)["services"].items():
            if "image" in service:
                assert _DEFAULTED.match(service["image"]), f"{path.name}: {name}'s image is hard-coded"


def test_cpu_worker_drops_the_compilers_and_the_cuda_worker_keeps_what_triton_needs() -> None:
    cuda = _arg_defaults(WORKER_DF)["RUNTIME_PACKAGES"].split()
    assert {"gcc", "python3-dev", "libc6-dev"} <= set(cuda)
    cpu = load_compose(CPU_OVERRIDE)["services"]["worker"]["build"]["args"]
    assert cpu["RUNTIME_PACKAGES"].split() == ["python3"] and cpu["SLIM_TORCH"] == "1"
    assert _arg_defaults(WORKER_DF)["SLIM_TORCH"] == "0"


def test_gateway_healthcheck_follows_the_gateway_s_own_port() -> None:
    df = parse_dockerfile(GATEWAY_DF)
    (health,) = df.final.all("HEALTHCHECK")
    command = json.loads(health.split("CMD", 1)[1])
    assert command[:3] == ["python", "-m", "genfleet.healthcheck"]
    assert (ROOT / "genfleet" / "healthcheck.py").is_file()
    # No port is pinned in the image's environment: the probe reads the gateway's own flags.
    assert "GENFLEET_PORT" not in " ".join(df.final.all("ENV"))
