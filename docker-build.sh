#!/usr/bin/env bash
# Build the torch-mme image (container/Dockerfile) with docker or podman, optionally from a local
# wheelhouse (no network for pip), and optionally push it to Amazon ECR. Run with --help.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")" && pwd)"
DOCKERFILE="$ROOT/container/Dockerfile"
DEFAULT_WHEELHOUSE="$ROOT/container/wheelhouse"
CPU_BASE=python:3.11-slim-bookworm
GPU_BASE=nvidia/cuda:12.8.1-base-ubuntu22.04
CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
GPU_TORCH_INDEX=https://download.pytorch.org/whl/cu128
IMAGE_PYTHON_VERSION=3.11
IMAGE_GLIBC_MINOR=35 # manylinux_2_17 .. 2_35: bookworm has glibc 2.36, Ubuntu 22.04 2.35

usage() {
  cat <<'EOF'
Usage: ./docker-build.sh [options]

Build the torch-mme image (container/Dockerfile, the repository root as context) with docker when a
Docker engine answers (`docker info`), else with podman.

  --tag NAME             image name (default torch-mme:latest)
  --base-image IMG       base image (default python:3.11-slim-bookworm;
                         with --gpu nvidia/cuda:12.8.1-base-ubuntu22.04)
  --gpu                  CUDA build: the GPU base image and torch from the CUDA index (cu128)
  --torch-version V      torch to install (default 2.13.0)
  --torch-index-url URL  where torch comes from (default https://download.pytorch.org/whl/cpu;
                         https://download.pytorch.org/whl/cu128 with --gpu)
  --wheelhouse DIR       build offline: pip installs only from the wheels in DIR (checked first:
                         a missing wheel is named before anything is built)
  --fill-wheelhouse      fill DIR first (unless it is complete already) with `pip download` for the
                         image's Python (3.11, manylinux x86_64): torch from --torch-index-url or
                         --torch-wheel, the rest from PyPI (DIR defaults to container/wheelhouse)
  --torch-wheel PATH     a local torch wheel file to put in the wheelhouse (with --fill-wheelhouse)
  --fill-only            fill and check the wheelhouse, build nothing (to carry it to an air-gapped
                         machine)
  --build-arg K=V        passed to the build (e.g. JAVA_PACKAGE=openjdk-17-jre-headless); repeatable
  --network MODE         network for the build's RUN steps (e.g. host)
  --no-cache             build every layer again
  --engine docker|podman use this engine instead of detecting one
  --push                 push to Amazon ECR: account from `aws sts get-caller-identity`, the
                         repository (the tag's name) created when missing
  --region REGION        ECR region (default $AWS_REGION, then $AWS_DEFAULT_REGION)
  --dry-run              print every command that would run, and run none of them (only the
                         read-only check of which engine answers still runs)
  -h, --help             this help

Environment: PYTHON, the interpreter whose pip fills and checks the wheelhouse (default python3).

Examples:
  ./docker-build.sh                                        # online build, torch-mme:latest
  ./docker-build.sh --wheelhouse wheels --fill-wheelhouse  # fill ./wheels, then build from it only
  ./docker-build.sh --gpu --tag torch-mme:gpu --push --region us-east-1
On a machine without a Docker engine, set podman up first: eval "$(scripts/container-env.sh)"
EOF
}

die() {
  printf 'docker-build.sh: %s\n' "$*" >&2
  exit 1
}
say() { printf '[docker-build] %s\n' "$*" >&2; }

TAG=torch-mme:latest
BASE_IMAGE=""
GPU=0
TORCH_VERSION=2.13.0
TORCH_INDEX_URL=""
WHEELHOUSE=""
FILL=0
FILL_ONLY=0
TORCH_WHEEL=""
BUILD_ARGS=()
NETWORK=""
NO_CACHE=0
ENGINE=""
PUSH=0
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
DRY_RUN=0
PYTHON="${PYTHON:-python3}"

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) need_value "$@"; TAG="$2"; shift 2 ;;
    --base-image) need_value "$@"; BASE_IMAGE="$2"; shift 2 ;;
    --gpu) GPU=1; shift ;;
    --torch-version) need_value "$@"; TORCH_VERSION="$2"; shift 2 ;;
    --torch-index-url) need_value "$@"; TORCH_INDEX_URL="$2"; shift 2 ;;
    --wheelhouse) need_value "$@"; WHEELHOUSE="$2"; shift 2 ;;
    --fill-wheelhouse) FILL=1; shift ;;
    --fill-only) FILL=1 FILL_ONLY=1; shift ;;
    --torch-wheel) need_value "$@"; TORCH_WHEEL="$2"; shift 2 ;;
    --build-arg) need_value "$@"; BUILD_ARGS+=(--build-arg "$2"); shift 2 ;;
    --network) need_value "$@"; NETWORK="$2"; shift 2 ;;
    --no-cache) NO_CACHE=1; shift ;;
    --engine) need_value "$@"; ENGINE="$2"; shift 2 ;;
    --push) PUSH=1; shift ;;
    --region) need_value "$@"; REGION="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done

