# shellcheck shell=bash
# Shared by scripts/test and scripts/bench (sourced, not run): bring up the local
# test bed (scripts/testbed.py) in a fresh state dir, export its env, and tear it
# down again on EXIT/INT/TERM/HUP.

KH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KH_STATE=""

kh_say() { printf 'test bed: %s\n' "$*" >&2; }

# Install whatever system packages are missing (Debian/apt-get), without letting
# their own services start: the test bed runs private instances.
kh_ensure_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || command -v postgres >/dev/null 2>&1 ||
    missing+=(postgresql)
  [ -x "${JAVA_HOME:-/nonexistent}/bin/java" ] || command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus) # promtool checks docs/monitoring/alerts.yml
  [ ${#missing[@]} -eq 0 ] && return 0

  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { kh_say "missing ${missing[*]} and not root"; return 1; }
    sudo=(sudo)
  fi
  kh_say "installing ${missing[*]} (apt-get)"
  local policy=/usr/sbin/policy-rc.d created="" rc=0
  if [ ! -e "$policy" ]; then  # "exit 101" = do not start services during install
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    created=1
  fi
  {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
  } || rc=$?
  [ -z "$created" ] || "${sudo[@]}" rm -f "$policy"
  return "$rc"
}

kh_testbed_down() {
  [ -z "$KH_STATE" ] || python3 "$KH_ROOT/scripts/testbed.py" down --state "$KH_STATE" || true
}

# kh_testbed_up [testbed.py up options]: start the test bed and export its env
# (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, REDIS_CLUSTER_URLS, DATABASE_URL, KH_TESTBED, ...;
# see testbed.py).
kh_testbed_up() {
  kh_ensure_packages
  python3 "$KH_ROOT/scripts/testbed.py" fetch-kafka >/dev/null
  KH_STATE="$(mktemp -d /tmp/kh-state.XXXXXX)"
  trap kh_testbed_down EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  python3 "$KH_ROOT/scripts/testbed.py" up --state "$KH_STATE" --owner-pid $$ "$@"
  # shellcheck source=/dev/null
  source "$KH_STATE/env"
}
