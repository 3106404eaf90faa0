#!/usr/bin/env bash
# Builds (once) what the cgroup v2 lane boots: Debian bookworm's stock kernel (the package
# linux-image-amd64 depends on, taken with `apt-get download` + `dpkg-deb -x`) and a small
# initramfs holding busybox (Debian busybox-static), the virtio/9p/overlay modules of that
# kernel and tests/cgroup2/init. Cached outside the clone, in
# ~/.cache/nomad-driver-elide/cgroup2/<kernel package>/ (vmlinuz, initramfs.cpio.gz); the
# initramfs is rebuilt when tests/cgroup2/init changes. Prints that directory last.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${NDE_CGROUP2_CACHE:-$HOME/.cache/nomad-driver-elide/cgroup2}"
log() { echo "build-image: $*" >&2; }
die() { log "$*"; exit 1; }

busybox=/bin/busybox
[ -x "$busybox" ] || die "no $busybox: apt-get install busybox-static"
ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked: apt-get install busybox-static"

pkg="${NDE_CGROUP2_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 2>/dev/null |
  grep -o 'linux-image-[0-9][^ ]*-amd64' | head -n 1)}"
[ -n "$pkg" ] || die "apt-cache knows no linux-image-amd64 (Debian bookworm's kernel): run apt-get update"
dir="$cache/$pkg"
mkdir -p "$dir"

if [ ! -s "$dir/vmlinuz" ] || [ ! -d "$dir/modules" ]; then
  log "downloading $pkg (first time only)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  chmod 755 "$tmp"   # apt-get download runs as _apt when it can
  (cd "$tmp" && apt-get download -q "$pkg" >&2) || die "apt-get download $pkg failed"
  dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/x"
  kver="${pkg#linux-image-}"
  rm -rf "$dir/modules"
  mkdir -p "$dir/modules"
  for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev \
      drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci fs/netfs/netfs \
      fs/fscache/fscache net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay; do
    cp "$tmp/x/lib/modules/$kver/kernel/$m.ko" "$dir/modules/" || die "$pkg has no $m.ko"
  done
  cp "$tmp/x/boot/vmlinuz-$kver" "$dir/vmlinuz.tmp" && mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
  rm -rf "$tmp"; trap - EXIT
fi

stamp="$(cat "$here/init" "$0" "$busybox" | sha256sum | cut -c1-16)"
if [ "$(cat "$dir/initramfs.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -s "$dir/initramfs.cpio.gz" ]; then
  log "building the initramfs"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp"/{bin,dev,proc,sys,lower,upper,newroot,modules}
  cp "$busybox" "$tmp/bin/busybox"
  for a in sh mount umount mkdir insmod switch_root cat echo poweroff sleep ip ls mknod hostname ln; do
    ln -s busybox "$tmp/bin/$a"
  done
  cp "$dir"/modules/*.ko "$tmp/modules/"
  install -m 755 "$here/init" "$tmp/init"
  (cd "$tmp" && find . | "$busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$dir/initramfs.cpio.gz.tmp"
  mv "$dir/initramfs.cpio.gz.tmp" "$dir/initramfs.cpio.gz"
  echo "$stamp" > "$dir/initramfs.stamp"
  rm -rf "$tmp"; trap - EXIT
fi
echo "$dir"
