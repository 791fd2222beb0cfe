#!/usr/bin/env bash
# Installs and starts what the integration tests need, when it is missing:
# PostgreSQL running on 127.0.0.1:5432 (these machines ship it), Prometheus and Alertmanager
# (Debian packages `prometheus`, `prometheus-alertmanager`; the tests start their own instances),
# Chromium for the deploy page's browser test (`chromium`), docker-compose to validate the
# compose file (`docker-compose config` needs no Docker engine) and nginx, whose real `nginx -t`
# checks the files the nginx adapter renders (the tests run their own nginx, not the service); jq and
# git, which the CI examples' steps use (tests/integration/test_ci_examples.py runs them).
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v git >/dev/null 2>&1 || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-deps: installing ${missing[*]} (Debian packages)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "test-deps: starting PostgreSQL"
  for v in $(ls /etc/postgresql 2>/dev/null); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
  done
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
