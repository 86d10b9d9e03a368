#!/usr/bin/env bash
# Boots a kernel (and optionally a root disk) on QEMU's microvm machine, the reference VMM amivm is
# checked against, and prints every console line prefixed with the seconds since QEMU started.
#
# Usage: images/sample/qemu-boot.sh [options] VMLINUX
#   --disk IMG        raw disk image as a virtio-mmio virtio-blk device (QEMU adds virtio_mmio.device=...)
#   --disk-device DEV QEMU device for the disk (default virtio-blk-device, on virtio-mmio; virtio-blk-pci
#                     for a PC machine)
#   --snapshot        writes to the disk go to a temporary file (QEMU's snapshot=on), IMG is left as it was
#   --initrd FILE     initrd (initramfs) for the kernel
#   --append ARGS     kernel command line (default: console=ttyS0 earlyprintk=ttyS0 noxsave reboot=k panic=1,
#                     plus "root=/dev/vda rw" with --disk)
#   --vcpus N         default 1
#   --memory MIB      default 128
#   --timeout SECS    stop QEMU after SECS (default 120); exit status 124 then
#   --until REGEX     stop QEMU as soon as a console line matches (exit status 0); repeatable: then
#                     once every REGEX has matched a line
#   --machine OPTS    QEMU -M value (default microvm,x-option-roms=off,rtc=off,acpi=off: direct PVH entry,
#                     no firmware, no ACPI, and so no MP table either; drop x-option-roms=off to boot
#                     through qboot, which writes an MP table)
#   --cpu MODEL       QEMU -cpu value (default qemu64,-xsave,-cx16: what KVM's emulator here can run)
#   --global OPT      a QEMU -global option, e.g. virtio-mmio.force-legacy=false (repeatable)
#   --tcg             QEMU's own emulator instead of KVM (on this PVM host, KVM runs non-PVM guests in
#                     the kernel's instruction emulator, which stops Linux early; TCG boots it fully)
# Exit status: QEMU's, i.e. for the exit port (isa-debug-exit at 0xf4) (STATUS << 1) | 1; 124 on timeout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../scripts/lib/common.sh
. "$here/../../scripts/lib/common.sh"

machine=microvm,x-option-roms=off,rtc=off,acpi=off
disk='' append='' vcpus=1 memory=128 timeout=120 accel=kvm kernel='' initrd='' snapshot='' disk_device=virtio-blk-device
cpu=qemu64,-xsave,-cx16
globals=()
until=()
while [ $# -gt 0 ]; do
    case $1 in
    --disk) disk=$2 && shift ;;
    --snapshot) snapshot=,snapshot=on ;;
    --disk-device) disk_device=$2 && shift ;;
    --initrd) initrd=$2 && shift ;;
    --cpu) cpu=$2 && shift ;;
    --global) globals+=(-global "$2") && shift ;;
    --append) append=$2 && shift ;;
    --vcpus) vcpus=$2 && shift ;;
    --memory) memory=$2 && shift ;;
    --timeout) timeout=$2 && shift ;;
    --until) until+=("$2") && shift ;;
    --machine) machine=$2 && shift ;;
    --tcg) accel=tcg ;;
    -*) die "unknown option $1" ;;
    *) kernel=$1 ;;
    esac
    shift
done
[ -n "$kernel" ] || die "usage: $0 [--disk IMG] [--append ARGS] [--vcpus N] [--memory MIB] [--timeout S] [--until RE] [--machine OPTS] [--tcg] [--snapshot] [--initrd FILE] [--cpu MODEL] [--global OPT] VMLINUX"
[ -r "$kernel" ] || die "cannot read $kernel"
need_tool qemu-system-x86_64 qemu-system-x86

if [ -z "$append" ]; then
    append="console=ttyS0 earlyprintk=ttyS0 noxsave reboot=k panic=1"
    [ -n "$disk" ] && append="$append root=/dev/vda rw"
fi
# shellcheck disable=SC2054 # the commas are QEMU option syntax
args=(-M "$machine" -accel "$accel" -cpu "$cpu"
    -smp "$vcpus" -m "$memory" -nodefaults -no-user-config -display none -serial stdio -no-reboot
    -device isa-debug-exit,iobase=0xf4,iosize=1 -kernel "$kernel" -append "$append" ${globals[@]+"${globals[@]}"})
[ -z "$initrd" ] || args+=(-initrd "$initrd")
if [ -n "$disk" ]; then
    # shellcheck disable=SC2054
    args+=(-device "$disk_device,drive=d0" -drive "id=d0,file=$disk,format=raw,if=none$snapshot")
fi
log "qemu-system-x86_64 ${args[*]}"

# QEMU runs in the background with its console in a FIFO; lines are stamped as they arrive.
# (GNU timeout passes the TERM we may send it on to QEMU.)
fifo=$(mktemp -u)
mkfifo "$fifo"
start=$(now_ms)
timeout "$timeout" qemu-system-x86_64 "${args[@]}" </dev/null >"$fifo" 2>&1 &
qpid=$!
trap 'kill $qpid 2>/dev/null || true; rm -f "$fifo"' EXIT
matched=false
pending=(${until[@]+"${until[@]}"})
while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    printf '%7.2f %s\n' "$(awk -v a="$start" -v b="$(now_ms)" 'BEGIN { print (b - a) / 1000 }')" "$line"
    if [ ${#pending[@]} -gt 0 ]; then
        for i in "${!pending[@]}"; do
            if [[ $line =~ ${pending[$i]} ]]; then unset 'pending[i]'; fi
        done
        if [ ${#pending[@]} -eq 0 ]; then
            matched=true
            kill $qpid 2>/dev/null || true
            break
        fi
    fi
done <"$fifo"
rc=0
wait $qpid || rc=$?
if $matched; then
    log "matched $(printf '/%s/ ' "${until[@]}")after $(since "$start")"
    exit 0
fi
case $rc in
124) log "timed out after $(since "$start")" ;;
*) log "QEMU exited with $rc after $(since "$start")" ;;
esac
exit "$rc"
