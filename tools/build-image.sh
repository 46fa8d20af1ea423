#!/usr/bin/env bash
# Build the canbridge container image from the Dockerfile and smoke-test it. Exits non-zero on any failure.
#
#   tools/build-image.sh [options]
#     --engine E       docker | buildah | podman (default: docker if a Docker engine answers, else buildah,
#                      else podman)
#     --base IMAGE     base image (Dockerfile ARG BASE; default: the Dockerfile's python:3.12-slim)
#     --local-base     first build a Debian 12 base locally (tools/image/build-base.sh, needs root and
#                      mmdebstrap: for machines with a Debian mirror but no image registry) and use it
#     --base-name N    name of that local base (default: localhost/debian12-py:bookworm)
#     --rebuild-base   with --local-base: rebuild the base even if it exists
#     --ca-bundle F    CA bundle for pip inside the build (a build secret: not stored in the image);
#                      default: $PIP_CERT, else pip's configured global.cert, else none. "none" disables.
#     --tag T          image name (default: canbridge:<version from pyproject.toml>, also tagged :latest)
#     --no-smoke       build only
#     --smoke-only     test an image that is already built
#
# Without a Docker engine (podman/buildah) the smoke test runs inside the image with
# `buildah from` + `buildah run --isolation chroot` (podman run needs privileges a build host may lack).
# The container shares the host's network: the demo check uses 127.0.0.1:4840/5020/8080 when they are free.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/pyproject.toml" | sed -n 1p)
engine="" base="" local_base=0 base_name=localhost/debian12-py:bookworm rebuild_base=0
ca=auto tag="canbridge:${version:-dev}" build=1 smoke=1

die() { echo "build-image: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --engine) engine=${2:?}; shift ;;
        --base) base=${2:?}; shift ;;
        --local-base) local_base=1 ;;
        --base-name) base_name=${2:?}; shift ;;
        --rebuild-base) rebuild_base=1 ;;
        --ca-bundle) ca=${2:?}; shift ;;
        --tag) tag=${2:?}; shift ;;
        --no-smoke) smoke=0 ;;
        --smoke-only) build=0 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

if [[ -z $engine ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
    elif command -v buildah >/dev/null; then engine=buildah
    elif command -v podman >/dev/null; then engine=podman
    else die "no container engine: install Docker, or (Debian) apt-get install podman buildah"; fi
fi
case $engine in
    docker) docker info >/dev/null 2>&1 || die "docker: no Docker engine answers (docker info fails)" ;;
    buildah|podman) command -v "$engine" >/dev/null || die "$engine is not installed" ;;
    *) die "unknown engine $engine (docker, buildah or podman)" ;;
esac
echo "build-image: engine $engine, image $tag"

image_exists() {
    case $engine in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        *) "$engine" inspect --type image "$1" >/dev/null 2>&1 ;;
    esac
}

if ((local_base)); then
    [[ -z $base ]] || die "--base and --local-base exclude each other"
    base=$base_name
    if ((rebuild_base)) || ! image_exists "$base"; then
        step "local base $base"
        t0=$SECONDS
        IMPORT_ENGINE=$engine bash "$root/tools/image/build-base.sh" "$base"
        echo "build-image: base built in $((SECONDS - t0)) s"
    else
        echo "build-image: using the existing local base $base (--rebuild-base to rebuild it)"
    fi
fi

# --- build ---
if ((build)); then
    if [[ $ca == auto ]]; then
        ca=${PIP_CERT:-}
        if [[ -z $ca ]] && command -v pip >/dev/null; then ca=$(pip config get global.cert 2>/dev/null || true); fi
    fi
    [[ $ca == none ]] && ca=""
    args=(-t "$tag" -t "${tag%:*}:latest" -f "$root/Dockerfile")
    [[ -n $base ]] && args+=(--build-arg "BASE=$base")
    if [[ -n $ca ]]; then
        [[ -r $ca ]] || die "CA bundle $ca is not readable"
        args+=(--secret "id=pip_cert,src=$ca")
        echo "build-image: pip inside the build trusts $ca (build secret, not stored in the image)"
    fi
    case $engine in
        docker) cmd=(env DOCKER_BUILDKIT=1 docker build "${args[@]}") ;;
        # chroot isolation: RUN steps work without user namespaces or an OCI runtime; docker format keeps
        # HEALTHCHECK; --pull=false: pull the base only when it is not in local storage
        buildah) cmd=(buildah bud --isolation chroot --format docker --pull=false "${args[@]}") ;;
        podman) cmd=(podman build --isolation chroot --format docker --pull=false "${args[@]}") ;;
    esac
    step "build: ${cmd[*]} $root"
    t0=$SECONDS
    if ! "${cmd[@]}" "$root"; then
        # the default base comes from Docker Hub: say how to build without it
        [[ -z $base ]] && echo "build-image: no image registry reachable? build on a local Debian base:" \
            "make image-offline (tools/build-image.sh --local-base)" >&2
        die "the image build failed"
    fi
    build_s=$((SECONDS - t0))
