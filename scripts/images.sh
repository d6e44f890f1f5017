#!/usr/bin/env bash
# Build the gateway and worker images and smoke-test the compose stack (CPU override) with the
# container engine that is here: docker with compose v2 when its daemon answers, else podman
# with podman-compose.
#
#   scripts/images.sh [--install-engine] [all|build|smoke]        (default: all)
#
# all    build both images, print their sizes, then smoke-test: compose up redis, model-init, the
#        gateway and two workers; /health, /generate, a streamed answer and both workers in the
#        gateway's /metrics; compose down, and check that nothing of the stack is left.
# build  the images only.  smoke  the stack only, on images built before.
#
# --install-engine  when no engine is present: apt-get install podman (root only).
# Exit status 77 when no engine can be had (nothing was tried), 0 when all passed.
#
# Environment (all optional):
#   GENFLEET_ENGINE=docker|podman    pick one instead of the first that works
#   GENFLEET_BASES=registry|local    public base images, or bases made here with mmdebstrap from a
#                                    Debian mirror (air-gapped); default: registry if it answers
#   GENFLEET_IMAGES_HOME             podman's config and storage, the local bases' cache
#                                    (default ~/.cache/genfleet/images)
#   DEBIAN_MIRROR, DEBIAN_SUITE      for local bases (default deb.debian.org, bookworm)
#   TORCH_WHEEL                      a CPU torch wheel on disk for the worker (podman mounts it
#                                    into the build); default: one in pip's find-links that fits
#   PYTHON_IMAGE, BASE_IMAGE, TORCH_INDEX_URL, TORCH_SPEC, PIP_INDEX_URL, REDIS_IMAGE
#                                    passed through to compose (deploy/.env.example)
set -euo pipefail
cd "$(dirname "$0")/.."

INSTALL_ENGINE=0
ACTION=all
for arg in "$@"; do
  case "$arg" in
    --install-engine) INSTALL_ENGINE=1 ;;
    all|build|smoke) ACTION=$arg ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "images.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

HOME_DIR=${GENFLEET_IMAGES_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/genfleet/images}
PROJECT=genfleet-smoke
COMPOSE_FILES=(-f docker-compose.yml -f docker-compose.cpu.yml)
GATEWAY_TAG=genfleet-gateway:latest
WORKER_TAG=genfleet-worker-cpu:latest
LOCAL_BASE=localhost/genfleet-base:${DEBIAN_SUITE:-bookworm}
LOCAL_REDIS=localhost/genfleet-redis:${DEBIAN_SUITE:-bookworm}
T0=$SECONDS

say() { printf '[images %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }

# --- the engine ------------------------------------------------------------------------------

have_docker() {
  command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1 \
    && docker compose version >/dev/null 2>&1
}

install_podman() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  say "installing podman from the Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends \
    podman runc conmon catatonit netavark aardvark-dns containernetworking-plugins \
    fuse-overlayfs slirp4netns uidmap mmdebstrap eatmydata python3-venv >/dev/null
}

# Podman reads only the files named here (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF): nothing
# global changes (its storage and its networks' definitions live under $HOME_DIR too). runc and cgroupfs work where crun and systemd do not (containers in a
# sandbox); the default ulimits must fit under the sandbox's hard limits.
configure_podman() {
  mkdir -p "$HOME_DIR"
  local runroot=/run/genfleet-containers
  [ "$(id -u)" = 0 ] || runroot=${XDG_RUNTIME_DIR:-/tmp/genfleet-$(id -u)}/containers
  cat >"$HOME_DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_config_dir = "$HOME_DIR/networks"
EOF
  cat >"$HOME_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$HOME_DIR/storage"
runroot = "$runroot"
EOF
  export CONTAINERS_CONF=$HOME_DIR/containers.conf CONTAINERS_STORAGE_CONF=$HOME_DIR/storage.conf
  # podman-compose 1.0 (Debian 12) cannot read the CPU override's `!reset`: a newer one from PyPI.
  if ! "$HOME_DIR/compose-venv/bin/podman-compose" version >/dev/null 2>&1; then
    say "installing podman-compose into $HOME_DIR/compose-venv"
    python3 -m venv "$HOME_DIR/compose-venv"
    "$HOME_DIR/compose-venv/bin/python" -m pip install -q "podman-compose==1.6.0"
  fi
}

