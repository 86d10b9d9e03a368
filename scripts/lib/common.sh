# shellcheck shell=bash
# Shared helpers for amivm's shell scripts. Source it; it defines functions and a few variables only.
#
#   AMIVM_ROOT   the repository root (the parent of scripts/)
#   AMIVM_CACHE  the cache folder, ignored by git: $AMIVM_CACHE or <repo>/.cache
#
# Conventions: progress and errors go to stderr (prefixed with the script's name); stdout carries only
# the results a caller captures (paths, or KEY=VALUE lines).

AMIVM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
AMIVM_CACHE=${AMIVM_CACHE:-$AMIVM_ROOT/.cache}
AMIVM_SCRIPT=$(basename "$0")

log() { printf '%s: %s\n' "$AMIVM_SCRIPT" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$AMIVM_SCRIPT" "$*" >&2
    exit 1
}

# now_ms: milliseconds since the epoch (for the timings the scripts report).
now_ms() { date +%s%3N; }
# since MS: seconds elapsed since MS, with one decimal.
since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f s", (b - a) / 1000 }'; }

# sha256_of FILE...: one hash over the names and contents of the files, in the order given.
sha256_of() {
    local f
    for f in "$@"; do
        printf '%s\0' "${f#"$AMIVM_ROOT"/}"
        sha256sum <"$f"
    done | sha256sum | cut -c1-64
}

