#!/bin/sh
# PID 1 of the kernel tier's QEMU guest (busybox): load the modules, mount the host's / read-only
# over 9p and the output share read-write, chroot into the host's own userland and run the
# scenario script (tests/usbkernel/guest.py) with the host's Python. Parameters come on the
# kernel command line: stmflash.out= stmflash.py= stmflash.guest= stmflash.src= (the checkout
# under test, first on PYTHONPATH, so the guest runs the same stmflash as the host side)
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
arg() { sed -n "s/.*stmflash\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
OUT=$(arg out); PY=$(arg py); GUEST=$(arg guest); SRC=$(arg src)
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "STMFLASH-GUEST insmod $m failed"; done
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host \
    || { echo "STMFLASH-GUEST 9p root mount failed"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "/host$OUT" \
    || { echo "STMFLASH-GUEST output share mount failed"; poweroff -f; }
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mount -t tmpfs tmp /host/run; mount -t tmpfs tmp /host/var/tmp
[ -d /host/etc/udev/rules.d ] && mount -t tmpfs tmp /host/etc/udev/rules.d
echo "STMFLASH-GUEST-UP $(cut -d' ' -f1 /proc/uptime)"
chroot /host /usr/bin/env -i HOME=/run TMPDIR=/run LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$SRC" \
    PATH="$(dirname "$PY"):/usr/sbin:/usr/bin:/sbin:/bin" "$PY" "$GUEST" "$OUT"
echo "STMFLASH-GUEST-DONE rc=$? $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
