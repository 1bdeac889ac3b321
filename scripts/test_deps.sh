#!/usr/bin/env bash
# System packages that some integration tests start for real: Chromium (browser
# test), PostgreSQL and Redis (CeleryExecutor topology test), docker-compose (compose file
# validation). Skipped when present.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
# Validates docker-compose.yml (`config -q`) without a Docker engine.
command -v docker-compose >/dev/null || command -v docker >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-deps: installing ${need[*]} from Debian"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts these as system services; the tests start their own on loopback.
  $SUDO service postgresql stop >/dev/null 2>&1 || true
  $SUDO service redis-server stop >/dev/null 2>&1 || true
else
  echo "test-deps: chromium, postgresql and redis already installed"
fi