fi
image_exists "$tag" || die "no image $tag (build it first)"

case $engine in
    docker) size=$(($(docker image inspect -f '{{.Size}}' "$tag") / 1000000))MB ;;
    *) if command -v podman >/dev/null; then size=$(($(podman image inspect -f '{{.Size}}' "$tag") / 1000000))MB
       else size=$(buildah images --format '{{.Size}}' "$tag" | sed -n 1p); fi ;;
esac

# --- smoke test ---
ctr=""
cleanup() { if [[ -n $ctr ]]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

# Run one command inside the image, as the image's user, with the image's environment.
in_image() {
    case $engine in
        docker) docker run --rm --network host --entrypoint "$1" "$tag" "${@:2}" ;;
        podman) if command -v buildah >/dev/null; then buildah run --isolation chroot "$ctr" -- "$@"
                else podman run --rm --network host --entrypoint "$1" "$tag" "${@:2}"; fi ;;
        buildah) buildah run --isolation chroot "$ctr" -- "$@" ;;
    esac
}

failures=()
check() {  # check NAME CMD...: run, show the output, record a failure
    local name=$1; shift
    step "smoke: $name"
    if "$@"; then echo "-- ok: $name"; else echo "-- FAILED: $name" >&2; failures+=("$name"); fi
}

expect_output() {  # expect_output PATTERN... -- CMD...: the command, run in the image, prints every pattern
    local patterns=()
    while [[ $1 != -- ]]; do patterns+=("$1"); shift; done
    shift
    expect_output_of "${patterns[@]}" -- in_image "$@"
}

expect_output_of() {  # expect_output_of PATTERN... -- CMD...: the host command succeeds and prints every pattern
    local patterns=() out
    while [[ $1 != -- ]]; do patterns+=("$1"); shift; done
    shift
    local rc=0
    out=$("$@" 2>&1) || rc=$?
    echo "$out"
    ((rc == 0)) || { echo "exit status $rc"; return 1; }
    for p in "${patterns[@]}"; do
        grep -qE -- "$p" <<<"$out" || { echo "missing in the output: $p"; return 1; }
    done
}

# Inside the image: files the wheel must carry, the user, and nothing left of the build.
read -r -d '' files_py <<'EOF' || true
import os, pathlib, sys
import canbridge, canbridge_rest
problems = []
static = pathlib.Path(canbridge_rest.__file__).parent / "static"
for name in ("index.html", "app.js", "style.css"):
    f = static / name
    print(f, f.stat().st_size if f.is_file() else "MISSING")
    if not (f.is_file() and f.stat().st_size > 0):
        problems.append(f"REST dashboard file {f} missing or empty")
for name in ("demo.dbc", "j1939.dbc"):  # the demo's two buses
    dbc = pathlib.Path(canbridge.__file__).parent / "demo" / name
    print(dbc, dbc.stat().st_size if dbc.is_file() else "MISSING")
    if not dbc.is_file():
        problems.append(f"demo DBC {dbc} missing")
if os.getuid() == 0:
    problems.append("runs as root; the image should run as user canbridge")
for leftover in ("/src", "/run/secrets/pip_cert"):
    if os.path.exists(leftover):
        problems.append(f"build leftover in the image: {leftover}")
if not os.access("/var/lib/canbridge", os.W_OK):
    problems.append("state dir /var/lib/canbridge not writable by the image user")
print("python", sys.version.split()[0], "uid", os.getuid(), "prefix", sys.prefix)
print("\n".join(problems) or "files ok")
sys.exit(bool(problems))
EOF

# `canbridge check` on a small configuration that uses the packaged demo DBC (virtual bus: no interface needed).
read -r -d '' check_sh <<'EOF' || true
set -e
dbc=$(python3 -c 'import canbridge, pathlib; print(pathlib.Path(canbridge.__file__).parent / "demo" / "demo.dbc")')
dir=$(mktemp -d)
cat > "$dir/canbridge.yaml" <<YAML
buses:
  - {name: demo, interface: virtual, channel: smoke}
