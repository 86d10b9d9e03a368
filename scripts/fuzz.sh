#!/usr/bin/env bash
# Run amivm's cargo-fuzz targets for a bounded time each (not part of CI).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Corpora stay in fuzz/corpus/<target>, crashes in
# fuzz/artifacts/<target>; both are git-ignored. Prints libFuzzer's final statistics per target
# and exits non-zero if a target found a crash. The bundle_import seed is exported by the
# release amivm binary (cargo build --release first; AMIVM_BIN names another).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(blk_request mmio_registers qcow2 bundle_import net_frame imds_frames imds_http)
fi
# The targets' scratch files (the blk disk, bundle_import's store) on tmpfs where there is one:
# their syncs would otherwise cost more than the code being fuzzed (12x for bundle_import).
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2; exit 2; }
status=0
if command -v python3 >/dev/null && { [ -z "$(ls -A corpus/blk_request 2>/dev/null)" ] ||
    [ -z "$(ls -A corpus/qcow2 2>/dev/null)" ] || [ -z "$(ls -A corpus/bundle_import 2>/dev/null)" ]; }; then
    python3 make_seeds.py
fi
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${secs}s"
    log="$(mktemp)"
    if nice -n 19 cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        echo "   no crash"
    else
        echo "   FAILED: see fuzz/artifacts/$t" >&2
        status=1
    fi
    grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)|^#[0-9]+ +DONE|SUMMARY|panicked" "$log" || tail -20 "$log"
    rm -f "$log"
done
exit $status
