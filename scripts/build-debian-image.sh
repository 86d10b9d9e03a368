#!/usr/bin/env bash
# Builds the Debian 12 AMI's disk from Debian packages (images/debian/build-disk.sh: mmdebstrap, the
# cloud kernel and an initrd with virtio_mmio and virtio_blk, systemd, a root-autologin serial
# console; cached under .cache/debian-image/, see docs/ci.md) and registers it in amivm's image store
# as `debian-12` with `amivm image create --disk`, unless an image of that name exists.
#
# Usage: scripts/build-debian-image.sh [--no-register] [--name NAME] [--env]
#   --no-register   build (or find in the cache) the disk only; amivm is not needed
#   --name NAME     register under NAME instead of debian-12
#   --env           accepted for symmetry with the other scripts: the output is always KEY=VALUE
#
# Prints KEY=VALUE lines on stdout, for `eval "$(scripts/build-debian-image.sh)"`:
#   AMIVM_DEBIAN_DISK=…  AMIVM_DEBIAN_IMAGE_KERNEL=…  AMIVM_DEBIAN_IMAGE_VMLINUX=…
#   AMIVM_DEBIAN_IMAGE_INITRD=…  AMIVM_DEBIAN_IMAGE_CMDLINE=…  AMIVM_DEBIAN_ROOT_UUID=…
#   AMIVM_DEBIAN_IMAGE=NAME  AMIVM_DEBIAN_IMAGE_ID=ami-… (when registered, or already present)
# Progress goes to stderr.
#
# Exit status: 0 done; 77 skipped: not root and no cached disk (mmdebstrap needs root; one line on
# stderr says so); 1 failed.
#
# Environment:
#   AMIVM        the amivm binary (default: target/release/amivm if built, else amivm on PATH)
#   AMIVM_CACHE  the cache folder (default <repo>/.cache)
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

register=true
name="debian-12"
while [ $# -gt 0 ]; do
    case $1 in
    --no-register) register=false ;;
    --env) ;;
    --name)
        [ $# -ge 2 ] || die "--name needs a value"
        name=$2
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (usage: $0 [--no-register] [--name NAME] [--env])" ;;
    esac
    shift
done

# (Captured first: `eval "$(cmd)"` would hide cmd's failure, and its "skipped" status 77.)
vars=$("$AMIVM_ROOT/images/debian/build-disk.sh" --env) || exit $?
eval "$vars"
printf '%s\n' "$vars"
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

# Which build this is (the cache folder's name: kernel version, recipe hash, versions hash), recorded
# as a tag so a stale registration can be recognised. (Tag values keep to letters, digits, '.' and '-',
# which every tag syntax accepts.)
recipe=$(basename "$(dirname "$(realpath "$AMIVM_DEBIAN_DISK")")" | tr -c 'A-Za-z0-9.\n-' '-')

# `image ls --output json` lists matching images; an image of this name shows up as a "NAME" string.
existing=$("$amivm" image ls --output json --filter "name=$name") ||
    die "'$amivm image ls' failed; is the image store usable?"
if grep -q "\"$name\"" <<<"$existing"; then
    if ! grep -qF "$recipe" <<<"$existing"; then
        log "warning: the registered '$name' was built from another recipe than the current ($recipe);"
        log "         deregister it and run this again to register the current build"
    fi
    log "image '$name' exists; not registering again"
    printf 'AMIVM_DEBIAN_IMAGE=%q\n' "$name"
    id=$(grep -o '"ImageId": *"ami-[0-9a-f]*"' <<<"$existing" | head -n1 | grep -o 'ami-[0-9a-f]*' || true)
    [ -z "$id" ] || printf 'AMIVM_DEBIAN_IMAGE_ID=%q\n' "$id"
    exit 0
fi

# The AMI's devices are described to the guest in ACPI tables (Debian's kernel has no
# virtio_mmio.device= command-line devices). With an amivm that lacks the flag, it registers without
# it and says so.
create_opts=()
if "$amivm" image create --help 2>/dev/null | grep -q -- '--device-discovery'; then
    create_opts=(--device-discovery acpi)
else
    log "warning: this amivm has no 'image create --device-discovery'; registering without it"
fi
# cloud-init makes the user `admin` (rootfs/etc/cloud/cloud.cfg.d/90-amivm.cfg): `amivm ssh` logs in as it.
if "$amivm" image create --help 2>/dev/null | grep -q -- '--default-user'; then
    create_opts+=(--default-user admin)
fi

log "registering '$name' ($recipe)"
id=$("$amivm" image create --name "$name" --disk "$AMIVM_DEBIAN_DISK" ${create_opts[@]+"${create_opts[@]}"} \
    --description "Debian 12 (bookworm) cloud kernel, systemd, cloud-init, OpenSSH, from Debian packages (images/debian)" \
    --tag "amivm-debian-recipe=$recipe") || die "'$amivm image create --disk' failed"
log "registered $name as $id"
printf 'AMIVM_DEBIAN_IMAGE=%q\n' "$name"
printf 'AMIVM_DEBIAN_IMAGE_ID=%q\n' "$id"
