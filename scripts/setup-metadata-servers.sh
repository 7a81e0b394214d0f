#!/usr/bin/env bash
# Installs the metadata servers the etcd / Redis backend tests start on loopback:
#   etcd         (Debian package etcd-server)
#   redis-server (Debian package redis-server)
# and prints their versions. Idempotent: nothing is installed when both binaries already run.
#
# Usage: scripts/setup-metadata-servers.sh [--check]
#   --check   only report what is installed (exit 1 when something is missing)
# Environment:
#   ETCD_BIN, REDIS_SERVER_BIN   binaries to use instead of `etcd` / `redis-server` on the PATH
#                                (the tests honour the same variables)
#
# Installing needs root (apt-get). The tests never use the system services the packages may start
# (they run their own servers on free loopback ports with temporary data directories).
set -euo pipefail

say() { echo "setup-metadata-servers: $*"; }
die() { echo "setup-metadata-servers: ERROR: $*" >&2; exit 1; }

check_only=0
for arg in "$@"; do
  case "$arg" in
    --check) check_only=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (try --help)" ;;
  esac
done

etcd_bin=${ETCD_BIN:-etcd}
redis_bin=${REDIS_SERVER_BIN:-redis-server}

have_etcd() { "$etcd_bin" --version >/dev/null 2>&1; }
have_redis() { "$redis_bin" --version >/dev/null 2>&1; }

missing=()
have_etcd || missing+=(etcd-server)
have_redis || missing+=(redis-server)

if [ ${#missing[@]} -gt 0 ]; then
  [ "$check_only" -eq 1 ] && { say "missing: ${missing[*]}"; exit 1; }
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available; install etcd and redis-server by other means (or set ETCD_BIN / REDIS_SERVER_BIN)"
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run this script as root (sudo $0) to apt-get install them"
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages' post-install may try to start system services; in containers policy-rc.d refuses,
  # which is fine: the tests start their own servers.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

have_etcd || die "etcd ($etcd_bin) still does not run after installing etcd-server"
have_redis || die "redis-server ($redis_bin) still does not run after installing redis-server"
say "etcd: $("$etcd_bin" --version 2>/dev/null | sed -n 's/^etcd Version: //p') ($(command -v "$etcd_bin"))"
say "redis-server: $("$redis_bin" --version 2>/dev/null | sed -n 's/.* v=\([^ ]*\).*/\1/p') ($(command -v "$redis_bin"))"
