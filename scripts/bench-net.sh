#!/usr/bin/env bash
# virtio-net device-model benchmark (issue 10): the device driven in-process through real
# virtqueues over a socketpair backend (passt's framing) vs plain write/read of the same frames
# on a socketpair. Prints frames/s, MB/s, medians and ratios.
# Environment: BENCH_FRAMES (100000 per round), BENCH_ROUNDS (5).
set -euo pipefail
cd "$(dirname "$0")/.."
exec nice -n 19 cargo bench --bench net "$@"
