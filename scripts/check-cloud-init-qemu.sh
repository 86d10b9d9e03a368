#!/usr/bin/env bash
# Checks the Debian 12 AMI's cloud-init set-up against amivm's metadata service, on QEMU (TCG): the
# real cloud-init of the image reads an amivm instance's metadata (key pair, user data, instance id)
# and `ssh` logs in with the key pair's key, as `admin`. A check of the recipe and of the metadata
# amivm serves, run by hand (about 6-10 minutes on 2 cores): a full boot under amivm itself needs
# hardware KVM (tests/hw_kvm.rs runs the same steps there).
#
# How: amivm makes an instance record (key pair, user data; its VM stopped at once) for the tree to
# serve; QEMU boots the disk on microvm with ACPI, a virtio-net card with the instance's MAC on a
# slirp network 169.254.169.0/24 whose guest forward for 169.254.169.254:80 runs examples/imds_stdio.rs
# per connection (amivm's metadata service code, answering on stdin/stdout), and forwards a host
# port to the guest's port 22.
#
# Usage: scripts/check-cloud-init-qemu.sh [--timeout SECS]   (default 1200)
# Uses AMIVM_DEBIAN_* as check-qemu.sh does. Exit status: 0 the login printed the instance id and the
# user data's mark; 1 not (the console is printed).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"

timeout=1200
case ${1:-} in
--timeout) timeout=${2:?--timeout needs a value} ;;
"") ;;
*) die "unknown argument '$1' (usage: $0 [--timeout SECS])" ;;
esac
# The account the check's instance belongs to.
readonly ACCOUNT=111111111111
# slirp's network for the guest: the link-local /24 that holds the metadata address, so that slirp
# answers ARP for 169.254.169.254 and forwards its port 80 (QEMU's -netdev user, guestfwd).
readonly NET=169.254.169.0/24 HOST=169.254.169.2 DNS=169.254.169.3 DHCP_START=169.254.169.15

if [ -z "${AMIVM_DEBIAN_DISK:-}" ]; then
    eval "$("$here/../images/debian/build-disk.sh" --env)"
fi
need_tool qemu-system-x86_64 qemu-system-x86
need_tool ssh openssh-client
cd "$AMIVM_ROOT"
cargo build --release --quiet --bin amivm --example imds_stdio
amivm=$AMIVM_ROOT/target/release/amivm
imds=$AMIVM_ROOT/target/release/examples/imds_stdio

work=$(mktemp -d)
qpid=
trap '[ -z "$qpid" ] || kill "$qpid" 2>/dev/null || true; rm -rf "$work"' EXIT
a() { "$amivm" --store "$work/store" --account "$ACCOUNT" "$@"; }
a image create --name debian-12 --disk "$AMIVM_DEBIAN_DISK" >/dev/null
a key-pair create mykey --key-file "$work/key" >/dev/null
printf '#!/bin/sh\necho from-user-data > /var/tmp/amivm-user-data\n' >"$work/init.sh"
# The record only: its VM stops after a second (nothing of it is booted here).
a run debian-12 --name check --key-name mykey --user-data "$work/init.sh" --timeout 1 >/dev/null 2>&1 || true
id=$(a --output json ps --all | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["InstanceId"])')
mac=$(a --output json ps --all | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["MacAddress"])')
log "instance $id (MAC $mac): its metadata answered by $imds"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
console=$work/console.log
# shellcheck disable=SC2054 # the commas are QEMU option syntax
timeout "$timeout" qemu-system-x86_64 -M microvm,acpi=on -accel tcg -cpu max -smp 2 -m 1024 \
    -nodefaults -no-user-config -display none -no-reboot -serial "file:$console" \
    -global virtio-mmio.force-legacy=false \
    -kernel "$AMIVM_DEBIAN_IMAGE_KERNEL" -initrd "$AMIVM_DEBIAN_IMAGE_INITRD" \
    -append "$AMIVM_DEBIAN_IMAGE_CMDLINE tsc_early_khz=$khz" \
    -device virtio-blk-device,drive=d0 -drive "id=d0,file=$AMIVM_DEBIAN_DISK,format=raw,if=none,snapshot=on" \
    -netdev "user,id=n0,net=$NET,host=$HOST,dns=$DNS,dhcpstart=$DHCP_START,hostfwd=tcp:127.0.0.1:$port-:22,guestfwd=tcp:169.254.169.254:80-cmd:env IMDS_STDIO_LOG=$work/imds.log $imds $work/store $ACCOUNT $id" \
    -device "virtio-net-device,netdev=n0,mac=$mac" </dev/null >"$work/qemu.log" 2>&1 &
qpid=$!
start=$(now_ms)
# cloud-init's last stage prints "Cloud-init v. ... finished at ...".
until grep -q 'Cloud-init v\. .* finished at' "$console" 2>/dev/null; do
    if ! kill -0 "$qpid" 2>/dev/null; then
        cat "$console" "$work/qemu.log" >&2
        die "QEMU ended before cloud-init finished"
    fi
    sleep 5
done
log "cloud-init finished after $(since "$start")"
grep -E 'Cloud-init v\.' "$console" >&2 || true
log "metadata requests answered: $(wc -l <"$work/imds.log"): $(sort "$work/imds.log" | uniq -c | sort -rn | head -12 | tr -s ' ' | tr '\n' ';')"
out=$(ssh -i "$work/key" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=60 -p "$port" admin@127.0.0.1 \
    'cat /var/lib/cloud/data/instance-id; cat /var/tmp/amivm-user-data; hostname' 2>"$work/ssh.log") || {
    cat "$work/ssh.log" "$console" >&2
    die "ssh admin@ the guest failed"
}
log "ssh as admin printed: $(tr '\n' ' ' <<<"$out")"
[ "$(sed -n 1p <<<"$out")" = "$id" ] || die "the guest's cloud-init instance id is not $id"
[ "$(sed -n 2p <<<"$out")" = from-user-data ] || die "the user data did not run"
log "cloud-init took $id's key, user data and id from amivm's metadata service; ssh works ($(since "$start"))"
