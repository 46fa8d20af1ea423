#!/usr/bin/env bash
# Build a local Debian 12 base image with python3 for the canbridge Dockerfile (BASE=...), for machines
# that reach a Debian mirror but no image registry. Needs root, mmdebstrap and podman (or buildah).
#   tools/image/build-base.sh [IMAGE_NAME]      default: localhost/debian12-py:bookworm
# Environment: MIRROR (default: mmdebstrap's choice, the host's sources for the same suite), SUITE (bookworm),
# IMPORT_ENGINE: docker | podman | buildah, where the image goes (default: podman, else buildah, else docker).
set -euo pipefail

image=${1:-localhost/debian12-py:bookworm}
suite=${SUITE:-bookworm}

die() { echo "build-base: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (mmdebstrap creates device nodes and file owners)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install --no-install-recommends mmdebstrap"
engine=${IMPORT_ENGINE:-}
if [[ -z $engine ]]; then
    for e in podman buildah docker; do command -v $e >/dev/null && { engine=$e; break; }; done
fi
case $engine in
    podman|docker) importer=("$engine" import --change 'CMD ["/bin/bash"]') ;;
    buildah) importer=() ;;
    *) die "podman, buildah or docker is needed to import the base image" ;;
esac
command -v "$engine" >/dev/null || die "$engine is not installed"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# minbase: only Priority: required packages (passwd, for useradd, is one) plus what the Dockerfile needs:
# python3 + python3-venv (a venv with pip), ca-certificates (pip over TLS without an extra CA bundle).
# Man pages, docs (but not copyright files) and translations are left out: the image has no use for them.
mmdebstrap --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$suite" "$work/base.tar" ${MIRROR:+"$MIRROR"}

if ((${#importer[@]})); then
    "${importer[@]}" "$work/base.tar" "$image"
else
    # buildah has no import: start from scratch and unpack the tarball into the container's root.
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    tar -C "$mnt" -xf "$work/base.tar"
    buildah umount "$ctr" >/dev/null
    buildah config --cmd /bin/bash "$ctr"
    buildah commit --rm "$ctr" "$image"
fi
echo "build-base: $image ready"
