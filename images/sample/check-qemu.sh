#!/usr/bin/env bash
# Checks the sample image end to end on QEMU (the reference VMM), independently of amivm: boots the
# sample kernel with a copy of the sample rootfs plus test scripts in /etc/amivm/smoke.d/, and asserts
# the banner, each script's result, and the status init reports through the exit port.
#
# Usage: images/sample/check-qemu.sh [--kvm]
#   default: QEMU's TCG emulator, which boots the kernel to user space on any host
#   --kvm:   KVM; on a PVM host (see docs/ci.md) non-PVM guests stop early there, so this only
#            passes where KVM is hardware-backed
# Uses AMIVM_SAMPLE_VMLINUX / AMIVM_SAMPLE_ROOTFS when set, else builds (or finds in the cache).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../scripts/lib/common.sh
. "$here/../../scripts/lib/common.sh"

# QEMU's isa-debug-exit exits with (value << 1) | 1 (hw/misc/debugexit.c).
qemu_status() { echo $((($1 << 1) | 1)); }
# Generous: a TCG boot of this kernel to the exit port takes a few seconds when the host is idle.
readonly BOOT_TIMEOUT=180

accel=(--tcg)
[ "${1:-}" = --kvm ] && accel=()

vmlinux=${AMIVM_SAMPLE_VMLINUX:-$("$here/build-kernel.sh")}
rootfs=${AMIVM_SAMPLE_ROOTFS:-$("$here/build-rootfs.sh" | head -n1)}
need_tool mkfs.ext4 e2fsprogs

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# image NAME FILE=BODY...: an ext4 image of the rootfs with the given smoke scripts.
image() {
    local name=$1 r="$work/$1"
    shift
    cp -a "$rootfs/." "$r/"
    while [ $# -gt 0 ]; do
        printf '%s\n' "${1#*=}" >"$r/etc/amivm/smoke.d/${1%%=*}"
        # Scripts with a #! line are made executable; init runs the others with sh.
        case ${1#*=} in "#!"*) chmod +x "$r/etc/amivm/smoke.d/${1%%=*}" ;; esac
        shift
    done
    mkfs.ext4 -q -F -E root_owner=0:0 -d "$r" "$work/$name.ext4" 64M >/dev/null
}

failures=0
# boot NAME EXPECTED_STATUS REGEX...: boots image NAME, expects the exit status and every console regex.
boot() {
    local name=$1 want=$2 rc=0 re t0
    shift 2
    t0=$(now_ms)
    "$here/qemu-boot.sh" "${accel[@]}" --vcpus 2 --memory 256 --timeout "$BOOT_TIMEOUT" \
        --disk "$work/$name.ext4" "$vmlinux" >"$work/$name.log" 2>&1 || rc=$?
    local ok=true
    if [ "$rc" != "$(qemu_status "$want")" ]; then
        log "$name: QEMU exited $rc, expected $(qemu_status "$want") (guest status $want)"
        ok=false
    fi
    for re in "$@"; do
        if ! grep -qE "$re" "$work/$name.log"; then
            log "$name: no console line matches /$re/"
            ok=false
        fi
    done
    if $ok; then
        log "$name: ok (guest status $want, $(since "$t0"))"
    else
        failures=$((failures + 1))
        log "$name: console:"
        sed 's/^/    /' "$work/$name.log" >&2
    fi
}

image pass \
    '10-devices=#!/bin/sh
test -c /dev/port && test -b /dev/vda && echo "smoke-10: /dev/port and /dev/vda present"' \
    '20-write=#!/bin/sh
echo marker >/root/marker && sync && echo "smoke-20: wrote /root/marker"'
boot pass 0 \
    'amivm-sample: booted amivm sample AMI' \
    'amivm-sample: kernel 6\.1\.[0-9]+.*, 2 CPU\(s\), .* root /dev/root \(ext4, rw\)' \
    'smoke-10: /dev/port and /dev/vda present' \
    'amivm-sample: smoke 20-write: exit 0' \
    'amivm-sample: status 0'

image fail \
    '10-ok=#!/bin/sh
true' \
    '20-fail=#!/bin/sh
echo "smoke-20: failing with 7"; exit 7' \
    '30-fail=exit 9'
boot fail 7 \
    'amivm-sample: smoke 10-ok: exit 0' \
    'amivm-sample: smoke 20-fail: exit 7' \
    'amivm-sample: smoke 30-fail: exit 9' \
    'amivm-sample: status 7'

[ "$failures" -eq 0 ] || die "$failures sample-image check(s) failed"
log "the sample image boots, runs its smoke scripts and reports through the exit port"
