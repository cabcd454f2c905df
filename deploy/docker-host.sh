#!/usr/bin/env bash
# A private Docker daemon for the compose test on machines without one running (CI, these
# development machines): host networking only, its data outside the checkout so images and
# build layers are cached between runs.
#
#   deploy/docker-host.sh install   apt-get docker.io, docker-compose, debootstrap (root; only
#                                   what is missing)
#   deploy/docker-host.sh start     start dockerd unless it runs; prints DOCKER_HOST=...
#   deploy/docker-host.sh stop      stop the dockerd this script started
#   deploy/docker-host.sh run CMD   CMD with DOCKER_HOST set, in a dockerd started for it unless
#                                   one runs (then stopped again)
#
# Env: COVIDCT_DOCKER_ROOT (default /var/lib/covidct-docker): data root, socket and pid file.
set -euo pipefail

root="${COVIDCT_DOCKER_ROOT:-/var/lib/covidct-docker}"
sock="$root/docker.sock"
pidfile="$root/docker.pid"
log() { printf '[docker-host] %s\n' "$*" >&2; }

running() { [ -S "$sock" ] && DOCKER_HOST="unix://$sock" docker version > /dev/null 2>&1; }

case "${1:-}" in
install)
    missing=()
    for pkg in docker.io docker-compose debootstrap; do
        dpkg-query -W -f='${Status}' "$pkg" 2> /dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && exit 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${missing[*]} (run as root to install them)"
        exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
    ;;
start)
    if ! running; then
        [ "$(id -u)" -eq 0 ] || { log "dockerd needs root"; exit 1; }
        mkdir -p "$root/data" "$root/exec"
        rm -f "$sock" "$pidfile"
        # No bridge or iptables on these machines: every container runs with host networking.
        setsid dockerd --data-root "$root/data" --exec-root "$root/exec" -H "unix://$sock" \
            --pidfile "$pidfile" --iptables=false --ip6tables=false --bridge=none \
            > "$root/dockerd.log" 2>&1 < /dev/null &
        for _ in $(seq 1 60); do running && break; sleep 0.5; done
        running || { log "dockerd did not start: $(tail -n 5 "$root/dockerd.log")"; exit 1; }
        log "dockerd started (data root $root/data)"
    fi
    echo "DOCKER_HOST=unix://$sock"
    ;;
stop)
    if [ -f "$pidfile" ]; then
        pid="$(cat "$pidfile")"
        kill "$pid" 2> /dev/null || true
        for _ in $(seq 1 60); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
        log "dockerd stopped"
    fi
    ;;
run)
    shift
    started=0
    running || started=1
    export "$("$0" start)"
    if [ "$started" = 1 ]; then trap '"$0" stop' EXIT; fi
    "$@"
    ;;
*)
    echo "usage: $0 install|start|stop|run CMD..." >&2
    exit 2
    ;;
esac
