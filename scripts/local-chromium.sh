#!/usr/bin/env bash
# A headless Chromium for the dashboard's browser tests (Debian's `chromium` package).
#
#   scripts/local-chromium.sh ensure   # install it when missing (idempotent); last stdout line is its path
#   scripts/local-chromium.sh path     # its path (exit 1 if not installed)
#
# Playwright drives it (executable_path=...): `playwright install` downloads a browser build of its own,
# which is not needed here. Env: VLBENCH_CHROMIUM=/path/to/chromium uses that binary instead.
# Everything but the path goes to stderr.
set -euo pipefail

log() { echo "local-chromium: $*" >&2; }
die() { log "error: $*"; exit 1; }

find_chromium() {
  local c
  for c in "${VLBENCH_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

# the binary must start headless (a missing shared library or a broken install shows here, not in a test)
check_runs() {
  local version
  # stderr only on failure: Debian's launcher script may print noise from its /etc/chromium.d snippets
  version=$("$1" --headless --no-sandbox --disable-gpu --version 2>/dev/null) ||
    die "$1 does not start: $("$1" --headless --no-sandbox --version 2>&1 | tail -n 5)"
  log "using $version ($1)"
}

cmd_ensure() {
  local bin
  if ! bin=$(find_chromium); then
    [ -z "${VLBENCH_CHROMIUM:-}" ] || die "VLBENCH_CHROMIUM=$VLBENCH_CHROMIUM is not an executable"
    [ "$(id -u)" -eq 0 ] || die "Chromium is not installed and installing it needs root (apt-get install chromium)"
    command -v apt-get >/dev/null || die "Chromium is not installed and apt-get is not available"
    log "installing chromium with apt-get (one-off)"
    apt-get update -qq >&2 || die "apt-get update failed"
    # fonts-liberation: metric-compatible fonts, so screenshots have readable text on a bare machine
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >&2 ||
      die "apt-get install chromium failed"
    bin=$(find_chromium) || die "chromium installed but no /usr/bin/chromium found"
  fi
  check_runs "$bin"
  echo "$bin"
}

cmd_path() {
  find_chromium || die "not installed (install it with: $0 ensure)"
}

# serialise installs (two pytest sessions starting at once would race on dpkg's lock)
lock() {
  exec 9>/tmp/vlbench-chromium.lock
  flock -w 900 9 || die "timed out waiting for /tmp/vlbench-chromium.lock"
}

case "${1:-}" in
  ensure) lock; cmd_ensure ;;
  path) cmd_path ;;
  *) echo "usage: $0 ensure|path" >&2; exit 2 ;;
esac
