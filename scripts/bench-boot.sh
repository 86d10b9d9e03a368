#!/usr/bin/env bash
# Launch-to-exit of the test guest: amivm boot vs QEMU microvm vs a floor (examples/kvm_floor.rs:
# only what any VMM must do), several runs each, interleaved; medians of wall time and peak RSS,
# and the ratios. amivm runs three ways in the same loop: as shipped (seccomp filters, Landlock,
# limits), with --no-seccomp, and with --jail; each is compared to the floor and to the others.
# Usage: scripts/bench-boot.sh [RUNS] (default 10).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
runs=${1:-10}
cd "$AMIVM_ROOT"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"

log "building amivm and the floor (release)"
cargo build --release --quiet --bin amivm --example kvm_floor
target=${CARGO_TARGET_DIR:-$AMIVM_ROOT/target}
amivm=$target/release/amivm
floor=$target/release/examples/kvm_floor

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
guest=$work/guest.elf
build_test_guest "$guest"
append="console=ttyS0 exit_code=0"

# run NAME CMD...: one run; appends "wall_ms rss_kib" to $work/NAME.
run() {
    local name=$1
    shift
    local t0 t1 rss
    t0=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$work/rss" "$@" >/dev/null 2>&1 || true
    t1=$(date +%s%N)
    rss=$(tail -n 1 "$work/rss")
    echo "$(((t1 - t0) / 1000)) $rss" >>"$work/$name"
}

for _ in $(seq "$runs"); do
    run amivm "$amivm" boot --kernel "$guest" --cmdline "$append"
    run nofilter "$amivm" boot --kernel "$guest" --cmdline "$append" --no-seccomp
    run jail "$amivm" boot --kernel "$guest" --cmdline "$append" --jail
    run qemu qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,acpi=off -enable-kvm \
        -cpu qemu64,-xsave,-cx16 -m 128 -nographic -no-reboot -kernel "$guest" -append "$append" \
        -device isa-debug-exit,iobase=0xf4,iosize=1
    run floor "$floor" "$guest" "$append"
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '%-8s %14s %14s   (median of %s runs, %s)\n' vmm "wall ms" "peak RSS MiB" "$runs" "$(date -u +%F)"
declare -A wall rss
for n in amivm nofilter jail qemu floor; do
    wall[$n]=$(cut -d' ' -f1 "$work/$n" | median | awk '{ printf "%.1f", $1 / 1000 }')
    rss[$n]=$(cut -d' ' -f2 "$work/$n" | median | awk '{ printf "%.1f", $1 / 1024 }')
    printf '%-8s %14s %14s\n' "$n" "${wall[$n]}" "${rss[$n]}"
done
awk -v a="${wall[amivm]}" -v q="${wall[qemu]}" -v f="${wall[floor]}" -v ra="${rss[amivm]}" -v rq="${rss[qemu]}" -v rf="${rss[floor]}" 'BEGIN {
    printf "wall: QEMU/amivm = %.2fx faster, amivm/floor = %.2f (goal <= 1.15)\n", q / a, a / f
    printf "RSS:  QEMU/amivm = %.1fx smaller, amivm - floor = %.1f MiB\n", rq / ra, ra - rf
}'
awk -v a="${wall[amivm]}" -v n="${wall[nofilter]}" -v j="${wall[jail]}" -v f="${wall[floor]}" 'BEGIN {
    printf "seccomp: amivm/--no-seccomp = %.2f, --no-seccomp/floor = %.2f\n", a / n, n / f
    printf "jail:    --jail/amivm = %.2f, --jail/floor = %.2f (goal <= 1.15)\n", j / a, j / f
}'
