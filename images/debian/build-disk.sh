#!/usr/bin/env bash
# Builds the Debian 12 AMI's disk from Debian packages only: mmdebstrap (minbase variant plus
# images/debian/packages, no recommends) into a directory, images/debian/rootfs/ copied over it, then
# `mke2fs -d` into an ext4 partition image and a GPT disk file written with sfdisk, the partition
# copied in at its offset. No loop devices, no mounts (mmdebstrap mounts /proc, /sys, /dev in its
# chroot while it installs). mmdebstrap needs root; a cached build does not.
#
# Usage: images/debian/build-disk.sh [--env]
#   default: the disk's path on stdout
#   --env:   KEY=VALUE lines (eval them):
#            AMIVM_DEBIAN_DISK            the raw GPT disk (sparse; boot a copy or an overlay of it)
#            AMIVM_DEBIAN_IMAGE_KERNEL    /boot/vmlinuz-* of the disk (bzImage)
#            AMIVM_DEBIAN_IMAGE_VMLINUX   the same kernel as an ELF vmlinux (scripts/lib/bzimage.sh)
#            AMIVM_DEBIAN_IMAGE_INITRD    /boot/initrd.img-* of the disk
#            AMIVM_DEBIAN_IMAGE_CMDLINE   a kernel command line for it (root=UUID=…)
#            AMIVM_DEBIAN_ROOT_UUID       the ext4 root file system's UUID (fixed: ROOT_FS_UUID below)
#
# Exit status: 0 built or found in the cache; 77 skipped: not root and nothing cached (a one-line
# reason on stderr); 1 failed.
#
# Cached under .cache/debian-image/<kernel version>-<recipe hash>-<versions hash>/ (the recipe hash
# covers this script and images/debian/; the versions hash covers apt's candidate versions of the
# packages in images/debian/packages and of the kernel package behind linux-image-cloud-amd64). The
# newest build is also at the stable paths .cache/debian-image/{disk.img,vmlinuz,vmlinux,initrd.img}.
# When apt does not know the packages (no Debian sources), the newest cached build of the same recipe
# is used with a warning.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../scripts/lib/common.sh
. "$here/../../scripts/lib/common.sh"
# shellcheck source=../../scripts/lib/bzimage.sh
. "$here/../../scripts/lib/bzimage.sh"

# The Debian suite the AMI is built from, and the apt sources mmdebstrap uses for it (the main archive,
# its point-release updates and the security archive: the same sources a Debian 12 host has, so apt's
# candidate versions here are the versions mmdebstrap installs).
readonly SUITE=bookworm
readonly SOURCES=(
    "deb http://deb.debian.org/debian $SUITE main"
    "deb http://deb.debian.org/debian $SUITE-updates main"
    "deb http://deb.debian.org/debian-security $SUITE-security main"
)
# Size of the (sparse) disk file. The root file system takes ~0.4 GiB; the rest is free space.
readonly DISK_MIB=1024
# Where the root partition starts and how much is left after it, in MiB: 1 MiB alignment at the front
# (room for the protective MBR and the primary GPT: 34 sectors) and 1 MiB at the end (the backup GPT:
# 33 sectors), per the UEFI spec's GPT layout.
readonly PART_START_MIB=1 PART_TAIL_MIB=1
readonly SECTOR=512
# GPT partition type "Linux root (x86-64)" (Discoverable Partitions Specification, uapi-group.org).
readonly ROOT_PART_TYPE=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
# Fixed identifiers, so every build of the recipe has the same ones and the kernel command line
# (root=UUID=…) and /etc/fstab written here agree with what `amivm image create --disk` reads. Every
# instance launched from the AMI has them too, as instances of any cloud image do.
readonly ROOT_FS_UUID=5a1e0b5e-d0c4-4e1a-9a5b-3a4d1e0b1a12
readonly DISK_GUID=5a1e0b5e-d0c4-4e1a-9a5b-3a4d1e0b1a00
readonly ROOT_PART_GUID=5a1e0b5e-d0c4-4e1a-9a5b-3a4d1e0b1a01
readonly ROOT_FS_LABEL=amivm-root
# The command line the AMI boots with. The root file system is checked and remounted read-write by
# systemd per /etc/fstab, as on any Debian system.
readonly CMDLINE="console=ttyS0 root=UUID=$ROOT_FS_UUID ro panic=1"
# Modules the initrd must contain (they are listed in rootfs/etc/initramfs-tools/modules).
readonly INITRD_MODULES=(virtio_mmio virtio_blk)
# The exit status that means "skipped" (the automake test-suite convention).
readonly EXIT_SKIP=77

env_out=false
case ${1:-} in
--env) env_out=true ;;
"") ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
*) die "unknown argument '$1' (usage: $0 [--env])" ;;
esac

