#!/usr/bin/env bash
# Builds the sample AMI's micro-VM kernel: Debian's linux-source-6.1, `make tinyconfig`, plus
# images/sample/kernel.config; outputs an uncompressed vmlinux ELF and prints its path.
#
# Usage: images/sample/build-kernel.sh [--env]
#   --env   print AMIVM_SAMPLE_VMLINUX=PATH instead of the bare path
#
# Cached under .cache/sample-kernel/<source version>-<fragment hash>/, so a rebuild happens only when the
# fragment, the recipe version below or the Debian source version changes. The newest build is also at
# the stable path .cache/sample/vmlinux. Without Debian apt sources, the newest cached build of the same
# fragment is used (with a warning).
#
# Environment: AMIVM_CACHE (default <repo>/.cache); AMIVM_JOBS (make -j, default 2); AMIVM_NICE (default
# 19); AMIVM_KEEP_KERNEL_BUILD=1 keeps the unpacked source and object tree (1.5 GB + ~100 MB) for
# faster iteration on the fragment.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../scripts/lib/common.sh
. "$here/../../scripts/lib/common.sh"
# shellcheck source=../../scripts/lib/bzimage.sh
. "$here/../../scripts/lib/bzimage.sh"

# Bump when the build steps change in a way that changes the kernel (part of the cache key).
readonly RECIPE_VERSION=1
readonly SRC_PKG=linux-source-6.1
readonly FRAGMENT="$here/kernel.config"
readonly BUILD_DEPS=(gcc make libc6-dev bc bison flex libelf-dev libssl-dev xz-utils)

env_out=false
case ${1:-} in
--env) env_out=true ;;
"") ;;
*) die "unknown argument '$1' (usage: $0 [--env])" ;;
esac

base="$AMIVM_CACHE/sample-kernel"
stable="$AMIVM_CACHE/sample/vmlinux"
hash=$( (echo "recipe $RECIPE_VERSION" && cat "$FRAGMENT") | sha256sum | cut -c1-12)

emit() {
    if $env_out; then printf 'AMIVM_SAMPLE_VMLINUX=%q\n' "$1"; else printf '%s\n' "$1"; fi
}
use() { # use DIR: make DIR's vmlinux the current one and print it
    mkdir -p "$(dirname "$stable")"
    [ "$(readlink "$stable" 2>/dev/null)" = "$(realpath --relative-to="$(dirname "$stable")" "$1/vmlinux")" ] ||
        link_stable "$stable" "$1/vmlinux"
    emit "$(realpath -s "$stable")"
}

# Which source: the installed package's tarball, else the version apt would download.
tarball=
ver=$(dpkg-query -W -f '${Status} ${Version}' "$SRC_PKG" 2>/dev/null | sed -n 's/^install ok installed //p' || true)
if [ -n "$ver" ] && [ -f "/usr/src/$SRC_PKG.tar.xz" ]; then
    tarball="/usr/src/$SRC_PKG.tar.xz"
else
    ver=$(apt_candidate "$SRC_PKG")
    if [ -z "$ver" ] && [ -z "$(find "$base" -maxdepth 1 -name "*-$hash" 2>/dev/null)" ]; then
        apt_update_once
        ver=$(apt_candidate "$SRC_PKG")
    fi
fi
if [ -z "$ver" ]; then
    cached=$(find "$base" -maxdepth 2 -path "*-$hash/vmlinux" -printf '%T@ %h\n' 2>/dev/null | sort -rn | head -1 | cut -d' ' -f2- || true)
    [ -n "$cached" ] || die "apt does not know $SRC_PKG: this needs Debian 12 apt sources (run 'apt-get update' as root)"
    log "warning: apt does not know $SRC_PKG; using the cached build $(basename "$cached")"
    use "$cached"
    exit 0
fi

out="$base/${ver//:/%3a}-$hash"
if [ -f "$out/vmlinux" ] && [ -f "$out/info" ]; then
    use "$out"
    exit 0
fi