pick_engine() {
  local wanted=${GENFLEET_ENGINE:-}
  if [ "$wanted" != podman ] && have_docker; then
    ENGINE=docker; COMPOSE=(docker compose); return
  fi
  [ "$wanted" = docker ] && die "GENFLEET_ENGINE=docker, but no docker daemon with compose v2 answers"
  if [ "$INSTALL_ENGINE" = 1 ] && ! { command -v podman && command -v mmdebstrap; } >/dev/null; then
    install_podman || say "could not install podman (not root, or no apt-get)"
  fi
  if ! command -v podman >/dev/null; then
    echo "images.sh: no container engine: neither a docker daemon with compose v2 nor podman" \
         "(run as root with --install-engine to apt-get install podman)" >&2
    exit 77
  fi
  configure_podman
  ENGINE=podman; COMPOSE=("$HOME_DIR/compose-venv/bin/podman-compose")
}

compose() { "${COMPOSE[@]}" -p "$PROJECT" --env-file "$ENV_FILE" "${COMPOSE_FILES[@]}" "$@"; }

# --- base images -------------------------------------------------------------------------------

image_present() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

registry_answers() {
  # One pull of the gateway's public base decides: it is needed anyway when the registry answers.
  timeout 120 "$ENGINE" pull -q "${PYTHON_IMAGE:-python:3.12-slim}" >/dev/null 2>&1
}

# A minimal Debian with python3 and venv, trusting what this host trusts (a TLS-intercepting
# proxy's CA included: pip inside the builds goes through it), and a Redis image on it.
make_local_bases() {
  if ! image_present "$LOCAL_BASE"; then
    command -v mmdebstrap >/dev/null || die "local bases need mmdebstrap (apt-get install mmdebstrap)"
    say "making $LOCAL_BASE with mmdebstrap"
    local work eatmydata=""; work=$(mktemp -d)
    # dpkg without fsync: the rootfs is a throwaway tarball until it is imported.
    if command -v eatmydata >/dev/null; then eatmydata=--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata; fi
    cp /etc/ssl/certs/ca-certificates.crt "$work/host-ca.crt"
    mmdebstrap --quiet --variant=minbase \
      --include=ca-certificates,python3,python3-venv,python-is-python3 \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr $eatmydata \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --customize-hook="copy-in $work/host-ca.crt /usr/local/share/ca-certificates/" \
      --customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "${DEBIAN_SUITE:-bookworm}" "$work/rootfs.tar" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    "$ENGINE" import --change 'CMD ["python3"]' \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      "$work/rootfs.tar" "$LOCAL_BASE" >/dev/null
    rm -rf "$work"
  fi
  if ! image_present "$LOCAL_REDIS"; then
    say "making $LOCAL_REDIS"
    printf 'FROM %s\nRUN apt-get update && apt-get install -y --no-install-recommends redis-server \\\n && rm -rf /var/lib/apt/lists/*\n' \
      "$LOCAL_BASE" | "$ENGINE" build -q -t "$LOCAL_REDIS" - >/dev/null
  fi
  export PYTHON_IMAGE=$LOCAL_BASE BASE_IMAGE=$LOCAL_BASE REDIS_IMAGE=$LOCAL_REDIS
  # PyPI's Linux torch is the CUDA build (GBs): on local bases torch comes from a CPU wheel on
  # disk (its dependencies from the package index), or from an index the user names.
  if [ -z "${TORCH_INDEX_URL:-}" ]; then
    pick_torch_wheel
    [ -n "${TORCH_SPEC:-}" ] || die "local bases need a CPU torch wheel (TORCH_WHEEL=<file>, or one in pip's" \
      "find-links) or TORCH_INDEX_URL=<a mirror of the PyTorch CPU index>"
    export TORCH_INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}
  fi
}