mappings:
  - bus: demo
    dbc: $dbc
    writable: ["MotorCommand.*"]
    transmit: {MotorCommand: {period_ms: 100}}
plugins:
  opcua: {listen: "opc.tcp://127.0.0.1:4840", allow_anonymous: true}
  modbus: {host: 127.0.0.1, port: 5020}
  rest: {host: 127.0.0.1, port: 8080}
YAML
cat "$dir/canbridge.yaml"
canbridge check --no-ports "$dir/canbridge.yaml"   # the build host's ports are not the target's
EOF

# `canbridge run` the way the image's CMD does: the configuration in a read-only /etc/canbridge, the state
# (OPC UA certificates, Modbus map, audit log) in /var/lib/canbridge, every plugin on an ephemeral port.
run_config() {
    cat <<YAML
log_level: WARNING
state_dir: /var/lib/canbridge
buses:
  - {name: demo, interface: virtual, channel: smoke-run}
mappings:
  - {bus: demo, dbc: $1, writable: ["MotorCommand.*"]}
plugins:
  opcua: {listen: "opc.tcp://127.0.0.1:0", allow_anonymous: true}
  modbus: {host: 127.0.0.1, port: 0, map_file: /var/lib/canbridge/modbus-map.yaml}
  rest: {host: 127.0.0.1, port: 0}
YAML
}
run_sh='timeout --preserve-status -s INT 10 canbridge run /etc/canbridge/canbridge.yaml && ls -R /var/lib/canbridge'

run_default_cmd() {
    local dbc cfgdir rc=0
    dbc=$(in_image python3 -c 'import canbridge, pathlib; print(pathlib.Path(canbridge.__file__).parent / "demo/demo.dbc")')
    cfgdir=$(mktemp -d)
    run_config "$dbc" >"$cfgdir/canbridge.yaml"
    chmod 755 "$cfgdir" && chmod 644 "$cfgdir/canbridge.yaml"
    if [[ -n $ctr ]]; then
        # buildah copy writes as root: the image user can read the file but not write the directory
        buildah copy "$ctr" "$cfgdir/canbridge.yaml" /etc/canbridge/canbridge.yaml >/dev/null || rc=1
        ((rc)) || in_image sh -c "$run_sh" || rc=$?
    else
        "$engine" run --rm --network host -v "$cfgdir:/etc/canbridge:ro" --entrypoint sh "$tag" -c "$run_sh" || rc=$?
    fi
    rm -rf "$cfgdir"
    return "$rc"
}

if ((smoke)); then
    if [[ $engine != docker ]] && command -v buildah >/dev/null; then
        ctr=$(buildah from --pull=never "$tag") || die "buildah from $tag failed"
    fi
    check "canbridge --version" expect_output "^canbridge ${version//./\\.}\$" -- canbridge --version
    check "canbridge plugins" expect_output '^northbound:.*modbus' '^northbound:.*opcua' '^northbound:.*rest' \
        -- canbridge plugins
    check "packaged files" expect_output "files ok" -- python3 -c "$files_py"
    check "canbridge check (demo DBC)" expect_output . -- sh -c "$check_sh"
    check "canbridge demo --help" expect_output "--state-dir" -- canbridge demo --help
    check "canbridge run (as the CMD: read-only /etc/canbridge, state in /var/lib/canbridge)" \
        expect_output_of 'running /etc/canbridge/canbridge.yaml' 'opcua +opc.tcp://127.0.0.1:[0-9]+' \
        'modbus +modbus-tcp://' 'rest +http://' 'canbridge stopped' 'modbus-map.yaml' 'audit.jsonl' 'pki' \
        -- run_default_cmd
    # bounded twice: the probe stops the demo itself; timeout is the backstop
    check "canbridge demo (started, probed, stopped)" expect_output "stopped cleanly" \
        -- timeout -s KILL 120 python3 -c "$(cat "$root/tools/image/demo_probe.py")"
fi

echo
echo "== summary"
echo "image:  $tag ($engine), ${size} (uncompressed)"
[[ -n ${build_s:-} ]] && echo "build:  ${build_s} s"
if ((smoke)); then
    if ((${#failures[@]})); then
        printf 'FAILED: %s\n' "${failures[@]}" >&2
        exit 1
    fi
    echo "smoke:  all checks passed"
fi
