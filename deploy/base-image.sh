#!/usr/bin/env bash
# The base image for machines that cannot pull one (no registry reachable): Debian bookworm
# made with debootstrap, with Python 3.11 (the interpreter, venv, the shared libpython the
# Triton Python backend's stub links against) and CA certificates, imported into Docker.
# Elsewhere the Dockerfiles use the public python:3.11-slim-bookworm (build arg BASE_IMAGE).
#
#   deploy/base-image.sh [NAME]     NAME defaults to covidct/base:bookworm; skipped when it
#                                   exists (FORCE=1 rebuilds)
#   deploy/base-image.sh NAME build the same plus gcc and the Python headers: the gateway
#                                   image's build stage (BUILD_IMAGE) compiles covidct/_native.c
# Env: MIRROR (default: the first Debian URI in the apt sources, else deb.debian.org).
# The host's CA bundle is copied in when present: on machines whose package registries are
# reached through a proxy with its own CA, pip inside the image needs it.
set -euo pipefail

name="${1:-covidct/base:bookworm}"
packages=python3,python3-venv,libpython3.11,ca-certificates
[ "${2:-}" = build ] && packages="$packages,gcc,libc6-dev,libpython3.11-dev"
log() { printf '[base-image] %s\n' "$*" >&2; }

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$name" > /dev/null 2>&1; then
    log "$name exists"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }
command -v debootstrap > /dev/null || { log "debootstrap missing (deploy/docker-host.sh install)"; exit 1; }
mirror="${MIRROR:-$(grep -rhoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2> /dev/null \
    | awk '{print $2}' | head -n 1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d /tmp/covidct-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
log "debootstrap bookworm from $mirror (about a minute)"
debootstrap --variant=minbase --include="$packages" \
    bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
    || { log "debootstrap failed: $(tail -n 5 "$rootfs.log")"; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
# What a container never needs: documentation, manuals, locales, apt's lists and caches.
rm -rf "$rootfs"/usr/share/{doc,man,info,locale,lintian,linda} "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*
ln -sf python3 "$rootfs/usr/bin/python"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$name" > /dev/null
log "$name: $(docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}')"
