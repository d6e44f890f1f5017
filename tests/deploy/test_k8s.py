"""The Kubernetes manifests (deploy/k8s), checked without a cluster.

Every core resource validates against the Kubernetes API schema (kubernetes-validate, strict: an
unknown field fails); kustomize renders the whole set (kubectl's built-in kustomize, client side
only); the containers' commands parse with the real CLI into valid configs whose ports match the
probes, Services and scrape annotations; the autoscaler watches the very stream and consumer
group the workers read, with the password the pods use.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from common.streams import CONSUMER_GROUP, Keys
from genfleet.cli import parse_configs
from tests.deploy.compose_files import ROOT, as_argv, load_compose

K8S = ROOT / "deploy" / "k8s"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
pytestmark = pytest.mark.timeout(120)


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _resources() -> list[dict[str, Any]]:
    docs = []
    for name in _kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in _resources()}


def _pod(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return objects[(kind, name)]["spec"]["template"]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def _env(container: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    env = dict(config) if any("configMapRef" in e for e in container.get("envFrom", [])) else {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item and item["secretKeyRef"]["key"] == "url":
            env[item["name"]] = "redis://:secret@redis:6379/0"  # what the documented Secret holds
    return env


def _deployment(objects: dict[tuple[str, str], dict[str, Any]], fleet_env: dict[str, str],
                name: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The Deployment's pod template, its main container, and that container's parsed config."""
    pod = _pod(objects, "Deployment", name)
    container = _container(pod, name)
    role, config = parse_configs(container["args"], _env(container, fleet_env))
    assert role == name
    return pod, container, config


@pytest.fixture(scope="module")
def fleet_env(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    return objects[("ConfigMap", "genfleet-fleet")]["data"]


def test_every_core_resource_matches_the_kubernetes_schema() -> None:
    version = kubernetes_validate.latest_version()
    checked = set()
    for doc in _resources():
        if doc["kind"] in KEDA_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {"ConfigMap", "Service", "Deployment", "StatefulSet"} <= checked
    # The check can fail: a wrong type and an unknown field are both refused.
    deployment = next(d for d in _resources() if d["kind"] == "Deployment")
    for broken in ({"replicas": "two"}, {"replica": 2}):
        bad = copy.deepcopy(deployment)
        bad["spec"].update(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_kustomize_renders_everything_into_the_namespace() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert sorted(d["kind"] for d in rendered) == sorted(d["kind"] for d in _resources())
    assert {d["metadata"].get("namespace") for d in rendered} == {_kustomization()["namespace"]}
    images = {c["image"] for d in rendered if d["kind"] in ("Deployment", "StatefulSet")
              for c in d["spec"]["template"]["spec"]["containers"] + d["spec"]["template"]["spec"].get("initContainers", [])}
    assert {"genfleet-gateway:latest", "genfleet-worker:latest"} <= images


def test_gateway_serves_on_the_port_its_service_probes_and_scrapes(
    objects: dict[tuple[str, str], dict[str, Any]], fleet_env: dict[str, str]
) -> None:
    pod, gateway, config = _deployment(objects, fleet_env, "gateway")
    assert config.hostname == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports["http"] == config.port == int(pod["metadata"]["annotations"]["prometheus.io/port"])
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert "httpGet" not in gateway["livenessProbe"], "/health is 503 without workers: never restart on it"
    service = objects[("Service", "gateway")]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == "http"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert config.fleet.model_cache == "/models" and config.fleet.json_output is True


def test_workers_take_a_gpu_each_and_export_metrics_where_scraped(
    objects: dict[tuple[str, str], dict[str, Any]], fleet_env: dict[str, str]
) -> None:
    pod, worker, config = _deployment(objects, fleet_env, "worker")
    assert config.device == "cuda"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["ports"][0]["containerPort"] == config.metrics_port
    # The metrics listener opens only after the model has loaded (worker.run_worker): readiness.
    for probe in ("startupProbe", "readinessProbe"):
        assert worker[probe]["tcpSocket"]["port"] == worker["ports"][0]["name"]
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == config.metrics_port
    # Graceful drain (30 s) fits in the grace period.
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert {"/models", "/dev/shm"} <= mounts


def test_model_init_runs_compose_s_command_into_each_pods_cache(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    compose_init = as_argv(load_compose(ROOT / "docker-compose.yml")["services"]["model-init"]["entrypoint"])
    for name in ("gateway", "worker"):
        pod = _pod(objects, "Deployment", name)
        (init,) = pod["spec"]["initContainers"]
        assert init["command"] == compose_init and init["image"] == "genfleet-worker"
        volume = next(m["name"] for m in init["volumeMounts"] if m["mountPath"] == "/models")
        main = pod["spec"]["containers"][0]
        assert any(m["name"] == volume and m["mountPath"] == "/models" for m in main["volumeMounts"])


def test_redis_is_persistent_password_protected_and_private(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    statefulset = objects[("StatefulSet", "redis")]["spec"]
    redis = statefulset["template"]["spec"]["containers"][0]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--requirepass $(REDIS_PASSWORD)" in command
    password = next(e for e in redis["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert password == {"name": "genfleet-redis", "key": "password"}
    (claim,) = statefulset["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in redis["volumeMounts"]
    service = objects[("Service", "redis")]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP", "Redis must not be exposed outside the cluster"
    assert statefulset["serviceName"] == "redis"


def test_workers_scale_on_the_lag_of_the_stream_they_read(
    objects: dict[tuple[str, str], dict[str, Any]], fleet_env: dict[str, str]
) -> None:
    scaled = objects[("ScaledObject", "worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "worker" and ("Deployment", "worker") in objects
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-streams"
    stream = Keys(fleet_env["GENFLEET_KEY_PREFIX"]).request_stream(fleet_env["GENFLEET_MODEL_ID"])
    assert meta["stream"] == stream and meta["consumerGroup"] == CONSUMER_GROUP
    assert int(meta["lagCount"]) > 0
    # KEDA runs in its own namespace: the Redis Service by its full name, on the Service's port.
    host, port = meta["address"].rsplit(":", 1)
    assert host == f"redis.{_kustomization()['namespace']}.svc.cluster.local"
    assert int(port) == objects[("Service", "redis")]["spec"]["ports"][0]["port"]
    auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]
    assert auth["secretTargetRef"] == [{"parameter": "password", "name": "genfleet-redis", "key": "password"}]


def test_deploy_doc_gives_the_commands_for_these_manifests() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for command in ("kubectl apply -k deploy/k8s", "kubectl kustomize deploy/k8s",
                    "create secret generic genfleet-redis"):
        assert command in doc, f"docs/deploy.md lacks `{command}`"
    assert Path(K8S / "kustomization.yaml").is_file()
