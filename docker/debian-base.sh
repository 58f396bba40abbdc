#!/usr/bin/env bash
# A Debian base image made from an apt mirror, for machines that cannot pull from container
# registries: debootstrap a minimal bookworm and import it into podman. Does nothing when the
# image exists. The mirror is $DEBIAN_MIRROR, else the first (non-security) one this machine's
# apt sources name; with neither, it stops and says so. ca-certificates comes
# with the base: docker/build.sh mounts the host's CA store over /etc/ssl/certs, where the
# package's own set-up could not write during the build.
#   docker/debian-base.sh [IMAGE]        (default localhost/debian-base:bookworm)
set -euo pipefail
image="${1:-localhost/debian-base:bookworm}"
if podman image exists "$image"; then
    exit 0
fi
apt_mirror() {  # deb822 .sources files first, then one-line sources.list entries
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources \
        2>/dev/null || true
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security || true
}
mirror="${DEBIAN_MIRROR:-$(apt_mirror | head -n 1)}"
if [ -z "$mirror" ]; then
    echo "error: no Debian mirror: apt's sources name none. Set DEBIAN_MIRROR to the mirror" \
         "apt should use (its URL, as in /etc/apt/sources.list)." >&2
    exit 1
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/dev/null
tar -C "$root" -c . | podman import --quiet - "$image" >/dev/null
echo "built $image from $mirror"
