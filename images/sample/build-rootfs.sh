#!/usr/bin/env bash
# Builds the sample AMI's root file system from Debian's busybox-static and the skeleton in
# images/sample/rootfs/ (init, amivm-exit, /etc). Prints the paths of the directory and of an ext4 image
# of it (for booting it with QEMU or `amivm boot` without the image store: boot a copy, since the guest
# mounts its root read-write).
#
# Usage: images/sample/build-rootfs.sh [--env]
#   default: two lines, the rootfs directory then the ext4 image
#   --env:   AMIVM_SAMPLE_ROOTFS=DIR and AMIVM_SAMPLE_ROOTFS_EXT4=FILE
#
# Cached under .cache/sample-rootfs/<busybox version>-<skeleton hash>/; the newest build is also at the
# stable paths .cache/sample/rootfs/ and .cache/sample/rootfs.ext4. busybox comes from the installed
# busybox-static package when there is one, else from `apt-get download busybox-static`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../scripts/lib/common.sh
. "$here/../../scripts/lib/common.sh"

# Bump when the steps below change what ends up in the rootfs (part of the cache key).
readonly RECIPE_VERSION=1
readonly SKELETON="$here/rootfs"
# Size of the ext4 image: busybox is ~2 MB; room left for smoke scripts and what they write.
readonly EXT4_SIZE=64M

env_out=false
case ${1:-} in
--env) env_out=true ;;
"") ;;
*) die "unknown argument '$1' (usage: $0 [--env])" ;;
esac

base="$AMIVM_CACHE/sample-rootfs"
stable_dir="$AMIVM_CACHE/sample/rootfs"
stable_img="$AMIVM_CACHE/sample/rootfs.ext4"

emit() { # emit DIR IMG
    if $env_out; then
        printf 'AMIVM_SAMPLE_ROOTFS=%q\nAMIVM_SAMPLE_ROOTFS_EXT4=%q\n' "$1" "$2"
    else
        printf '%s\n%s\n' "$1" "$2"
    fi
}
use() { # use OUT: make OUT the current build and print its stable paths
    mkdir -p "$(dirname "$stable_dir")"
    link_stable "$stable_dir" "$1/rootfs"
    link_stable "$stable_img" "$1/rootfs.ext4"
    emit "$(realpath -s "$stable_dir")" "$(realpath -s "$stable_img")"
}

# The skeleton's hash covers the names, executable bits and contents of its files and symlinks: what
# git keeps (not other mode bits, which follow the umask of the checkout, nor empty directories).
# The build normalises modes to match.
skel_hash=$(
    cd "$SKELETON"
    echo "recipe $RECIPE_VERSION"
    find . \( -type f -o -type l \) -printf '%p %y\n' | LC_ALL=C sort
    echo "executable:"
    find . -type f -perm -u+x | LC_ALL=C sort
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
) || die "cannot read $SKELETON"
skel_hash=$(printf '%s' "$skel_hash" | sha256sum | cut -c1-12)

bb_ver=$(dpkg-query -W -f '${Status} ${Version}' busybox-static 2>/dev/null |
    sed -n 's/^install ok installed //p' || true)
bb_bin=/bin/busybox
if [ -z "$bb_ver" ]; then
    bb_bin=
    bb_ver=$(apt_candidate busybox-static)
    if [ -z "$bb_ver" ]; then
        apt_update_once
        bb_ver=$(apt_candidate busybox-static)
    fi
fi
if [ -z "$bb_ver" ]; then
    cached=$(find "$base" -maxdepth 2 -path "*-$skel_hash/rootfs.ext4" -printf '%T@ %h\n' 2>/dev/null |
        sort -rn | head -1 | cut -d' ' -f2- || true)
    [ -n "$cached" ] || die "no busybox-static installed and apt does not know it (run 'apt-get update' as root)"
    log "warning: apt does not know busybox-static; using the cached build $(basename "$cached")"
    use "$cached"
    exit 0
fi

out="$base/${bb_ver//:/%3a}-$skel_hash"
if [ -f "$out/rootfs.ext4" ] && [ -d "$out/rootfs" ]; then
    use "$out"
    exit 0
fi

t0=$(now_ms)
need_tool mkfs.ext4 e2fsprogs
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
if [ -z "$bb_bin" ]; then
    deb=$(apt_fetch busybox-static "$bb_ver" "$AMIVM_CACHE/debs")
    dpkg-deb -x "$deb" "$out.tmp/bb"
    bb_bin="$out.tmp/bb/bin/busybox"
fi
# busybox-static is linked statically: nothing else (libc, loader) has to be copied into the rootfs.
[ "$(od -An -t x1 -N 4 "$bb_bin" | tr -d ' \n')" = 7f454c46 ] || die "$bb_bin is not an ELF binary"

r="$out.tmp/rootfs"
mkdir -p "$r"
cp -a "$SKELETON/." "$r/"
find "$r" -type d -exec chmod 0755 {} +
find "$r" -type f -perm -u+x -exec chmod 0755 {} +
find "$r" -type f ! -perm -u+x -exec chmod 0644 {} +
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,var,mnt,etc/amivm/smoke.d}
chmod 1777 "$r/tmp"
chmod 0700 "$r/root"
install -m 0755 "$bb_bin" "$r/bin/busybox"
# One symlink per applet, where busybox --install would put it; the skeleton's own files win.
"$bb_bin" --list-full | while read -r applet; do
    [ -e "$r/$applet" ] || [ -L "$r/$applet" ] || ln -s /bin/busybox "$r/$applet"
done
# For the rootfs packed as an initramfs, where the kernel runs /init.
ln -sfn sbin/init "$r/init"
cat >"$r/etc/amivm/build-info" <<EOF
busybox_static=$bb_ver
skeleton_sha256_12=$skel_hash
recipe_version=$RECIPE_VERSION
EOF
rm -rf "$out.tmp/bb"

# -d copies the tree in without root or a loop mount; root_owner makes / root's even for a user build.
mkfs.ext4 -q -F -L amivm-root -E root_owner=0:0 -d "$r" "$out.tmp/rootfs.ext4" "$EXT4_SIZE" >/dev/null ||
    die "mkfs.ext4 failed"
rm -rf "$out"
mv "$out.tmp" "$out"
prune_builds "$base" "$out"
log "rootfs: busybox-static $bb_ver, $(du -sh "$out/rootfs" | cut -f1) ($(find "$out/rootfs" | wc -l) entries)," \
    "ext4 $EXT4_SIZE; $(since "$t0")"
use "$out"