# apt_install PKG[=VERSION]...: installs, in ONE apt call, the packages that are missing (or installed at
# another version than the one asked for), if we are root; otherwise says what to run. One call lets apt
# solve for every package at once, so it never removes one we need to make room for another (installing
# qemu-system-x86 7.2 alone removed the machine image's qemu-utils 10.0 from backports). Downgrades are
# allowed only for packages pinned with =VERSION. Waits for the dpkg lock instead of failing.
apt_install() {
    local missing=()
    mapfile -t missing < <(apt_missing "$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
    fi
    log "installing with apt: ${missing[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 \
        --no-install-recommends --allow-downgrades "${missing[@]}" >&2
}

# apt_missing PKG[=VERSION]...: prints, one a line, those not installed (or installed at another version).
apt_missing() {
    local p name want have
    for p in "$@"; do
        name=${p%%=*}
        want=${p#"$name"}
        want=${want#=}
        have=$({ dpkg-query -W -f '${Status} ${Version}' "$name" 2>/dev/null || true; } |
            awk '$3 == "installed" { print $4 }')
        if [ -z "$have" ] || { [ -n "$want" ] && [ "$have" != "$want" ]; }; then printf '%s\n' "$p"; fi
    done
}

# qemu_packages: prints the QEMU packages to install, pinned to one version: the candidate of
# qemu-system-x86 (Debian's 7.2 on bookworm) for qemu-system-x86 and qemu-utils alike, so apt installs
# them together instead of removing a newer qemu-utils the machine image brought from backports.
# (Reads apt's lists as they are: run apt_update_once first when something is to be installed.)
qemu_packages() {
    local ver
    ver=$(apt_candidate qemu-system-x86)
    if [ -z "$ver" ]; then
        printf '%s\n' qemu-system-x86 qemu-utils
    else
        printf '%s\n' "qemu-system-x86=$ver" "qemu-utils=$ver"
    fi
}

# require_commands CMD...: fails with one clear line naming every command that is still missing.
require_commands() {
    local c lost=()
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || lost+=("$c"); done
    [ ${#lost[@]} -eq 0 ] || die "commands missing after installing packages: ${lost[*]}"
}

# need_tool CMD PKG: makes sure command CMD exists, installing package PKG when it does not.
need_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    apt_install "$2"
    command -v "$1" >/dev/null 2>&1 || die "command '$1' not found even after installing $2"
}

# apt_update_once: `apt-get update` at most once per process, and only when root.
AMIVM_APT_UPDATED=${AMIVM_APT_UPDATED:-}
apt_update_once() {
    [ -n "$AMIVM_APT_UPDATED" ] && return 0
    [ "$(id -u)" -eq 0 ] || return 0
    log "apt-get update"
    apt-get update -q -o DPkg::Lock::Timeout=600 >&2
    AMIVM_APT_UPDATED=1
    export AMIVM_APT_UPDATED
}

# apt_candidate PKG: the version apt would download for PKG, or nothing when apt does not know it.
apt_candidate() {
    LC_ALL=C apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

# apt_fetch PKG VERSION DIR: downloads PKG=VERSION's .deb into DIR (no install) unless it is already
# there; prints the .deb's path.
apt_fetch() {
    local pkg=$1 ver=$2 dir=$3 deb
    mkdir -p "$dir"
    # apt names the file PKG_VERSION_ARCH.deb with ':' in the version escaped as %3a.
    deb=$(find "$dir" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" -print -quit)
    if [ -z "$deb" ]; then
        log "downloading $pkg=$ver"
        # apt-get download writes into the current directory. As root it drops privileges to the _apt
        # user, who may not be able to write DIR: download into a world-writable temporary dir first.
        local tmp
        tmp=$(mktemp -d)
        chmod 777 "$tmp"
        (cd "$tmp" && apt-get download -q "$pkg=$ver" >&2) || {
            rm -rf "$tmp"
            die "apt-get download $pkg=$ver failed"
        }
        mv "$tmp"/*.deb "$dir"/
        rmdir "$tmp"
        deb=$(find "$dir" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" -print -quit)
    fi
    [ -n "$deb" ] || die "no .deb for $pkg=$ver in $dir"
    printf '%s\n' "$deb"
}

# link_stable LINK TARGET: points the relative symlink LINK at TARGET (atomically).
link_stable() {
    local link=$1 target=$2
    ln -sfn "$(realpath --relative-to="$(dirname "$link")" "$target")" "$link.tmp$$"
    mv -Tf "$link.tmp$$" "$link"
}

# prune_builds BASE CURRENT [KEEP]: removes all but the KEEP (default 3) most recent build folders
# (BASE/*, not src-*/obj-*/*.tmp) other than CURRENT, so the cache does not grow without bound.
prune_builds() {
    local base=$1 current=$2 keep=${3:-3} d
    find "$base" -mindepth 1 -maxdepth 1 -type d ! -name 'src-*' ! -name 'obj-*' ! -name '*.tmp' \
        ! -path "$current" -printf '%T@ %p\n' 2>/dev/null | sort -rn | tail -n +"$keep" | cut -d' ' -f2- |
        while IFS= read -r d; do
            log "removing the old build $d"
            rm -rf "$d"
        done
}

# ensure_rust: makes cargo available: the user's rustup install if there is one, else installs rustup
# (stable, minimal profile + clippy, rustfmt) from rustup.rs.
ensure_rust() {
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    command -v cargo >/dev/null 2>&1 && return 0
    command -v curl >/dev/null 2>&1 || apt_install ca-certificates curl
    log "no cargo: installing Rust with rustup (stable, minimal profile + clippy, rustfmt)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y -q --profile minimal --component clippy,rustfmt >&2
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
}

# The test guest's gcc flags: the same as GUEST_CFLAGS in tests/common/mod.rs (freestanding, integer-only code
# that KVM's instruction emulator runs, linked by tests/guest/guest.ld at 1 MiB). Keep the two lists alike.
AMIVM_GUEST_CFLAGS=(-ffreestanding -nostdlib -mgeneral-regs-only -mno-red-zone -fno-pic -no-pie -static -O2
    -fno-stack-protector -fcf-protection=none -fno-asynchronous-unwind-tables
    -fno-tree-loop-distribute-patterns -fno-delete-null-pointer-checks -Wall -Wextra -Wno-array-bounds
    -Wl,--build-id=none -Wl,-z,noexecstack -Wl,-z,max-page-size=0x1000)

# build_test_guest OUT: builds the tiny test guest (tests/guest/*.c and *.S) into the ELF file OUT, as the
# tests do; a real x86-64 ELF kernel that boots and leaves at once (exit_code= on its command line).
build_test_guest() {
    local out=$1 dir=$AMIVM_ROOT/tests/guest
    command -v gcc >/dev/null 2>&1 || die "gcc is missing (apt-get install gcc): it builds the test guest"
    gcc "${AMIVM_GUEST_CFLAGS[@]}" -T "$dir/guest.ld" -o "$out" "$dir"/*.c "$dir"/*.S ||
        die "building the test guest (tests/guest) failed"
}

# amivm_bin: prints the amivm binary to use: $AMIVM when set, else the release build in target/,
# built (installing Rust if needed) when it is missing or older than the sources.
amivm_bin() {
    if [ -n "${AMIVM:-}" ]; then
        printf '%s\n' "$AMIVM"
        return 0
    fi
    local bin=${CARGO_TARGET_DIR:-$AMIVM_ROOT/target}/release/amivm
    if [ ! -x "$bin" ] || [ -n "$(find "$AMIVM_ROOT/src" "$AMIVM_ROOT/Cargo.toml" "$AMIVM_ROOT/data" \
        -newer "$bin" -print -quit 2>/dev/null)" ]; then
        ensure_rust
        log "building amivm (cargo build --release)"
        (cd "$AMIVM_ROOT" && cargo build --release --quiet --bin amivm) >&2 || die "cargo build failed"
    fi
    printf '%s\n' "$bin"
}
