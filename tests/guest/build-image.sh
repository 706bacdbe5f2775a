#!/usr/bin/env bash
# Build the test guest: Debian's own kernel plus an initramfs holding busybox-static and
# qemu-ga (with its shared libraries). Used by the tests and the demo.
#
#   tests/guest/build-image.sh [OUT_DIR]      (default: .cache/guest in the repo)
#
# Needs: linux-image-amd64, busybox-static, qemu-guest-agent, cpio, kmod (installed by
# tests/dev.sh). Output: OUT_DIR/vmlinuz, OUT_DIR/initrd.img. Rebuilt only when this script or
# its inputs change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.cache/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

kver=$(ls /lib/modules | sort -V | tail -1)
kernel=/boot/vmlinuz-$kver
[ -r "$kernel" ] || { echo "build-image: no kernel at $kernel (apt-get install linux-image-amd64)" >&2; exit 1; }
for tool in busybox qemu-ga cpio modprobe; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool missing" >&2; exit 1; }
done

stamp="$kver $(sha256sum "$here/build-image.sh" "$here/init" | sha256sum | cut -c1-16) $(qemu-ga --version | head -1)"
if [ -f "$out/initrd.img" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "build-image: up to date in $out"
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,mnt/data,var/run,modules,etc}
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in sh mount insmod ln ip sleep cat mkdir basename dd sync df; do ln -s busybox "$root/bin/$applet"; done

# qemu-ga and every library it loads, at the same paths.
cp /usr/sbin/qemu-ga "$root/sbin/qemu-ga"
ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# Kernel modules in dependency order (every virtio driver is =m in Debian's kernel).
: > "$root/modules/order"
for mod in virtio_pci virtio_console virtio_blk virtio_balloon virtio_net ext4; do
  modprobe -S "$kver" --show-depends "$mod" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  name=$(basename "$ko")
  case "$ko" in
    *.ko.xz) xz -dc "$ko" > "$root/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$ko" > "$root/modules/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$ko" "$root/modules/$name" ;;
  esac
  echo "$name" >> "$root/modules/order"
done

cp "$here/init" "$root/init"
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img.tmp"
cp "$kernel" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
echo "$stamp" > "$out/stamp"
echo "build-image: built $out/initrd.img ($(du -h "$out/initrd.img" | cut -f1)) for kernel $kver"
