#!/usr/bin/env bash
# Build the hiveagent packages into dist/:
#   bash packaging/build.sh deb     -> dist/hiveagent_<version>_amd64.deb   (dpkg-deb)
#   bash packaging/build.sh rpm     -> dist/hiveagent-<version>-1.x86_64.rpm (rpmbuild)
#   bash packaging/build.sh all     -> both
# The payload is self-contained: hiveagent and its pinned dependencies
# (packaging/requirements.lock, CPython 3.11 manylinux wheels) under /opt/hiveagent/lib, run by
# the system's python3.11 (Debian 12, Ubuntu 24.04 via deadsnakes, RHEL/Rocky 9 `python3.11`).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
what=${1:-all}
case "$what" in deb|rpm|all) ;; *) echo "usage: bash packaging/build.sh deb|rpm|all" >&2; exit 2 ;; esac

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
VERSION=$("$PY" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open("hiveagent/__init__.py").read()).group(1))')
BUILD=$REPO/build/packaging
STAGE=$BUILD/root
rm -rf "$BUILD"
mkdir -p "$STAGE" "$BUILD/wheels" dist

echo "build.sh: hiveagent $VERSION: staging the payload"
pip_quiet() {  # pip, its output shown only when it fails
  "$PY" -m pip "$@" >"$BUILD/pip.log" 2>&1 || { cat "$BUILD/pip.log" >&2; exit 1; }
}
pip_quiet wheel -q --no-deps -w "$BUILD/wheels" .
LIB=$STAGE/opt/hiveagent/lib
pip_quiet install -q --no-deps --no-compile --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  --target "$LIB" -r packaging/requirements.lock "$BUILD"/wheels/hiveagent-*.whl
test -f "$LIB/hiveagent/__init__.py" || { echo "build.sh: payload incomplete" >&2; exit 1; }
rm -rf "$LIB/bin"  # console scripts with this machine's paths; /usr/bin/hiveagent is ours
if [ -x /usr/bin/python3.11 ]; then
  /usr/bin/python3.11 -m compileall -q -j 0 "$LIB" >/dev/null || true
fi
install -D -m 0755 packaging/hiveagent.sh "$STAGE/usr/bin/hiveagent"
install -D -m 0644 packaging/hiveagent.service "$STAGE/usr/lib/systemd/system/hiveagent.service"
install -D -m 0640 packaging/agent.json "$STAGE/etc/hiveagent/agent.json"
install -D -m 0644 README.md "$STAGE/usr/share/doc/hiveagent/README.md"
install -D -m 0644 packaging/README.md "$STAGE/usr/share/doc/hiveagent/PACKAGING.md"
install -d -m 0750 "$STAGE/var/lib/hiveagent"
find "$STAGE" -name '__pycache__' -path '*/tests/*' -prune -exec rm -rf {} + 2>/dev/null || true

build_deb() {
  local root=$BUILD/deb
  cp -a "$STAGE" "$root"
  rmdir "$root/var/lib/hiveagent" "$root/var/lib" "$root/var"  # postinst creates it, purge removes it
  mkdir -p "$root/DEBIAN"
  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat > "$root/DEBIAN/control" <<CONTROL
Package: hiveagent
Version: $VERSION
Architecture: amd64
Maintainer: hiveagent developers <hiveagent@localhost>
Depends: python3.11, adduser
Section: admin
Priority: optional
Installed-Size: $size
Homepage: https://hiveagent.invalid/
Description: host metrics agent for KVM/QEMU VMs
 Reads QMP, the QEMU guest agent and host counters for every VM and pushes
 EC2-, EBS- and CloudWatch-Agent-style metrics to any CloudWatch-compatible
 endpoint through a durable disk spool. Runs as the hiveagent systemd service.
CONTROL
  echo /etc/hiveagent/agent.json > "$root/DEBIAN/conffiles"
  install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
  local out=dist/hiveagent_${VERSION}_amd64.deb
  dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
  echo "build.sh: $out"
}

build_rpm() {
  command -v rpmbuild >/dev/null || { echo "build.sh: rpmbuild missing (apt install rpm)" >&2; exit 1; }
  local top=$BUILD/rpm
  mkdir -p "$top"/{BUILD,RPMS,SOURCES,SPECS,SRPMS,BUILDROOT}
  rpmbuild -bb --quiet --nodeps \
    --define "_topdir $top" --define "version $VERSION" --define "stage $STAGE" \
    --define "_build_id_links none" \
    packaging/rpm/hiveagent.spec >/dev/null
  local rpm
  rpm=$(find "$top/RPMS" -name '*.rpm' | head -1)
  cp "$rpm" dist/
  echo "build.sh: dist/$(basename "$rpm")"
}

case "$what" in
  deb) build_deb ;;
  rpm) build_rpm ;;
  all) build_deb; build_rpm ;;
esac
