#!/usr/bin/env bash
# Make a container engine usable on a machine without a Docker engine or a registry, and print the
# environment that points podman at it:
#
#   eval "$(scripts/container-env.sh)"     # then ./docker-build.sh, podman run ... work
#
# Where `docker info` answers, there is nothing to do: it prints nothing. Otherwise, for podman
# (see shared/CONTAINERS.md for why each piece is needed):
#   1. podman, runc, debootstrap, slirp4netns from apt-get when missing (root only);
#   2. containers.conf (runc, cgroupfs, file events, ulimits this kernel allows), storage.conf (overlay
#      under the scratch folder) and registries.conf (short names mean docker.io) in $SCRATCH/conf;
#   3. a base image with no registry: `debootstrap --variant=minbase bookworm`, imported as
#      localhost/debian:bookworm-minbase, and a stand-in for python:3.11-slim-bookworm built FROM it
#      (container/standin.Containerfile), tagged with the official names so the Dockerfile's default
#      BASE_IMAGE resolves locally.
# Each step is skipped when already done: a second run takes about a second.
#
#   TORCH_MME_CONTAINER_SCRATCH   the scratch folder (default /var/tmp/torch-mme-container)
#   DEBIAN_MIRROR                 for debootstrap (default http://deb.debian.org/debian)
# Exit status 3 with a one-line reason when no engine can be made to run.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRATCH="${TORCH_MME_CONTAINER_SCRATCH:-/var/tmp/torch-mme-container}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_TAG=localhost/debian:bookworm-minbase
STANDIN_TAGS=(docker.io/library/python:3.11-slim-bookworm docker.io/library/python:3.11-slim)

say() { printf '[container-env] %s\n' "$*" >&2; }
unavailable() { say "no container engine: $*"; exit 3; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  say "a Docker engine answers: nothing to set up"
  exit 0
fi

mkdir -p "$SCRATCH"
missing=()
for tool in podman runc debootstrap slirp4netns; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    unavailable "${missing[*]} missing, and they can only be installed here as root with apt-get"
  fi
  say "installing ${missing[*]} (apt-get) ..."
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq podman runc debootstrap slirp4netns; } >"$SCRATCH/apt.log" 2>&1 \
    || unavailable "apt-get install podman runc debootstrap slirp4netns failed (see $SCRATCH/apt.log)"
fi
[ "$(id -u)" = 0 ] || unavailable "podman is set up here for root only (cgroup v1, no user namespaces configured)"

mkdir -p "$SCRATCH/conf" "$SCRATCH/storage" "$SCRATCH/run" "$SCRATCH/tmp"
cat >"$SCRATCH/conf/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "slirp4netns"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$SCRATCH/run/events.log"
tmp_dir = "$SCRATCH/run/libpod"
CONF
cat >"$SCRATCH/conf/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$SCRATCH/storage"
runroot = "$SCRATCH/run/storage"
CONF
cat >"$SCRATCH/conf/registries.conf" <<CONF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
CONF
export CONTAINERS_CONF="$SCRATCH/conf/containers.conf"
export CONTAINERS_STORAGE_CONF="$SCRATCH/conf/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$SCRATCH/conf/registries.conf"
export TMPDIR="$SCRATCH/tmp"

podman info >/dev/null 2>"$SCRATCH/podman-info.log" || unavailable "podman info failed: $(tail -n 1 "$SCRATCH/podman-info.log")"

if ! podman image exists "$BASE_TAG"; then
  say "debootstrap bookworm (minbase) -> $BASE_TAG ..."
  rootfs="$SCRATCH/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$SCRATCH/debootstrap.log" 2>&1 \
    || unavailable "debootstrap failed (see $SCRATCH/debootstrap.log)"
  # the security suite, for a current Java; no apt cache or lists in the image
  echo "deb http://deb.debian.org/debian-security bookworm-security main" >>"$rootfs/etc/apt/sources.list"
  echo "deb $DEBIAN_MIRROR bookworm-updates main" >>"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - "$BASE_TAG" >"$SCRATCH/import.log" 2>&1 \
    || unavailable "podman import of the debootstrapped root failed (see $SCRATCH/import.log)"
  rm -rf "$rootfs"
fi

if ! podman image exists "${STANDIN_TAGS[0]}"; then
  say "building the python:3.11-slim-bookworm stand-in FROM $BASE_TAG ..."
  podman build --pull=never --network=host --format docker --build-arg "DEBIAN_BASE=$BASE_TAG" \
    -f container/standin.Containerfile -t "${STANDIN_TAGS[0]}" container >"$SCRATCH/standin.log" 2>&1 \
    || unavailable "building the stand-in base failed (see $SCRATCH/standin.log)"
fi
for tag in "${STANDIN_TAGS[@]:1}"; do
  podman image exists "$tag" || podman tag "${STANDIN_TAGS[0]}" "$tag"
done

cat <<ENV
export CONTAINERS_CONF='$CONTAINERS_CONF'
export CONTAINERS_STORAGE_CONF='$CONTAINERS_STORAGE_CONF'
export CONTAINERS_REGISTRIES_CONF='$CONTAINERS_REGISTRIES_CONF'
ENV