# The CPU torch wheel on disk, when one fits the base's Python: mounted into the worker's build.
pick_torch_wheel() {
  local wheel=${TORCH_WHEEL:-} tag dir
  if [ -z "$wheel" ]; then
    tag=$("$ENGINE" run --rm "$BASE_IMAGE" python3 -c \
      'import sys; print("cp%d%d" % sys.version_info[:2])' 2>/dev/null) || return 0
    for dir in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null); do
      dir=${dir#file://}
      wheel=$(ls "$dir"/torch-*+cpu-"$tag"-"$tag"-*linux*_"$(uname -m)".whl 2>/dev/null | sort -V | tail -1)
      [ -n "$wheel" ] && break
    done
  fi
  [ -n "$wheel" ] || return 0
  [ "$ENGINE" = podman ] || die "TORCH_WHEEL needs podman's build volumes (docker build has none)"
  say "torch from $wheel"
  BUILD_VOLUME=(--volume "$(dirname "$(realpath "$wheel")")":/wheels:ro)
  export TORCH_SPEC=/wheels/$(basename "$wheel")
}

# --- build -------------------------------------------------------------------------------------

build_images() {
  BUILD_VOLUME=()
  case "${GENFLEET_BASES:-auto}" in
    registry) ;;
    local) make_local_bases ;;
    auto) if registry_answers; then say "registry answers: public base images"; else
            say "no registry: local base images"; make_local_bases; fi ;;
    *) die "GENFLEET_BASES must be registry, local or auto" ;;
  esac
  [ -z "${TORCH_WHEEL:-}" ] || [ -n "${TORCH_SPEC:-}" ] || pick_torch_wheel
  say "building $GATEWAY_TAG and $WORKER_TAG (${PYTHON_IMAGE:-default bases})"
  local start=$SECONDS
  if [ "$ENGINE" = podman ]; then
    # docker format: OCI images drop HEALTHCHECK.
    COMPOSE+=(--podman-build-args "--format docker ${BUILD_VOLUME[*]:+${BUILD_VOLUME[*]}}")
  fi
  compose build gateway worker
  say "built in $((SECONDS - start)) s"
  report_sizes
}

report_sizes() {
  local image bytes
  for image in "$GATEWAY_TAG" "$WORKER_TAG"; do
    bytes=$("$ENGINE" image inspect --format '{{.Size}}' "$image")
    say "size $image: $((bytes / 1000000)) MB"
  done
}

# --- smoke test --------------------------------------------------------------------------------

project_containers() {
  "$ENGINE" ps -a -q --filter "label=com.docker.compose.project=$PROJECT" "$@"
}

# A run cut off while podman was creating a container can leave that container in podman's
# storage only (`ps --external`, no labels), where its name blocks the next run's container.
stored_only_containers() {
  [ "$ENGINE" != podman ] || podman ps -a -q --external --filter "name=^${PROJECT}_"
}

# Every container, volume and network of the project, by its label and by its stored name.
remove_project() {
  local left; left="$(project_containers) $(stored_only_containers)"
  [ -z "${left// /}" ] || "$ENGINE" rm -f -t 10 $left >/dev/null 2>&1 || true
  local kind
  for kind in volume network; do
    "$ENGINE" "$kind" rm -f $("$ENGINE" "$kind" ls -q --filter "label=com.docker.compose.project=$PROJECT") \
      >/dev/null 2>&1 || true
  done
}

