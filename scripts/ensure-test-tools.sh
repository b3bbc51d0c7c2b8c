#!/usr/bin/env bash
# What the test suite needs beyond Python 3.11+, Java 17+ and Maven, installed when missing:
#   openssl                 the TLS tests make their certificates with it
#   prometheus, promtool    tests/deploy/test_prometheus.py checks deploy/prometheus with promtool and
#                           runs its own Prometheus on a free port
# How: with apt-get as root (or through sudo without a password); otherwise Prometheus's Debian
# package is downloaded (`apt-get download`, no root needed) and unpacked under .cache/tools, which
# `make test` puts first on PATH. When none of that is possible it stops at once with one line
# saying what to install. Run by `make test`; safe to run again (it does nothing once all is there).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_BIN="$PWD/.cache/tools/usr/bin"
export PATH="$TOOLS_BIN:$PATH"

can_be_root() {
  [ "$(id -u)" = 0 ] || { command -v sudo > /dev/null && sudo -n true 2> /dev/null; }
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

# Every step below ends in `|| return 1`: a function called in an `||` list runs without `set -e`.
apt_install() {  # PACKAGE: installs it system-wide; fails without root or apt-get
  command -v apt-get > /dev/null && can_be_root || return 1
  echo "make test: installing $1 (apt-get)" >&2
  as_root apt-get update -qq > /dev/null || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" > /dev/null || return 1
}

unpack_deb() {  # PACKAGE: its Debian package's files under .cache/tools, without root
  command -v apt-get > /dev/null && command -v dpkg-deb > /dev/null || return 1
  echo "make test: no root: unpacking $1's Debian package under .cache/tools" >&2
  local scratch status=0
  scratch=$(mktemp -d)
  mkdir -p "$PWD/.cache/tools" || return 1
  { (cd "$scratch" && apt-get download -qq "$1" > /dev/null 2>&1) && dpkg-deb -x "$scratch"/"$1"_*.deb "$PWD/.cache/tools"; } || status=1
  rm -rf "$scratch"
  return $status
}

if ! command -v openssl > /dev/null; then
  apt_install openssl || { echo "make test: openssl is missing; install it (Debian: apt-get install openssl)" >&2; exit 1; }
fi

if ! command -v promtool > /dev/null || ! command -v prometheus > /dev/null; then
  if apt_install prometheus; then
    # The package starts a Prometheus service on port 9090; the suite runs its own and needs none.
    { as_root systemctl disable --now prometheus || as_root service prometheus stop; } > /dev/null 2>&1 || true
  elif ! unpack_deb prometheus; then
    echo "make test: prometheus and promtool are missing; install them (Debian: apt-get install prometheus," \
      "or a release from https://prometheus.io/download/ on PATH)" >&2
    exit 1
  fi
  command -v promtool > /dev/null && command -v prometheus > /dev/null || {
    echo "make test: prometheus was installed but promtool or prometheus is still not on PATH" >&2
    exit 1
  }
fi