need_tool nice coreutils
apt_install "${BUILD_DEPS[@]}"
src="$base/src-${ver//:/%3a}"
obj="$base/obj-${ver//:/%3a}-$hash"
t_all=$(now_ms)
if [ ! -f "$src/.unpacked" ]; then
    t0=$(now_ms)
    rm -rf "$src"
    mkdir -p "$src"
    if [ -n "$tarball" ]; then
        log "unpacking $tarball ($SRC_PKG $ver, installed)"
        nice -n "${AMIVM_NICE:-19}" tar -xJf "$tarball" -C "$src" --strip-components=1
    else
        deb=$(apt_fetch "$SRC_PKG" "$ver" "$AMIVM_CACHE/debs")
        log "download: $(since "$t0")"
        log "unpacking $SRC_PKG $ver"
        dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$SRC_PKG.tar.xz" |
            nice -n "${AMIVM_NICE:-19}" tar -xJ -C "$src" --strip-components=1
    fi
    touch "$src/.unpacked"
    log "source ready: $(since "$t0")"
fi

# Object trees of other fragments or versions are stale.
find "$base" -maxdepth 1 \( -name 'obj-*' -o -name 'src-*' \) ! -name "$(basename "$obj")" \
    ! -name "$(basename "$src")" -exec rm -rf {} +
rm -rf "$obj"
mkdir -p "$obj"
log "configuring: tinyconfig + $(realpath --relative-to="$AMIVM_ROOT" "$FRAGMENT")"
mk() { nice -n "${AMIVM_NICE:-19}" make -C "$src" O="$obj" "$@" >>"$obj/build.log" 2>&1; }
mk tinyconfig || die "make tinyconfig failed: see $obj/build.log"
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$FRAGMENT" >>"$obj/build.log" 2>&1 ||
    die "merge_config.sh failed: see $obj/build.log"
mk olddefconfig || die "make olddefconfig failed: see $obj/build.log"

# Every line of the fragment must hold in the final .config: Kconfig silently drops options whose
# dependencies are not met.
bad=0
while IFS= read -r line; do
    case $line in
    CONFIG_*=*) want=$line ;;
    "# CONFIG_"*" is not set") want=$line ;;
    *) continue ;;
    esac
    opt=${want#\# }
    opt=${opt%%[= ]*}
    have=$(grep -E "^(# )?${opt}[= ]" "$obj/.config" || true)
    if [ "$want" != "$have" ] && ! { [[ $want == "# "* ]] && [ -z "$have" ]; }; then
        log "config mismatch: wanted '$want', got '${have:-<absent>}'"
        bad=1
    fi
done <"$FRAGMENT"
[ $bad -eq 0 ] || die "the config fragment does not apply to $SRC_PKG $ver (dependencies?)"

jobs=${AMIVM_JOBS:-2}
log "building vmlinux: make -j$jobs under nice -n ${AMIVM_NICE:-19} (log: $obj/build.log)"
t0=$(now_ms)
if ! mk -j"$jobs" vmlinux; then
    tail -n 30 "$obj/build.log" >&2
    die "kernel build failed: see $obj/build.log"
fi
t_build=$(since "$t0")
log "build: $t_build"

elf_x86_64_check "$obj/vmlinux"
pvh=no
elf_has_pvh_note "$obj/vmlinux" && pvh=yes
[ $pvh = yes ] || die "$obj/vmlinux has no PVH note although CONFIG_PVH=y"

rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$obj/vmlinux" "$obj/.config" "$obj/System.map" "$out.tmp/"
mv "$out.tmp/.config" "$out.tmp/config"
cat >"$out.tmp/info" <<EOF
source_package=$SRC_PKG
source_version=$ver
kernel_release=$(cat "$obj/include/config/kernel.release")
fragment_sha256_12=$hash
recipe_version=$RECIPE_VERSION
vmlinux_bytes=$(stat -c %s "$obj/vmlinux")
pvh_note=$pvh
build=$t_build (make -j$jobs)
total=$(since "$t_all")
EOF
rm -rf "$out"
mv "$out.tmp" "$out"
prune_builds "$base" "$out"
if [ "${AMIVM_KEEP_KERNEL_BUILD:-0}" != 1 ]; then
    rm -rf "$obj" "$src"
    rm -f "$AMIVM_CACHE/debs/${SRC_PKG}_"*.deb
fi
log "vmlinux: $(stat -c %s "$out/vmlinux") bytes, PVH note: $pvh; total $(since "$t_all")"
use "$out"
