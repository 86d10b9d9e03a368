#!/usr/bin/env bash
# Downloads Debian's current cloud kernel (the package behind the metapackage linux-image-cloud-amd64)
# with apt, without installing it, unpacks it under .cache/debian-kernel/ and extracts an uncompressed
# vmlinux ELF from its bzImage. Prints the vmlinux's path on stdout.
#
# Usage: scripts/fetch-debian-kernel.sh [--env]
#   --env   print AMIVM_DEBIAN_VMLINUX=PATH (and AMIVM_DEBIAN_KERNEL_VERSION=...) instead of the bare path
#
# Cached: a second run only asks apt which version is current (well under a second). When apt cannot
# tell (no Debian sources, no network for `apt-get update`), the last extracted kernel is used with a
# warning. The newest result is also reachable at the stable path .cache/debian-kernel/vmlinux.
#
# Environment: AMIVM_CACHE (default <repo>/.cache), AMIVM_DEBIAN_KERNEL_META (default
# linux-image-cloud-amd64).
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/bzimage.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/bzimage.sh"

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

meta=${AMIVM_DEBIAN_KERNEL_META:-linux-image-cloud-amd64}
base="$AMIVM_CACHE/debian-kernel"
stable="$base/vmlinux"

emit() { # emit VMLINUX INFO_DIR
    if $env_out; then
        printf 'AMIVM_DEBIAN_VMLINUX=%q\n' "$1"
        printf 'AMIVM_DEBIAN_KERNEL_VERSION=%q\n' "$(sed -n 's/^package_version=//p' "$2/info")"
    else
        printf '%s\n' "$1"
    fi
}

# resolve: "PKG VERSION" of the real kernel package behind the metapackage, or nothing.
resolve() {
    local pkg
    pkg=$(LC_ALL=C apt-cache show --no-all-versions "$meta" 2>/dev/null |
        sed -n 's/^Depends: //p' | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -m1 '^linux-image-') || true
    [ -n "$pkg" ] || return 0
    echo "$pkg $(apt_candidate "$pkg")"
}

read -r pkg ver < <(resolve) || true
if [ -z "${pkg:-}" ] || [ -z "${ver:-}" ]; then
    apt_update_once
    read -r pkg ver < <(resolve) || true
fi
if [ -z "${pkg:-}" ] || [ -z "${ver:-}" ]; then
    if [ -e "$stable" ]; then
        log "warning: apt does not know $meta (no Debian sources?); using the cached $(readlink "$stable")"
        emit "$(realpath -s "$stable")" "$(dirname "$(realpath "$stable")")"
        exit 0
    fi
    die "apt does not know $meta: this needs Debian 12 apt sources (run 'apt-get update' as root)"
fi

dir="$base/${pkg}_${ver//:/%3a}"
if [ -f "$dir/info" ] && [ -f "$dir/vmlinux" ]; then
    [ "$(readlink "$stable" 2>/dev/null)" = "$(basename "$dir")/vmlinux" ] || link_stable "$stable" "$dir/vmlinux"
    emit "$(realpath -s "$stable")" "$dir"
    exit 0
fi

log "$meta → $pkg $ver"
t0=$(now_ms)
deb=$(apt_fetch "$pkg" "$ver" "$AMIVM_CACHE/debs")
t_download=$(since "$t0")
log "download: $t_download ($(du -h "$deb" | cut -f1))"

t0=$(now_ms)
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
dpkg-deb -x "$deb" "$dir.tmp/root"
t_unpack=$(since "$t0")
log "dpkg-deb -x: $t_unpack"

bz=$(find "$dir.tmp/root/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)
[ -n "$bz" ] || die "$deb has no /boot/vmlinuz-*"
t0=$(now_ms)
extract_vmlinux "$bz" "$dir.tmp/vmlinux"
t_extract=$(since "$t0")
pvh=no
elf_has_pvh_note "$dir.tmp/vmlinux" && pvh=yes
log "vmlinux: $(stat -c %s "$dir.tmp/vmlinux") bytes, x86-64 ELF, PVH note: $pvh; extraction $t_extract"

cat >"$dir.tmp/info" <<EOF
metapackage=$meta
package=$pkg
package_version=$ver
bzimage=root/boot/$(basename "$bz")
payload=$BZ_PAYLOAD_FORMAT
vmlinux_bytes=$(stat -c %s "$dir.tmp/vmlinux")
pvh_note=$pvh
download=$t_download
unpack=$t_unpack
extract=$t_extract
EOF
rm -rf "$dir"
mv "$dir.tmp" "$dir"
# The .deb is no longer needed: the unpacked tree has everything, and the cache stays smaller.
rm -f "$deb"
link_stable "$stable" "$dir/vmlinux"
emit "$(realpath -s "$stable")" "$dir"
