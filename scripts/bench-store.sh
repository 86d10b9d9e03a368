#!/usr/bin/env bash
# Benchmark of the image store (issue 4). Not a timed test: it prints figures.
#
#   scripts/bench-store.sh [RUNS]          (default 9 runs; medians are reported)
#
# - `amivm image create` from a 2 GiB sparse raw file holding 10 % non-zero data, against the
#   baseline `cp --sparse=always` of the same file (and cp followed by `sync`, since
#   `image create` makes its data durable before it commits);
# - `amivm image copy` of that image;
# - store growth after a second, identical `image create`.
#
# Environment: AMIVM (default: target/release/amivm, built when older than the sources; AMIVM_BIN is
# read too), BENCH_DIR (where the scratch directory goes, default $TMPDIR or /tmp: put it on the file
# system under test; it needs about 3 RUNS + 1 times the data, 5.8 GiB by default), SIZE_MIB (2048),
# DATA_PERCENT (10).
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

RUNS=${1:-9}
SIZE_MIB=${SIZE_MIB:-2048}
DATA_PERCENT=${DATA_PERCENT:-10}

AMIVM=${AMIVM:-${AMIVM_BIN:-}}
AMIVM_BIN=$(amivm_bin)
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/amivm-bench-store.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
store_kib() { du -sk "$1" | cut -f1; }

echo "== setup: ${SIZE_MIB} MiB sparse raw file, ${DATA_PERCENT}% non-zero (1 MiB extents of random data)"
SRC=$WORK/disk.raw
python3 - "$SRC" "$SIZE_MIB" "$DATA_PERCENT" <<'EOF'
import os, sys
path, size_mib, pct = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mib = 1 << 20
with open(path, "wb") as f:
    f.truncate(size_mib * mib)
    step = max(1, round(100 / pct))          # one 1 MiB extent every `step` MiB
    for m in range(0, size_mib, step):
        f.seek(m * mib)
        f.write(os.urandom(mib))
EOF
# The kernel: the test guest, a real ELF that passes image create's kernel checks.
build_test_guest "$WORK/vmlinux"
sync
echo "   apparent $(du -k --apparent-size "$SRC" | cut -f1) KiB, allocated $(du -k "$SRC" | cut -f1) KiB"
echo "   amivm: $AMIVM_BIN"
echo "   runs: $RUNS"

create_t=(); cp_t=(); cpsync_t=(); copy_t=(); second_t=(); growth=(); ratios=()
# baseline: `cp --sparse=always`, and again followed by `sync` of the copy.
baseline() {
    local t0 t1
    t0=$(now); cp --sparse=always "$SRC" "$WORK/copy-$run.raw"; t1=$(now)
    cp_t+=("$(echo "$t1 - $t0" | bc)")
    t0=$(now); cp --sparse=always "$SRC" "$WORK/copy-sync-$run.raw"; sync "$WORK/copy-sync-$run.raw"; t1=$(now)
    cpsync_t+=("$(echo "$t1 - $t0" | bc)")
}
# create: `amivm image create` into a new store (sets AMI).
create() {
    local t0 t1
    t0=$(now)
    AMI=$("$AMIVM_BIN" --store "$S" --account 123456789012 image create --name bench --kernel "$WORK/vmlinux" --root "$SRC")
    t1=$(now)
    create_t+=("$(echo "$t1 - $t0" | bc)")
}
for run in $(seq 1 "$RUNS"); do
    S=$WORK/store-$run
    # The baseline and image create take turns going first (odd runs: the baseline), on the
    # same warm page cache, with everything written back (sync) before each: neither is
    # always the one that runs right after the other's writeback.
    # The copies stay until the end, as the stores do: deleting 200 MiB here would have the
    # file system free (and, mounted with -o discard, trim) it while image create runs.
    if ((run % 2)); then baseline; sync; create; else create; sync; baseline; fi
    sync
    ratios+=("$(echo "${create_t[-1]} / ${cpsync_t[-1]}" | bc -l)")

    t0=$(now)
    "$AMIVM_BIN" --store "$S" --account 123456789012 image copy "$AMI" --name bench-copy >/dev/null
    t1=$(now)
    copy_t+=("$(echo "($t1 - $t0) * 1000" | bc)")

    before=$(store_kib "$S")
    t0=$(now)
    "$AMIVM_BIN" --store "$S" --account 123456789012 image create --name bench-again --kernel "$WORK/vmlinux" --root "$SRC" >/dev/null
    t1=$(now)
    second_t+=("$(echo "$t1 - $t0" | bc)")
    after=$(store_kib "$S")
    growth+=("$((after - before))")
    store_size=$after
    printf '   run %d: create %.3f s, cp %.3f s, cp+sync %.3f s, copy %.1f ms, 2nd create %.3f s, growth %d KiB\n' \
        "$run" "${create_t[-1]}" "${cp_t[-1]}" "${cpsync_t[-1]}" "${copy_t[-1]}" "${second_t[-1]}" "${growth[-1]}"
    # The stores stay until the end: deleting ~600 files here would slow the next run's file
    # creations (ext4 skips inodes deleted in the last seconds: recently_deleted()), a cost of
    # this script, not of image create.
done

m_create=$(printf '%s\n' "${create_t[@]}" | median)
m_cp=$(printf '%s\n' "${cp_t[@]}" | median)
m_cpsync=$(printf '%s\n' "${cpsync_t[@]}" | median)
m_copy=$(printf '%s\n' "${copy_t[@]}" | median)
m_second=$(printf '%s\n' "${second_t[@]}" | median)
m_growth=$(printf '%s\n' "${growth[@]}" | median)
m_ratio=$(printf '%s\n' "${ratios[@]}" | median)
echo
echo "== medians over $RUNS runs"
printf 'image create (2 GiB, %d%% data)   %8.3f s\n' "$DATA_PERCENT" "$m_create"
printf 'cp --sparse=always                %8.3f s   ratio create/cp       %.2f\n' "$m_cp" "$(echo "$m_create / $m_cp" | bc -l)"
printf 'cp --sparse=always + sync         %8.3f s   ratio create/cp+sync  %.2f (goal <= 1.0)\n' "$m_cpsync" "$(echo "$m_create / $m_cpsync" | bc -l)"
printf '  the same, median of the per-run ratios     %.2f   (each run: %s)\n' "$m_ratio" "$(printf '%.2f ' "${ratios[@]}")"
printf 'image copy                        %8.1f ms\n' "$m_copy"
printf 'second identical image create     %8.3f s   (no chunk written)\n' "$m_second"
printf 'store growth on 2nd create        %8d KiB  (store %d KiB after both)\n' "$m_growth" "$store_size"
