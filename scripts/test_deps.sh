#!/usr/bin/env bash
# System packages that some tests start or call for real: Chromium (browser test), PostgreSQL and Redis
# (CeleryExecutor topology test), docker-compose (compose file validation, no Docker engine needed).
# Skipped when present. Under CI=true the tests fail, not skip, when one of these is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
# A `docker` CLI without its compose plugin cannot validate the file: Debian's docker-compose can.
{ docker compose version || command -v docker-compose; } >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-deps: installing ${need[*]} from Debian"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts these as system services; the tests start their own on loopback.
  $SUDO service postgresql stop >/dev/null 2>&1 || true
  $SUDO service redis-server stop >/dev/null 2>&1 || true
else
  echo "test-deps: chromium, postgresql, redis and a compose binary already installed"
fi