[ "$GPU" = 1 ] && : "${BASE_IMAGE:=$GPU_BASE}" "${TORCH_INDEX_URL:=$GPU_TORCH_INDEX}"
: "${BASE_IMAGE:=$CPU_BASE}" "${TORCH_INDEX_URL:=$CPU_TORCH_INDEX}"
[ "$FILL" = 0 ] || [ -n "$WHEELHOUSE" ] || WHEELHOUSE="$DEFAULT_WHEELHOUSE"
[ -z "$TORCH_WHEEL" ] || [ "$FILL" = 1 ] || die "--torch-wheel is used only with --fill-wheelhouse"
[ -z "$TORCH_WHEEL" ] || [ -f "$TORCH_WHEEL" ] || die "--torch-wheel $TORCH_WHEEL: no such file"

# --- helpers -------------------------------------------------------------------------------------

# show CMD...: print it as a shell line ("${ACCOUNT}" is left for the shell that pastes it to expand)
show() {
  local arg line="+"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[][A-Za-z0-9_./:=@%+,{}\$-]+$ ]]; then line+=" $arg"; else line+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$line"
}
# run CMD...: run it, or only print it with --dry-run
run() {
  if [ "$DRY_RUN" = 1 ]; then show "$@"; else "$@"; fi
}

# pip's flags for wheels that run in the image: CPython 3.11, manylinux x86_64 up to the base's glibc
target_flags() {
  printf '%s\n' --only-binary=:all: --python-version "$IMAGE_PYTHON_VERSION" --implementation cp
  local minor
  for minor in $(seq 17 "$IMAGE_GLIBC_MINOR"); do
    printf '%s\n' --platform "manylinux_2_${minor}_x86_64"
  done
  printf '%s\n' --platform manylinux2014_x86_64
}

# A private folder (mktemp -d: unpredictable name, mode 0700) for the requirements file and pip's
# logs, made on first use and removed at exit however the script ends. Not a fixed name in /tmp:
# another user could create it first (a symlink) and have this script write through it.
WORK=""
make_work_dir() {
  [ -z "$WORK" ] || return 0
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/torch-mme-build.XXXXXXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
}

# setup.py's install_requires as a requirements file (written once, removed at exit)
REQUIREMENTS=""
write_requirements() {
  [ -z "$REQUIREMENTS" ] || return 0
  make_work_dir
  REQUIREMENTS="$WORK/requirements.txt"
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ $PYTHON $ROOT/container/requirements.py $ROOT/setup.py > $REQUIREMENTS"
  else
    "$PYTHON" "$ROOT/container/requirements.py" "$ROOT/setup.py" >"$REQUIREMENTS"
  fi
}

# --- the engine ----------------------------------------------------------------------------------

engine_answers() {
  case "$1" in
    docker) command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 ;;
    podman) command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1 ;;
    *) die "--engine must be docker or podman, not $1" ;;
  esac
}

pick_engine() {
  if [ -n "$ENGINE" ]; then
    engine_answers "$ENGINE" || [ "$DRY_RUN" = 1 ] || die "$ENGINE does not answer (\`$ENGINE info\` failed)"
    return
  fi
  for candidate in docker podman; do
    if engine_answers "$candidate"; then
      ENGINE=$candidate
      return
    fi
  done
  if [ "$DRY_RUN" = 1 ]; then
    say "dry run: no engine answers; showing docker's commands"
    ENGINE=docker
    return
  fi
  die "no container engine: no Docker engine answers \`docker info\`, and podman is not installed or \`podman info\` fails. Start Docker, or install podman (on a machine without a Docker engine or a registry, as root: eval \"\$(scripts/container-env.sh)\")"
}

# --- the wheelhouse ------------------------------------------------------------------------------