base="$AMIVM_CACHE/debian-image"
overlay="$here/rootfs"

emit() { # emit DIR: print the results of the build in DIR (through the stable paths)
    local d=$1
    mkdir -p "$base"
    local f
    for f in disk.img vmlinuz vmlinux initrd.img; do
        [ "$(readlink "$base/$f" 2>/dev/null)" = "$(basename "$d")/$f" ] || link_stable "$base/$f" "$d/$f"
    done
    if $env_out; then
        printf 'AMIVM_DEBIAN_DISK=%q\n' "$(realpath -s "$base/disk.img")"
        printf 'AMIVM_DEBIAN_IMAGE_KERNEL=%q\n' "$(realpath -s "$base/vmlinuz")"
        printf 'AMIVM_DEBIAN_IMAGE_VMLINUX=%q\n' "$(realpath -s "$base/vmlinux")"
        printf 'AMIVM_DEBIAN_IMAGE_INITRD=%q\n' "$(realpath -s "$base/initrd.img")"
        printf 'AMIVM_DEBIAN_IMAGE_CMDLINE=%q\n' "$(sed -n 's/^cmdline=//p' "$d/info")"
        printf 'AMIVM_DEBIAN_ROOT_UUID=%q\n' "$(sed -n 's/^root_fs_uuid=//p' "$d/info")"
    else
        printf '%s\n' "$(realpath -s "$base/disk.img")"
    fi
}

# The recipe's hash: this script, the package list and the overlay (names, executable bits, contents).
recipe_hash=$(
    cd "$here"
    find . \( -type f -o -type l \) -printf '%p %y\n' | LC_ALL=C sort
    echo "executable:"
    find . -type f -perm -u+x | LC_ALL=C sort
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
) || die "cannot read $here"
recipe_hash=$(printf '%s' "$recipe_hash" | sha256sum | cut -c1-12)

