#!/usr/bin/env bash
# virtio-blk device-model benchmark (issue 3): the device driven in-process through a real
# virtqueue vs plain pread of the same file, from page cache. Prints medians and ratios.
# Environment: BENCH_FILE_MIB (256), BENCH_ROUNDS (7), BENCH_DIR (system temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
exec nice -n 19 cargo bench --bench blk "$@"