# pip download what the image needs into WHEELHOUSE; packages published only as source (e.g.
# sagemaker-inference) are built into wheels with `pip wheel --no-deps` (pure Python) and the
# download retried.
fill_wheelhouse() {
  local flags
  write_requirements
  mapfile -t flags < <(target_flags)
  say "filling $WHEELHOUSE (Python $IMAGE_PYTHON_VERSION, manylinux x86_64) ..."
  if [ -n "$TORCH_WHEEL" ]; then
    run cp "$TORCH_WHEEL" "$WHEELHOUSE/"
  else
    run "$PYTHON" -m pip download --dest "$WHEELHOUSE" "${flags[@]}" --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
  fi
  local log="$WORK/pip-download.log" missing
  for _ in 1 2 3 4 5 6; do
    if [ "$DRY_RUN" = 1 ]; then
      show "$PYTHON" -m pip download --dest "$WHEELHOUSE" --find-links "$WHEELHOUSE" "${flags[@]}" "torch==$TORCH_VERSION" -r "$REQUIREMENTS"
      return
    fi
    if "$PYTHON" -m pip download --dest "$WHEELHOUSE" --find-links "$WHEELHOUSE" "${flags[@]}" \
      "torch==$TORCH_VERSION" -r "$REQUIREMENTS" >"$log" 2>&1; then
      rm -f "$log"
      say "wheelhouse filled: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
      return
    fi
    missing="$(sed -n 's/^ERROR: No matching distribution found for //p' "$log" | head -n 1)"
    [ -n "$missing" ] || { cat "$log" >&2; die "pip download failed (above)"; }
    say "no wheel of $missing for the image's platform: building one from its source (pure Python)"
    "$PYTHON" -m pip wheel --no-deps --wheel-dir "$WHEELHOUSE" "$missing" >"$log" 2>&1 \
      || { cat "$log" >&2; die "cannot build a wheel of $missing"; }
  done
  rm -f "$log"
  die "pip download still fails after building wheels from source: see --dry-run for the command"
}

# Fail before building when the wheelhouse cannot satisfy the image's requirements, naming what is
# missing; with "quiet", only answer whether it can.
check_wheelhouse() {
  local quiet="${1:-}" flags log
  write_requirements
  mapfile -t flags < <(target_flags)
  # only the wheelhouse, whatever pip is configured with: PIP_CONFIG_FILE=/dev/null makes pip skip every
  # configuration file (--isolated alone still reads the global one, whose find-links or constraints
  # would answer for the wheelhouse) and --isolated ignores the PIP_* environment variables
  local check=(env PIP_CONFIG_FILE=/dev/null "$PYTHON" -m pip --isolated install --dry-run --ignore-installed
    --no-index --find-links "$WHEELHOUSE" "${flags[@]}" --target "$WORK/target" "torch==$TORCH_VERSION"
    -r "$REQUIREMENTS")
  if [ "$DRY_RUN" = 1 ]; then
    [ -n "$quiet" ] && return 1 # as if incomplete: show the fill's commands too
    show "${check[@]}"
    return
  fi
  log="$WORK/pip-check.log"
  if ! "${check[@]}" >"$log" 2>&1; then
    if [ -n "$quiet" ]; then
      return 1
    fi
    local missing needed
    missing="$(sed -n 's/^ERROR: No matching distribution found for //p' "$log" | head -n 1)"
    needed="$(sed -n 's/^ERROR: Could not find a version that satisfies the requirement .* (from \(.*\)) (from versions.*/\1/p' "$log" | head -n 1)"
    if [ -n "$missing" ]; then
      die "the wheelhouse $WHEELHOUSE has no wheel of $missing${needed:+ (needed by $needed)} for Python $IMAGE_PYTHON_VERSION on manylinux x86_64. Add it, or fill the wheelhouse with --fill-wheelhouse"
    fi
    cat "$log" >&2
    die "the wheelhouse $WHEELHOUSE cannot satisfy the image's requirements (pip's answer above)"
  fi
  rm -f "$log"
  [ -n "$quiet" ] || say "wheelhouse $WHEELHOUSE has every wheel the image needs"
}

# --- ECR -----------------------------------------------------------------------------------------

