#!/usr/bin/env bash
# A Debian base image made from an apt mirror, for machines that cannot pull from container
# registries: debootstrap a minimal bookworm and import it into podman. Does nothing when the
# image exists. The mirror defaults to the one this machine's apt uses. ca-certificates comes
# with the base: docker/build.sh mounts the host's CA store over /etc/ssl/certs, where the
# package's own set-up could not write during the build.
#   docker/debian-base.sh [IMAGE]        (default localhost/debian-base:bookworm)
set -euo pipefail
image="${1:-localhost/debian-base:bookworm}"
if podman image exists "$image"; then
    exit 0
fi
mirror="${DEBIAN_MIRROR:-$(
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null
)}"
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/dev/null
tar -C "$root" -c . | podman import --quiet - "$image" >/dev/null
echo "built $image from $mirror"