teardown() {
  say "compose down"
  compose down -v -t 40 >/dev/null 2>&1 || true
  # podman-compose's down misses `--scale`d replicas: remove what is left.
  remove_project
  local left
  left="$(project_containers) $(stored_only_containers) $("$ENGINE" network ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  if [ -n "${left// /}" ]; then say "FAILED: left after down: $left"; return 1; fi
  say "down: no container or network of $PROJECT is left"
}

dump_logs() {
  local id
  for id in $(project_containers); do
    echo "---- $("$ENGINE" inspect --format '{{.Name}} {{.State.Status}}' "$id")"
    "$ENGINE" logs --tail 40 "$id" 2>&1 || true
  done
}

wait_model_init() {
  local deadline=$((SECONDS + 600)) id state
  while [ $SECONDS -lt $deadline ]; do
    id=$(project_containers --filter label=com.docker.compose.service=model-init | head -1)
    state=$([ -n "$id" ] && "$ENGINE" inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$id" || true)
    case "$state" in
      "exited 0") return 0 ;;
      exited*) die "model-init exited: $state" ;;
    esac
    sleep 2
  done
  die "model-init did not finish within 600 s"
}

smoke() {
  if [ -z "${REDIS_IMAGE:-}" ] && image_present "$LOCAL_REDIS"; then export REDIS_IMAGE=$LOCAL_REDIS; fi
  [ -z "${REDIS_IMAGE:-}" ] || echo "REDIS_IMAGE=$REDIS_IMAGE" >>"$ENV_FILE"
  local stale; stale="$(project_containers) $(stored_only_containers)"
  if [ -n "${stale// /}" ]; then say "removing what an earlier run left: $(echo $stale)"; remove_project; fi
  STACK_UP=1
  local start=$SECONDS
  say "compose up redis and model-init (converts the default model into the model-cache volume)"
  compose up -d --no-build redis model-init >/dev/null
  wait_model_init
  say "model ready after $((SECONDS - start)) s; compose up the gateway and two workers"
  compose up -d --no-build --scale worker=2 gateway worker >/dev/null
  python3 scripts/smoke_stack.py --url "http://127.0.0.1:$PORT" --workers 2 --timeout 300
  gateway_healthcheck
  say "smoke test passed in $((SECONDS - start)) s"
}

# The image's own HEALTHCHECK, run the way the engine runs it.
gateway_healthcheck() {
  local id; id=$(project_containers --filter label=com.docker.compose.service=gateway | head -1)
  if [ "$ENGINE" = podman ]; then
    podman healthcheck run "$id" >/dev/null || die "the gateway's HEALTHCHECK failed"
  else
    local deadline=$((SECONDS + 60))
    until [ "$(docker inspect --format '{{.State.Health.Status}}' "$id")" = healthy ]; do
      [ $SECONDS -lt $deadline ] || die "the gateway's HEALTHCHECK never reported healthy"
      sleep 2
    done
  fi
  say "the gateway image's HEALTHCHECK passes"
}

pick_engine
say "engine: $ENGINE ($("$ENGINE" --version))"
# Compose reads only this file (a .env of the user's is not read): fresh passwords, a free port.
ENV_FILE=$(mktemp)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
printf 'REDIS_PASSWORD=%s\nGRAFANA_ADMIN_PASSWORD=%s\nGATEWAY_PORT=%s\n' "$PASSWORD" "$PASSWORD" "$PORT" >"$ENV_FILE"
STACK_UP=0
on_exit() {
  local status=$?
  if [ "$STACK_UP" = 1 ]; then
    [ "$status" = 0 ] || dump_logs
    teardown || status=1
  fi
  rm -f "$ENV_FILE"
  [ "$status" != 0 ] || say "done in $((SECONDS - T0)) s"
  exit "$status"
}
trap on_exit EXIT
trap 'exit 143' TERM INT  # a stopped run still takes its stack down
case "$ACTION" in
  build) build_images ;;
  smoke) smoke ;;
  all) build_images; smoke ;;
esac
