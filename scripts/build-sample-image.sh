#!/usr/bin/env bash
# Builds the sample AMI from Debian packages (kernel from linux-source-6.1, rootfs from busybox-static;
# both cached under .cache/, see docs/ci.md) and registers it in amivm's image store as `amivm-sample`,
# unless an image of that name exists.
#
# Usage: scripts/build-sample-image.sh [--no-register] [--name NAME]
#   --no-register   build (or find in the cache) the kernel and rootfs only; amivm is not needed
#   --name NAME     register under NAME instead of amivm-sample
#
# Prints KEY=VALUE lines on stdout, for `eval "$(scripts/build-sample-image.sh)"`:
#   AMIVM_SAMPLE_VMLINUX=…  AMIVM_SAMPLE_ROOTFS=…  AMIVM_SAMPLE_ROOTFS_EXT4=…  AMIVM_SAMPLE_CMDLINE=…
#   AMIVM_SAMPLE_IMAGE=NAME  AMIVM_SAMPLE_IMAGE_ID=ami-… (when registered, or already present)
# Progress goes to stderr.
#
# Environment:
#   AMIVM                 the amivm binary (default: target/release/amivm if built, else amivm on PATH)
#   AMIVM_SAMPLE_VMLINUX  use this kernel instead of building one (e.g. built earlier in a Debian container)
#   AMIVM_SAMPLE_ROOTFS   use this rootfs directory instead of building one
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# The sample AMI's kernel command line. amivm appends the virtio_mmio.device=... of each block device;
# the root volume is the first, /dev/vda. pci=off: the kernel has PCI only for /dev/port (nothing to
# probe on a micro-VM). reboot=k: `reboot -f` resets through the i8042, which amivm treats as a stop.
readonly SAMPLE_CMDLINE="console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw"

register=true
name="amivm-sample"
while [ $# -gt 0 ]; do
    case $1 in
    --no-register) register=false ;;
    --name)
        [ $# -ge 2 ] || die "--name needs a value"
        name=$2
        shift
        ;;
    *) die "unknown argument '$1' (usage: $0 [--no-register] [--name NAME])" ;;
    esac
    shift
done

if [ -n "${AMIVM_SAMPLE_VMLINUX:-}" ]; then
    [ -f "$AMIVM_SAMPLE_VMLINUX" ] || die "AMIVM_SAMPLE_VMLINUX=$AMIVM_SAMPLE_VMLINUX does not exist"
    vmlinux=$AMIVM_SAMPLE_VMLINUX
else
    vmlinux=$("$AMIVM_ROOT/images/sample/build-kernel.sh")
fi
if [ -n "${AMIVM_SAMPLE_ROOTFS:-}" ]; then
    [ -d "$AMIVM_SAMPLE_ROOTFS" ] || die "AMIVM_SAMPLE_ROOTFS=$AMIVM_SAMPLE_ROOTFS is not a directory"
    rootfs=$AMIVM_SAMPLE_ROOTFS
    rootfs_ext4=${AMIVM_SAMPLE_ROOTFS_EXT4:-}
else
    { read -r rootfs && read -r rootfs_ext4; } < <("$AMIVM_ROOT/images/sample/build-rootfs.sh")
    [ -d "$rootfs" ] || die "the rootfs build did not produce a directory"
fi
printf 'AMIVM_SAMPLE_VMLINUX=%q\n' "$vmlinux"
printf 'AMIVM_SAMPLE_ROOTFS=%q\n' "$rootfs"
[ -z "$rootfs_ext4" ] || printf 'AMIVM_SAMPLE_ROOTFS_EXT4=%q\n' "$rootfs_ext4"
printf 'AMIVM_SAMPLE_CMDLINE=%q\n' "$SAMPLE_CMDLINE"
$register || exit 0

if [ -n "${AMIVM:-}" ]; then
    amivm=$AMIVM
elif [ -x "$AMIVM_ROOT/target/release/amivm" ]; then
    amivm=$AMIVM_ROOT/target/release/amivm
elif command -v amivm >/dev/null 2>&1; then
    amivm=amivm
else
    die "amivm not found: build it (cargo build --release) or set AMIVM=/path/to/amivm"
fi

# Which build this is, recorded as a tag so a stale registration can be recognised. (Tag values keep
# to letters, digits, '.' and '-', which every tag syntax accepts.)
kernel_info="$(dirname "$(realpath "$vmlinux")")/info"
rootfs_info="$rootfs/etc/amivm/build-info"
kernel_key=$(sed -n 's/^fragment_sha256_12=//p' "$kernel_info" 2>/dev/null || true)
rootfs_key=$(sed -n 's/^skeleton_sha256_12=//p' "$rootfs_info" 2>/dev/null || true)
recipe="kernel-${kernel_key:-custom}.rootfs-${rootfs_key:-custom}"

# `image ls --output json` lists matching images; an image of this name shows up as a "NAME" string.
existing=$("$amivm" image ls --output json --filter "name=$name") ||
    die "'$amivm image ls' failed; is the image store usable?"
if grep -q "\"$name\"" <<<"$existing"; then
    if ! grep -qF "$recipe" <<<"$existing"; then
        log "warning: the registered '$name' was built from another recipe than the current ($recipe);"
        log "         deregister it and run this again to register the current build"
    fi
    log "image '$name' exists; not registering again"
    printf 'AMIVM_SAMPLE_IMAGE=%q\n' "$name"
    id=$(grep -o '"ImageId": *"ami-[0-9a-f]*"' <<<"$existing" | head -n1 | grep -o 'ami-[0-9a-f]*' || true)
    [ -z "$id" ] || printf 'AMIVM_SAMPLE_IMAGE_ID=%q\n' "$id"
    exit 0
fi

log "registering '$name' ($recipe)"
id=$("$amivm" image create --name "$name" --kernel "$vmlinux" --root "$rootfs" --cmdline "$SAMPLE_CMDLINE" \
    --description "amivm sample AMI: micro-VM Linux 6.1 + busybox, from Debian 12 packages (images/sample)" \
    --tag "amivm-sample-recipe=$recipe") || die "'$amivm image create' failed"
log "registered $name as $id"
printf 'AMIVM_SAMPLE_IMAGE=%q\n' "$name"
printf 'AMIVM_SAMPLE_IMAGE_ID=%q\n' "$id"
