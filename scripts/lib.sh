# shellcheck shell=bash
# Shared by scripts/test and scripts/bench (sourced, not run): bring up the local
# test bed (scripts/testbed.py) in a fresh state dir, export its env, and tear it
# down again on EXIT/INT/TERM/HUP.

KH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KH_STATE=""

kh_say() { printf 'test bed: %s\n' "$*" >&2; }

# Install whatever Debian packages the test bed and scripts/test need and lack
# (testbed.py knows the list, and how to install without starting their services).
kh_ensure_packages() {
  command -v python3 >/dev/null 2>&1 || { kh_say "python3 not found (apt-get install python3)"; return 1; }
  # promtool checks docs/monitoring/alerts.yml
  python3 "$KH_ROOT/scripts/testbed.py" packages --also promtool=prometheus
}

kh_testbed_down() {
  [ -z "$KH_STATE" ] || python3 "$KH_ROOT/scripts/testbed.py" down --state "$KH_STATE" || true
}

# kh_testbed_up [testbed.py up options]: start the test bed and export its env
# (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, REDIS_CLUSTER_URLS, DATABASE_URL, KH_TESTBED, ...;
# see testbed.py).
kh_testbed_up() {
  kh_ensure_packages
  KH_STATE="$(mktemp -d /tmp/kh-state.XXXXXX)"
  trap kh_testbed_down EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  python3 "$KH_ROOT/scripts/testbed.py" up --state "$KH_STATE" --owner-pid $$ "$@"
  # shellcheck source=/dev/null
  source "$KH_STATE/env"
}
