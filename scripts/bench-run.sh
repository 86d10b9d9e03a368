#!/usr/bin/env bash
# Benchmarks of amivm's instances (issue 5). Not a test: it prints figures, medians and ratios against a
# baseline measured in the same run.
#
#  1. `amivm run` latency (launch to exit, the test guest leaving at once) from a 1 GiB vs a 32 GiB root
#     snapshot (both sparse raw files): an instance's volume is a copy-on-write overlay, so the size
#     should not matter. Goal: within 10 %.
#  2. `amivm create-image` after the instance wrote 16 MiB (32 x 512 KiB, spread over the volume) to an
#     8 GiB volume holding BASE_DATA_MIB of data, vs `cp --sparse=always` of the whole raw volume (the
#     copy fsynced, as create-image's commit is). Goal: >= 20x faster.
#  3. 20 `amivm run`s of one AMI started at once: total wall time and each run's latency, against the
#     single-run latency of part 1.
#
# Usage: scripts/bench-run.sh [--runs N]     (default 7 repetitions; medians are reported)
# Environment: AMIVM (default target/release/amivm, built with cargo if missing), BASE_DATA_MIB (1024),
# PARTS (which parts to run, default "1 2 3"; part 3 compares with part 1's single-run latency),
# TMPDIR (where the store and volumes go: needs ~3 x BASE_DATA_MIB free).
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

runs=7
while [ $# -gt 0 ]; do
    case $1 in
    --runs)
        [ $# -ge 2 ] || die "--runs needs a value"
        runs=$2
        shift
        ;;
    *) die "unknown argument '$1' (usage: $0 [--runs N])" ;;
    esac
    shift
done
base_mib=${BASE_DATA_MIB:-1024}
parts=" ${PARTS:-1 2 3} "
part() { [[ $parts == *" $1 "* ]]; }
# Parallel runs in part 3.
readonly PARALLEL=20
# The instance's writes in part 2: 32 writes of 1024 sectors (512 KiB, one store chunk each), 256 MiB
# apart: 16 MiB in all, spread over the 8 GiB volume.
readonly WRITES=32 WRITE_SECTORS=1024 WRITE_STRIDE_SECTORS=$((256 * 2048))

amivm=$(amivm_bin)

work=$(mktemp -d "${TMPDIR:-/tmp}/amivm-bench-run.XXXXXX")
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
export AMIVM_HOME=$work/store
unset AMIVM_ACCOUNT

# The test guest (tests/guest), built as the tests build it.
guest=$work/guest.elf
build_test_guest "$guest"

