#!/usr/bin/env bash
# The real system in a virtual machine: a small Debian 12 with systemd as PID 1 and Debian's
# own kernel, booted under qemu, installs the .deb tests/deb.sh built and runs tests/vm/job.sh
# as root inside it. The job proves, with bedside's own unit:
#   Type=notify readiness; the watchdog restarting a daemon whose image worker stalls
#   (BEDSIDE_TEST_STALL_FILE, a test-only switch); Restart=on-failure after SIGKILL;
#   MemoryMax= from the profile enforced (a process put in the unit's cgroup grows until the
#   kernel kills it, and the unit comes back); capture from the kernel's vivid V4L2 driver in
#   YUYV, UYVY, NV12 and GREY at 640x480, 25 fps, with findings arriving on a broker inside
#   the VM; the device lost (unbound, then the module removed) and regained, the status topic
#   saying so; and DeviceAllow= letting only /dev/video0 through.
#
#   tests/vm.sh            (root; after tests/deb.sh, which leaves target/debian/bedside_amd64.deb)
#
# Everything it makes lives in target/vm/ and is reused by the next run (the root file system,
# the kernel, the initramfs): ~1 min 45 s from nothing, mostly debootstrap; `rm -rf target/vm`
# starts over. KVM is used when it works; here (a paravirtual kvm_pvm) it does not, and the
# VM runs under TCG emulation, 5-10x slower than the host: job.sh's waits are sized for that.
# Network: the Debian mirror apt already uses (DEBIAN_MIRROR to change it), for debootstrap
# and the kernel package; the VM itself has no network card.
# Recipe and measurements: ../shared/spikes/vm/ (debootstrap + kernel + busybox initramfs).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
W=$REPO/target/vm
ROOT=$W/root
DEB=${DEB:-$REPO/target/debian/bedside_amd64.deb}
VM_TIMEOUT=${VM_TIMEOUT:-900}
t0=$(date +%s.%N)
stamp() { printf '[%6.1fs] %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$*"; }
fail() { echo "vm.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot, mkfs)"
[ -f "$DEB" ] || fail "no $DEB: run tests/deb.sh first"
for tool in qemu-system-x86_64 debootstrap mkfs.ext4 cpio bc; do
  command -v "$tool" >/dev/null || fail "$tool is missing: .ci/install-deps vm"
done
mkdir -p "$W"

MIRROR=${DEBIAN_MIRROR:-}
if [ -z "$MIRROR" ]; then
  MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -1 || true)
  [ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
fi

# --- the root file system: systemd, udev, v4l-utils, Mosquitto, and the .deb's dependencies ---
PACKAGES=systemd,systemd-sysv,udev,kmod,dbus,v4l-utils,mosquitto,mosquitto-clients,libstdc++6
if [ "$(cat "$ROOT/.packages" 2>/dev/null)" != "$PACKAGES" ]; then
  rm -rf "$ROOT"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOT" "$MIRROR" > "$W/debootstrap.log" 2>&1 \
    || { tail -20 "$W/debootstrap.log"; fail "debootstrap failed"; }
  echo "$PACKAGES" > "$ROOT/.packages"
fi
stamp "root file system (Debian 12 minbase + systemd, udev, v4l-utils, mosquitto)"

# --- the kernel: the bookworm linux-image-amd64 points at, its modules in the root ---
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-6[^ ]*-amd64\)$/\1/p' | head -1)
[ -n "$KPKG" ] || fail "apt knows no linux-image-amd64 (apt-get update?)"
KVER=${KPKG#linux-image-}
if [ ! -e "$W/kernel/.done-$KVER" ]; then
  rm -rf "$W/kernel" "$W/dl"; mkdir -p "$W/kernel" "$W/dl"
  (cd "$W/dl" && apt-get download "$KPKG" busybox-static >/dev/null 2>&1) || fail "cannot download $KPKG"
  dpkg-deb -x "$W"/dl/"$KPKG"_*.deb "$W/kernel"
  touch "$W/kernel/.done-$KVER"
fi
if [ ! -e "$ROOT/usr/lib/modules/$KVER/modules.dep" ]; then
  # /lib is a link to usr/lib in bookworm: copy into usr/lib, never dpkg-deb -x over the root.
  mkdir -p "$ROOT/usr/lib/modules"
  cp -a "$W/kernel/lib/modules/$KVER" "$ROOT/usr/lib/modules/"
  chroot "$ROOT" depmod -a "$KVER"
fi
stamp "kernel $KVER"

# --- the guest's configuration (a file is rewritten only when its content changes) ---
put() { local f=$ROOT$1 tmp; tmp=$(mktemp); cat > "$tmp"; if cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv "$tmp" "$f"; chmod "${2:-644}" "$f"; fi; }
grep -q '^root::' "$ROOT/etc/shadow" || chroot "$ROOT" passwd -d root >/dev/null
echo bedside-vm | put /etc/hostname
put /etc/fstab <<'EOF'
/dev/vda / ext4 rw,errors=remount-ro 0 0
host0 /host 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0
EOF
mkdir -p "$ROOT/host"
printf '9pnet_virtio\n9p\n' | put /etc/modules-load.d/9p.conf
put /usr/local/bin/vm-job 755 <<'EOF'
#!/bin/sh
# After boot: run /host/job.sh, leave its log and exit code in /host/out, power off.
state=$(systemctl is-system-running --wait)
mkdir -p /host/out
echo "systemd: $state, $(cut -d' ' -f1 /proc/uptime) s after the kernel started" > /host/out/boot
if [ -x /host/job.sh ]; then /host/job.sh > /host/out/job.log 2>&1; rc=$?; else rc=127; fi
echo $rc > /host/out/.rc && mv /host/out/.rc /host/out/rc
sync
echo "VM-JOB-DONE rc=$rc" > /dev/console
systemctl poweroff -ff
EOF
put /etc/systemd/system/vm-job.service <<'EOF'
[Unit]
Description=Run /host/job.sh and power off
After=multi-user.target
RequiresMountsFor=/host
[Service]
Type=simple
ExecStart=/usr/local/bin/vm-job
[Install]
WantedBy=multi-user.target
EOF
lnk() { [ "$(readlink "$ROOT$2")" = "$1" ] || ln -sfn "$1" "$ROOT$2"; }
lnk /dev/null /etc/systemd/system/e2scrub_reap.service   # seconds of boot under TCG, no use here
lnk /etc/systemd/system/vm-job.service /etc/systemd/system/multi-user.target.wants/vm-job.service
stamp "guest configured"

# --- initramfs: static busybox and the modules that mount ext4 on virtio-blk ---
INITRD=$W/initrd-$KVER.img
if [ ! -e "$INITRD" ] || [ "$INITRD" -ot "$0" ]; then
  I=$W/initramfs; rm -rf "$I"; mkdir -p "$I"/{bin,dev,proc,sys,newroot,mods}
  dpkg-deb --fsys-tarfile "$W"/dl/busybox-static_*.deb | tar -x -C "$I" ./bin/busybox
  M=$ROOT/usr/lib/modules/$KVER
  resolve() { local m=$1 line d
    line=$(grep -E "(^|/)$m\.ko(\.xz)?:" "$M/modules.dep") || { echo "no module $m" >&2; exit 1; }
    for d in ${line#*:}; do resolve "$(basename "$d" | sed 's/\.ko.*//')"; done
    echo "${line%%:*}"; }
  : > "$I/mods/order"
  # crc32c_generic: ext4's soft dependency; without it the root does not mount.
  for m in virtio_pci virtio_blk crc32c_generic ext4; do
    for f in $(resolve $m); do
      grep -qx "$(basename "$f")" "$I/mods/order" || { cp "$M/$f" "$I/mods/"; basename "$f" >> "$I/mods/order"; }
    done
  done
  cat > "$I/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF
  chmod 755 "$I/init"
  (cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD"
fi
stamp "initramfs ($(tr '\n' ' ' < "$W/initramfs/mods/order"))"

# --- the disk (rebuilt when the root changed; booted with -snapshot, so it stays as made) ---
IMG=$W/root.img
if [ ! -e "$IMG" ] || [ -n "$(find "$ROOT/etc" "$ROOT/usr/local" -newer "$IMG" -print -quit)" ]; then
  rm -f "$IMG"
  mkfs.ext4 -q -F -L root -d "$ROOT" "$IMG" 1536M
fi
stamp "disk image"

# --- what the guest gets: the job, the profile, the package ---
S=$W/share; rm -rf "$S"; mkdir -p "$S"
install -m 755 tests/vm/job.sh "$S/job.sh"
cp tests/vm/board.toml "$S/board.toml"
cp "$DEB" "$S/bedside.deb"

ACCEL=${ACCEL:-}
if [ -z "$ACCEL" ]; then
  ACCEL=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; fi
fi
CPU=host; [ "$ACCEL" = tcg ] && CPU=max
stamp "booting under qemu ($ACCEL)"
tb=$(date +%s)
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -cpu "$CPU" -m 1024 -smp 2 \
  -kernel "$W/kernel/boot/vmlinuz-$KVER" -initrd "$INITRD" \
  -append "console=ttyS0 panic=-1 loglevel=4 mitigations=off" \
  -drive file="$IMG",if=virtio,format=raw,cache=unsafe -snapshot \
  -virtfs local,path="$S",mount_tag=host0,security_model=none,id=host0 \
  -nic none -nographic -no-reboot < /dev/null > "$W/console.log" 2>&1
qrc=$?
set -e
stamp "qemu exited ($qrc) after $(( $(date +%s) - tb )) s; $(cat "$S/out/boot" 2>/dev/null || echo 'systemd never reported')"
cat "$S/out/job.log" 2>/dev/null || { tail -30 "$W/console.log"; fail "the job left no log"; }
[ "$qrc" -ne 124 ] || fail "the VM ran past ${VM_TIMEOUT} s (console: $W/console.log)"
rc=$(cat "$S/out/rc" 2>/dev/null || echo 255)
[ "$rc" = 0 ] || fail "the job in the VM failed (rc $rc; console: $W/console.log)"
echo "vm.sh: every check passed inside the VM"