mapfile -t packages < <(sed 's/#.*//; s/[[:space:]]//g; /^$/d' "$here/packages")
[ ${#packages[@]} -gt 0 ] || die "$here/packages lists no packages"

# versions: "PKG=VERSION" lines for the packages and the kernel behind linux-image-cloud-amd64, or
# fewer lines when apt does not know some of them. (Two apt-cache calls in all: each takes a second or
# more on a busy machine.)
versions() {
    local kpkg=
    if printf '%s\n' "${packages[@]}" | grep -qx linux-image-cloud-amd64; then
        kpkg=$(LC_ALL=C apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null |
            sed -n 's/^Depends: //p' | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -m1 '^linux-image-') || true
    fi
    # `apt-cache policy A B…` prints "A:" then its "Candidate: VERSION" line, for each package it knows.
    # shellcheck disable=SC2086 # $kpkg is one word or nothing
    LC_ALL=C apt-cache policy "${packages[@]}" $kpkg 2>/dev/null |
        awk '/^[^ ].*:$/ { name = substr($0, 1, length($0) - 1) }
             $1 == "Candidate:" && $2 != "(none)" { print name "=" $2 }'
}
# want: how many lines versions() prints when apt knows every package (the kernel's adds one).
want=${#packages[@]}
printf '%s\n' "${packages[@]}" | grep -qx linux-image-cloud-amd64 && want=$((want + 1))

vers=$(versions)
if [ "$(grep -c . <<<"$vers")" -lt "$want" ]; then
    apt_update_once
    vers=$(versions)
fi
if [ "$(grep -c . <<<"$vers")" -lt "$want" ]; then
    cached=$(find "$base" -mindepth 2 -maxdepth 2 -path "*-$recipe_hash-*/disk.img" -printf '%T@ %h\n' \
        2>/dev/null | sort -rn | head -1 | cut -d' ' -f2- || true)
    [ -n "$cached" ] || die "apt does not know ${packages[*]}: this needs Debian 12 apt sources (run 'apt-get update' as root)"
    log "warning: apt does not know the packages (no Debian sources?); using the cached build $(basename "$cached")"
    emit "$cached"
    exit 0
fi
kver=$(sed -n 's/^linux-image-cloud-amd64=//p' <<<"$vers")
vers_hash=$(printf '%s\n' "$vers" | sha256sum | cut -c1-12)
out="$base/${kver//:/%3a}-$recipe_hash-$vers_hash"
if [ -f "$out/info" ] && [ -f "$out/disk.img" ]; then
    emit "$out"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "skipped: building the Debian 12 disk needs root (mmdebstrap installs packages in a chroot)," \
        "and no build of this recipe is cached; run it as root (.ci/run in CI does)"
    exit "$EXIT_SKIP"
fi
need_tool mmdebstrap mmdebstrap
need_tool mke2fs e2fsprogs
need_tool sfdisk fdisk
need_tool blkid util-linux

log "building the Debian 12 disk: $(tr '\n' ' ' <<<"$vers")"
t_all=$(now_ms)
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
work="$out.tmp"
# A failed build leaves nothing behind (its root file system alone is ~300 MB).
trap 'rc=$?; [ "$rc" -eq 0 ] || rm -rf "$work"; exit "$rc"' EXIT
root="$work/rootfs"

# The overlay with modes normalised (git keeps only the executable bit) and owned by root in the tar.
mkdir -p "$work/overlay"
cp -a "$overlay/." "$work/overlay/"
find "$work/overlay" -type d -exec chmod 0755 {} +
find "$work/overlay" -type f -perm -u+x -exec chmod 0755 {} +
find "$work/overlay" -type f ! -perm -u+x -exec chmod 0644 {} +
tar --owner=0 --group=0 --numeric-owner -C "$work/overlay" -cf "$work/overlay.tar" .

t0=$(now_ms)
# Hooks (run by mmdebstrap with the chroot's path as $1):
# - setup (before any package is installed): /etc/initramfs-tools/ (modules, conf.d/amivm) and
#   /etc/fstab, so the initrd made when the kernel is installed has the modules and fsck.ext4.
#   dpkg's force-confold keeps our modules file over the package's conffile (without it dpkg would
#   stop at a conffile prompt); it is dropped again at the end. The path-exclude options (kept in the
#   image, for later installs too) leave out manual pages, translations and documentation but the
#   copyright files: ~50 MB.
# - customize: the rest of the overlay, the console and banner units enabled, multi-user.target as
#   the default, no gettys on virtual terminals (a micro-VM has only its serial console), the list
#   of the initrd's files (lsinitramfs, in the chroot: the host needs no initramfs-tools) and of the
#   installed packages; systemd-networkd and systemd-resolved enabled (cloud-init renders the network
#   for networkd); openssh-server's host keys removed, so that no two instances share them
#   (cloud-init's ssh module makes new ones on each instance's first boot).
export AMIVM_OVERLAY_TAR="$work/overlay.tar" AMIVM_WORK="$work" AMIVM_FSTAB="UUID=$ROOT_FS_UUID / ext4 defaults,errors=remount-ro 0 1"
# shellcheck disable=SC2016 # $1 and the AMIVM_* variables are expanded by the hooks' shell
mmdebstrap --mode=root --variant=minbase --include="$(
    IFS=,
    echo "${packages[*]}"
)" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt=force-confold \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --setup-hook='tar -C "$1" -xf "$AMIVM_OVERLAY_TAR" ./etc/initramfs-tools' \
    --setup-hook='printf "%s\n" "$AMIVM_FSTAB" >"$1/etc/fstab"' \
    --customize-hook='tar -C "$1" -xf "$AMIVM_OVERLAY_TAR"' \
    --customize-hook='cd "$1/etc" && rm -f initramfs-tools/modules.dpkg-dist resolv.conf && sed -i "/^force-confold$/d" dpkg/dpkg.cfg.d/99mmdebstrap && if ! [ -s dpkg/dpkg.cfg.d/99mmdebstrap ]; then rm dpkg/dpkg.cfg.d/99mmdebstrap; fi' \
    --customize-hook='chroot "$1" systemctl enable amivm-banner.service serial-getty@ttyS0.service' \
    --customize-hook='chroot "$1" systemctl set-default multi-user.target' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd.service systemd-resolved.service' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    --customize-hook='chroot "$1" systemctl disable getty@tty1.service && chroot "$1" systemctl mask getty-static.service' \
    --customize-hook='chroot "$1" sh -c "lsinitramfs /boot/initrd.img-*" >"$AMIVM_WORK/initrd.list"' \
    --customize-hook='chroot "$1" dpkg-query -W -f "\${Package}=\${Version}\n" >"$AMIVM_WORK/packages.list"' \
    "$SUITE" "$root" "${SOURCES[@]}" >&2 || die "mmdebstrap failed"
t_mmdebstrap=$(since "$t0")
log "mmdebstrap: $t_mmdebstrap, $(du -sh "$root" | cut -f1), $(wc -l <"$work/packages.list") packages"

# The initrd must be able to reach the root disk.
missing=()
for m in "${INITRD_MODULES[@]}"; do
    grep -qE "/$m\.ko(\.[a-z]+)?$" "$work/initrd.list" || missing+=("$m")
done
[ ${#missing[@]} -eq 0 ] ||
    die "the initrd lacks the module(s) ${missing[*]} (lsinitramfs); check $overlay/etc/initramfs-tools/modules"
grep -qE '/(fsck\.ext4|e2fsck)$' "$work/initrd.list" || die "the initrd has no fsck.ext4 (lsinitramfs)"

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' -print -quit)
[ -n "$kernel" ] && [ -n "$initrd" ] || die "the root file system has no /boot/vmlinuz-* or /boot/initrd.img-*"
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
extract_vmlinux "$work/vmlinuz" "$work/vmlinux"

# The root partition: ext4 made from the directory (mke2fs -d), fixed UUID.
t0=$(now_ms)
part_mib=$((DISK_MIB - PART_START_MIB - PART_TAIL_MIB))
truncate -s "${part_mib}M" "$work/root.ext4"
mke2fs -q -F -t ext4 -U "$ROOT_FS_UUID" -L "$ROOT_FS_LABEL" -d "$root" "$work/root.ext4" "${part_mib}M" >&2 ||
    die "mke2fs failed"
got=$(blkid -p -o value -s UUID "$work/root.ext4") || die "blkid cannot read the new ext4 image"
[ "$got" = "$ROOT_FS_UUID" ] || die "the ext4 image's UUID is $got, not $ROOT_FS_UUID"
# What a reader of the disk (amivm image create --disk, a boot loader) looks for, read back by
# e2fsprogs' debugfs: the kernel and initrd in /boot and the root entry of /etc/fstab.
boot_ls=$(debugfs -R 'ls /boot' "$work/root.ext4" 2>/dev/null) || die "debugfs cannot list /boot"
for f in "$(basename "$kernel")" "$(basename "$initrd")"; do
    grep -qF "$f" <<<"$boot_ls" || die "/boot/$f is missing from the ext4 image"
done
[ "$(debugfs -R 'cat /etc/fstab' "$work/root.ext4" 2>/dev/null)" = "$AMIVM_FSTAB" ] ||
    die "/etc/fstab in the ext4 image is not '$AMIVM_FSTAB'"
# cloud-init and sshd: installed, configured for amivm's metadata service, no baked host keys.
for p in cloud-init openssh-server; do
    grep -q "^$p=" "$work/packages.list" || die "package $p is not installed (packages.list)"
done
debugfs -R 'cat /etc/cloud/cloud.cfg.d/90-amivm.cfg' "$work/root.ext4" 2>/dev/null | grep -q '^datasource_list: \[ Ec2' ||
    die "/etc/cloud/cloud.cfg.d/90-amivm.cfg is missing from the ext4 image"
! debugfs -R 'ls /etc/ssh' "$work/root.ext4" 2>/dev/null | grep -q ssh_host_ ||
    die "the ext4 image holds ssh host keys: every instance would share them"

# The disk: a sparse file with a GPT holding the one root partition, the ext4 image copied in.
truncate -s "${DISK_MIB}M" "$work/disk.img"
mib=$((1024 * 1024 / SECTOR))
sfdisk -q "$work/disk.img" >&2 <<EOF || die "sfdisk failed"
label: gpt
label-id: $DISK_GUID
unit: sectors
sector-size: $SECTOR
start=$((PART_START_MIB * mib)), size=$((part_mib * mib)), type=$ROOT_PART_TYPE, uuid=$ROOT_PART_GUID, name="root"
EOF
dd if="$work/root.ext4" of="$work/disk.img" bs=1M seek="$PART_START_MIB" conv=notrunc,sparse status=none ||
    die "dd failed"
sfdisk -d "$work/disk.img" | grep -qi "type=$ROOT_PART_TYPE" || die "the disk's GPT has no Linux root (x86-64) partition"
t_disk=$(since "$t0")

cat >"$work/info" <<EOF
suite=$SUITE
recipe_sha256_12=$recipe_hash
versions_sha256_12=$vers_hash
$(sed 's/^/candidate:/' <<<"$vers")
kernel=$(basename "$kernel")
initrd=$(basename "$initrd")
cmdline=$CMDLINE
root_fs_uuid=$ROOT_FS_UUID
root_part_type=$ROOT_PART_TYPE
disk_mib=$DISK_MIB
disk_allocated=$(du -k "$work/disk.img" | cut -f1)K
initrd_bytes=$(stat -c %s "$work/initrd.img")
mmdebstrap=$t_mmdebstrap
ext4_and_gpt=$t_disk
total=$(since "$t_all")
EOF
rm -rf "$root" "$work/overlay" "$work/overlay.tar" "$work/root.ext4"
rm -rf "$out"
mv "$out.tmp" "$out"
prune_builds "$base" "$out"
log "disk: ${DISK_MIB} MiB ($(du -h "$out/disk.img" | cut -f1) allocated), initrd $(du -h "$out/initrd.img" | cut -f1);" \
    "$(since "$t_all") in all"
emit "$out"