# usec: microseconds since the epoch, without a subprocess.
usec() { echo "${EPOCHREALTIME/./}"; }
# median: the median of the numbers on stdin.
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# ms MICROSECONDS: as milliseconds with one decimal.
ms() { awk -v u="$1" 'BEGIN { printf "%.1f", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# timed CMD...: run it quietly and print its wall time in microseconds; a failure is fatal.
timed() {
    local t0 t1
    t0=$(usec)
    "$@" >/dev/null 2>"$work/err" || die "$* failed: $(tail -n1 "$work/err")"
    t1=$(usec)
    echo $((t1 - t0))
}

log "amivm: $amivm; runs: $runs; store: $AMIVM_HOME"
log "host: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), KVM $(grep -qwE 'vmx|svm' /proc/cpuinfo && echo hardware || echo 'without VT-x/AMD-V (instruction emulator)')"

# --- 1. run latency: 1 GiB vs 32 GiB root snapshot --------------------------------------------------
truncate -s 1G "$work/root1.raw"
truncate -s 32G "$work/root32.raw"
"$amivm" image create --name bench-1g --kernel "$guest" --root "$work/root1.raw" >/dev/null
"$amivm" image create --name bench-32g --kernel "$guest" --root "$work/root32.raw" >/dev/null
rm -f "$work/root1.raw" "$work/root32.raw"
run_once() { timed "$amivm" run "$1" --rm --timeout 60 --append exit_code=0; }
m1=""
if part 1 || part 3; then
    run_once bench-1g >/dev/null # warm-up (page cache, KVM module state)
    : >"$work/t1"
    : >"$work/t32"
    for _ in $(seq "$runs"); do
        run_once bench-1g >>"$work/t1"
        run_once bench-32g >>"$work/t32"
    done
    m1=$(median <"$work/t1")
    m32=$(median <"$work/t32")
    echo "run latency, 1 GiB root snapshot:   median $(ms "$m1") ms  (runs: $(tr '\n' ' ' <"$work/t1" | awk '{ for (i = 1; i <= NF; i++) printf "%.1f ", $i / 1000 }')ms)"
    echo "run latency, 32 GiB root snapshot:  median $(ms "$m32") ms  (runs: $(tr '\n' ' ' <"$work/t32" | awk '{ for (i = 1; i <= NF; i++) printf "%.1f ", $i / 1000 }')ms)"
    echo "  32 GiB / 1 GiB: $(ratio "$m32" "$m1") (goal <= 1.10)"
fi

# --- 2. create-image after 16 MiB written to an 8 GiB volume vs cp --sparse=always ------------------
if part 2; then
    log "making an 8 GiB volume with $base_mib MiB of data"
    vol=$work/vol8.raw
    truncate -s 8G "$vol"
    if [ "$base_mib" -gt 0 ]; then
        dd if=/dev/urandom of="$vol" bs=1M count="$base_mib" conv=notrunc status=none
fi
t=$(timed "$amivm" image create --name bench-8g --kernel "$guest" --root "$vol")
log "image create of the 8 GiB volume took $(ms "$t") ms"
words=""
for i in $(seq 0 $((WRITES - 1))); do
    words+="blk=write:$((i * WRITE_STRIDE_SECTORS)):$WRITE_SECTORS:$((i + 1)) "
done
log "the instance writes 16 MiB (under KVM's emulator this takes ~25 s)"
out=$("$amivm" run bench-8g --timeout 600 --append "${words}blk=flush" 2>&1) || die "the writing instance failed"
id=$(sed -n 's/^amivm: instance \(i-[0-9a-f]*\) .*/\1/p' <<<"$out" | head -n1)
[ "$(grep -c 'blk write .*status=0' <<<"$out")" -eq "$WRITES" ] || die "the guest's writes failed: $out"
# The raw equivalent of the instance's volume, for cp: the base plus the same 16 MiB.
for i in $(seq 0 $((WRITES - 1))); do
    dd if=/dev/urandom of="$vol" bs=512 seek=$((i * WRITE_STRIDE_SECTORS)) count=$WRITE_SECTORS \
        conv=notrunc status=none
done
: >"$work/tci"
: >"$work/tcp"
first=""
for n in $(seq "$runs"); do
    t=$(timed "$amivm" create-image "$id" --name "bench-ci-$n")
    [ -n "$first" ] || first=$t
    echo "$t" >>"$work/tci"
    t0=$(usec)
    cp --sparse=always "$vol" "$work/copy.raw"
    sync "$work/copy.raw"
    t1=$(usec)
    echo $((t1 - t0)) >>"$work/tcp"
    rm -f "$work/copy.raw"
done
mci=$(median <"$work/tci")
mcp=$(median <"$work/tcp")
echo "create-image (16 MiB written, 8 GiB volume, $base_mib MiB base data): median $(ms "$mci") ms (first, storing the new chunks: $(ms "$first") ms)"
echo "cp --sparse=always + fsync of the whole raw volume:                 median $(ms "$mcp") ms"
echo "  cp / create-image: $(ratio "$mcp" "$mci")x (goal >= 20x)"
fi

# --- 3. 20 parallel runs of one AMI ------------------------------------------------------------------
if part 3; then
    : >"$work/tpar"
    : >"$work/teach"
    for _ in $(seq "$runs"); do
        t0=$(usec)
        for i in $(seq "$PARALLEL"); do
            (
                s=$(usec)
                "$amivm" run bench-1g --rm --timeout 120 --append exit_code=0 >/dev/null 2>"$work/par-$i.err" ||
                    echo "FAIL $i" >>"$work/par-fail"
                echo $(($(usec) - s)) >>"$work/teach"
            ) &
        done
        wait
        echo $(($(usec) - t0)) >>"$work/tpar"
    done
    [ ! -s "$work/par-fail" ] || die "parallel runs failed: $(cat "$work/par-fail"); $(cat "$work"/par-*.err | tail -n 3)"
    mpar=$(median <"$work/tpar")
    meach=$(median <"$work/teach")
    echo "$PARALLEL parallel runs: all succeeded; total wall median $(ms "$mpar") ms; each run median $(ms "$meach") ms"
    echo "  total / single run: $(ratio "$mpar" "$m1")x for ${PARALLEL}x the work ($(nproc) CPUs); per run: $(ratio "$meach" "$m1")x a lone run"
fi
