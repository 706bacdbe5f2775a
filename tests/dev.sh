#!/usr/bin/env bash
# The README's two commands. On a fresh Debian 12 machine, as root:
#   bash tests/dev.sh demo   - install everything, boot two VMs, run the agent, show the metrics
#   bash tests/dev.sh test   - install everything, run the whole test suite
# Installs: Debian packages (QEMU, qemu-ga, kernel, busybox, ...), a virtualenv in .venv with the
# project and its test dependencies, and the test guest image in .cache/guest.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-system-x86 qemu-guest-agent qemu-utils busybox-static linux-image-amd64
              e2fsprogs cpio kmod iproute2 procps python3 python3-venv python3-pip
              python3.11 rpm systemd adduser)

setup() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "dev.sh: installing ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || { echo "dev.sh: run as root to install packages" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
    | grep -v -e "^WARNING: Location" -e "is ignored" || true
  bash tests/guest/build-image.sh
}

case "${1:-}" in
  demo) setup; exec .venv/bin/python -m tests.demo ;;
  test) setup; shift; exec .venv/bin/python -m pytest "$@" ;;
  setup) setup ;;
  *) echo "usage: bash tests/dev.sh demo|test|setup" >&2; exit 2 ;;
esac