ECR_REGISTRY=""
check_aws() {
  command -v aws >/dev/null 2>&1 || [ "$DRY_RUN" = 1 ] || die "--push needs the AWS CLI (aws), which is not installed"
  [ -n "$REGION" ] || die "--push needs a region: --region REGION, or AWS_REGION"
  if [ "$DRY_RUN" = 1 ]; then
    # shellcheck disable=SC2016 # printed for the reader's shell to expand
    echo '+ ACCOUNT=$(aws sts get-caller-identity --query Account --output text)'
    # shellcheck disable=SC2016 # idem
    ECR_REGISTRY='${ACCOUNT}'".dkr.ecr.$REGION.amazonaws.com"
    return
  fi
  local account
  account="$(aws sts get-caller-identity --query Account --output text 2>/dev/null)" \
    || die "--push: no usable AWS credentials (\`aws sts get-caller-identity\` failed): configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
  ECR_REGISTRY="$account.dkr.ecr.$REGION.amazonaws.com"
}

push_image() {
  # TAG is [registry/]repository[:version]; ECR gets the repository and the version
  local name="$TAG" version=latest first
  case "${TAG##*/}" in *:*) version="${TAG##*:}" name="${TAG%:*}" ;; esac
  first="${name%%/*}"
  case "$first" in *.* | *:* | localhost) [ "$first" = "$name" ] || name="${name#*/}" ;; esac
  local remote="$ECR_REGISTRY/$name:$version"
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ aws ecr describe-repositories --region $REGION --repository-names $name || aws ecr create-repository --region $REGION --repository-name $name"
    echo "+ aws ecr get-login-password --region $REGION | $ENGINE login --username AWS --password-stdin $ECR_REGISTRY"
  else
    aws ecr describe-repositories --region "$REGION" --repository-names "$name" >/dev/null 2>&1 \
      || aws ecr create-repository --region "$REGION" --repository-name "$name" >/dev/null
    aws ecr get-login-password --region "$REGION" | "$ENGINE" login --username AWS --password-stdin "$ECR_REGISTRY"
  fi
  run "$ENGINE" tag "$TAG" "$remote"
  run "$ENGINE" push "$remote"
  [ "$DRY_RUN" = 1 ] || say "pushed $remote"
}

# --- main ----------------------------------------------------------------------------------------

if [ -n "$WHEELHOUSE" ]; then
  case "$WHEELHOUSE" in /*) ;; *) WHEELHOUSE="$PWD/$WHEELHOUSE" ;; esac
  WHEELHOUSE="${WHEELHOUSE%/}"
  if [ ! -d "$WHEELHOUSE" ]; then
    [ "$FILL" = 1 ] || die "--wheelhouse $WHEELHOUSE: no such folder (--fill-wheelhouse fills a new one)"
    run mkdir -p "$WHEELHOUSE"
  fi
fi

[ "$FILL_ONLY" = 1 ] || pick_engine
[ "$PUSH" = 0 ] || [ "$FILL_ONLY" = 1 ] || check_aws
if [ -n "$WHEELHOUSE" ]; then
  if [ "$FILL" = 1 ] && check_wheelhouse quiet; then
    say "wheelhouse $WHEELHOUSE has every wheel the image needs: nothing to download"
  else
    [ "$FILL" = 0 ] || fill_wheelhouse
    check_wheelhouse
  fi
fi
[ "$FILL_ONLY" = 0 ] || exit 0

build=("$ENGINE" build -f "$DOCKERFILE" -t "$TAG"
  --build-arg "BASE_IMAGE=$BASE_IMAGE"
  --build-arg "TORCH_VERSION=$TORCH_VERSION"
  --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
  --build-arg "OFFLINE=$([ -n "$WHEELHOUSE" ] && echo 1 || echo 0)")
if [ "$ENGINE" = podman ]; then
  build+=(--format docker) # the OCI format drops HEALTHCHECK
  # a base image already here is used as it is: no registry is asked
  if [ "$DRY_RUN" = 0 ] && podman image exists "$BASE_IMAGE"; then build+=(--pull=never); fi
fi
if [ -n "$WHEELHOUSE" ] && [ "$WHEELHOUSE" != "$DEFAULT_WHEELHOUSE" ]; then
  build+=(--build-context "wheelhouse=$WHEELHOUSE") # replaces the Dockerfile's wheelhouse stage
fi
[ -z "$NETWORK" ] || build+=(--network "$NETWORK")
[ "$NO_CACHE" = 0 ] || build+=(--no-cache)
build+=(${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} "$ROOT")

say "building $TAG with $ENGINE (base $BASE_IMAGE, torch $TORCH_VERSION, $([ -n "$WHEELHOUSE" ] && echo "offline from $WHEELHOUSE" || echo "pip online"))"
run "${build[@]}"
[ "$PUSH" = 0 ] || push_image
[ "$DRY_RUN" = 1 ] || say "built $TAG"
