#!/usr/bin/env bash
# Run the image with podman the way the tests and benchmarks do: on the host's network (servers
# on loopback are reachable), within this sandbox's hard ulimits, with a read-only root file
# system (the image writes only into its mounts) and the working folder mounted at its own path
# (so the artifact paths a run records are true on the host as in the container).
#   docker/run.sh [podman run options] IMAGE [arguments of python -m]
set -euo pipefail
exec podman run --rm --network host --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
    --read-only -v "$PWD:$PWD" --workdir "$PWD" "$@"
