#!/usr/bin/env bash
# Boots the Debian 12 AMI's disk on QEMU (the reference VMM), independently of amivm: the kernel and
# initrd from the disk's /boot, the disk as a virtio-mmio virtio-blk device (version 2) on the microvm
# machine with ACPI, as amivm presents it. Prints the time-stamped console and checks that the initrd
# finds the root file system by UUID, that systemd reaches multi-user (the banner of
# amivm-banner.service) and that the serial console logs root in. The disk itself is not written
# (QEMU's snapshot=on).
#
# Usage: images/debian/check-qemu.sh [--timeout SECS] [--kvm]
#   --timeout SECS  give up after SECS (default 600: under TCG on 2 cores shared with ~20 busy
#                   processes, the banner came after 216 s and the autologin after 229 s)
#   --kvm           KVM instead of QEMU's TCG; on a PVM host (docs/ci.md) the kernel stops early there
# Uses AMIVM_DEBIAN_DISK / AMIVM_DEBIAN_IMAGE_KERNEL / AMIVM_DEBIAN_IMAGE_INITRD /
# AMIVM_DEBIAN_IMAGE_CMDLINE when set, else builds (or finds in the cache) with build-disk.sh.
# Exit status: 0 booted; 1 not (the console is in the output).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../scripts/lib/common.sh
. "$here/../../scripts/lib/common.sh"

timeout=600
accel=(--tcg)
while [ $# -gt 0 ]; do
    case $1 in
    --timeout)
        [ $# -ge 2 ] || die "--timeout needs a value"
        timeout=$2
        shift
        ;;
    --kvm) accel=() ;;
    *) die "unknown argument '$1' (usage: $0 [--timeout SECS] [--kvm])" ;;
    esac
    shift
done

if [ -z "${AMIVM_DEBIAN_DISK:-}" ]; then
    vars=$("$here/build-disk.sh" --env)
    eval "$vars"
fi
for v in AMIVM_DEBIAN_DISK AMIVM_DEBIAN_IMAGE_KERNEL AMIVM_DEBIAN_IMAGE_INITRD AMIVM_DEBIAN_IMAGE_CMDLINE; do
    [ -n "${!v:-}" ] || die "$v is not set (run images/debian/build-disk.sh --env)"
done

# QEMU's microvm ACPI tables (7.2) have no interrupt source override for IRQ 0, and its emulated
# IOAPIC delivers the PIT on pin 2: under TCG, Linux's PIT tick never arrives and the boot hangs in
# the delay-loop calibration right after "tsc: Marking TSC unstable". Telling the kernel the TSC's
# rate (under TCG the guest's TSC runs at the host's) lets it calibrate without the PIT. The host's
# rate is what its kernel measured, from /proc/cpuinfo.
extra=
if [ ${#accel[@]} -gt 0 ]; then
    khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
    [ -n "$khz" ] && extra=" tsc_early_khz=$khz"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
"$AMIVM_ROOT/images/sample/qemu-boot.sh" "${accel[@]}" --machine microvm,acpi=on --cpu max \
    --global virtio-mmio.force-legacy=false --vcpus 2 --memory 512 --timeout "$timeout" \
    --disk "$AMIVM_DEBIAN_DISK" --snapshot --initrd "$AMIVM_DEBIAN_IMAGE_INITRD" \
    --append "$AMIVM_DEBIAN_IMAGE_CMDLINE$extra" \
    --until '^amivm-debian: booted ' --until 'root \(automatic login\)' \
    "$AMIVM_DEBIAN_IMAGE_KERNEL" 2>&1 | tee "$log" >&2 || rc=$?

# Milestones, for the report: the first console line matching each.
for m in 'Linux version' 'Run /init' 'virtio_blk.*\[vda\]' 'EXT4-fs \(vda1\): mounted' \
    'systemd\[1\]: systemd [0-9]' 'Reached target.*Multi-User' 'amivm-debian: booted' 'automatic login'; do
    t=$(grep -m1 -E "$m" "$log" | awk '{ print $1 }')
    if [ -n "$t" ]; then t="at $t s"; else t="not seen"; fi
    log "$(printf '%-32s %s' "/$m/" "$t")"
done
[ "$rc" -eq 0 ] || die "the Debian disk did not boot to its banner and a root login on QEMU (status $rc)"
log "the Debian disk boots on QEMU microvm: initrd, root by UUID, systemd, banner, root autologin"
