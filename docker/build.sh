#!/usr/bin/env bash
# Build the project's image with podman where only package registries can be reached: on the
# Debian base made from the apt mirror (debian-base.sh), with the host's CA store mounted for the
# build (so a TLS-intercepting proxy's CA is trusted) and the host's uv cache, when there is one,
# so the locked wheels are not downloaded again. On a machine with registry access,
# `docker build -f docker/Dockerfile -t mlp-experiments .` builds the CUDA image instead.
#   docker/build.sh [TAG] [more podman build options]    (default TAG localhost/mlp-experiments)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-localhost/mlp-experiments}"
shift || true
base=localhost/debian-base:bookworm
docker/debian-base.sh "$base"
options=(--build-arg "BASE_IMAGE=$base" --network host
         --ulimit nofile=20000:20000 --ulimit nproc=4096:4096
         -v /etc/ssl/certs:/etc/ssl/certs:ro)
if commit="$(git rev-parse HEAD 2>/dev/null)"; then
    options+=(--build-arg "GIT_COMMIT=$commit")
fi
if cache="$(uv cache dir 2>/dev/null)" && [ -d "$cache" ]; then
    options+=(-v "$cache:/root/.cache/uv")
fi
exec podman build -f docker/Dockerfile -t "$tag" "${options[@]}" "$@" .
