#!/usr/bin/env bash
# Build the offline sandbox base image: no registry is reachable here, so the
# image is a debootstrapped minimal Debian with python3, imported into Docker.
# Reused when the tag already exists (cache by tag). On a machine with internet
# the Dockerfiles take `--build-arg BASE_IMAGE=python:3.11-slim` instead.
#
#   include/sandbox/base-image/build.sh [TAG]      (default selfheal/base:bookworm)
set -euo pipefail

TAG="${1:-selfheal/base:bookworm}"
SUITE="${SELFHEAL_BASE_SUITE:-bookworm}"
MIRROR="${SELFHEAL_DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
# python3-venv brings ensurepip so images make their own venv; ca-certificates for TLS clients.
PACKAGES="python3,python3-venv,ca-certificates"

log() { printf '[base-image] %s\n' "$*" >&2; }

if docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG present (cached)"
    exit 0
fi
command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap)"; exit 1; }
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }

work=$(mktemp -d /tmp/selfheal-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
log "debootstrap $SUITE ($PACKAGES) from $MIRROR"
start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
}
# Slim the image: caches and docs are not needed at run time.
rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/* \
    "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/locale/*
tar -C "$work/rootfs" -c . | docker import \
    -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["python3"]' \
    -m "selfheal offline base: debootstrap $SUITE minbase + $PACKAGES" - "$TAG" >/dev/null
log "$TAG built in $(($(date +%s) - start)) s"
