#!/usr/bin/env bash
# Benchmark of `amivm serve` against moto_server (the third-party EC2 server) holding the same
# data, in the same run: DescribeImages over 10 000 images, DescribeInstances over 100 instances;
# p50/p99 latency and requests per second (tests/api/bench.py), with boto3 (end to end, its XML
# parsing included) and with a plain HTTP client (signed requests, answers not parsed: the
# server's share). Goal, judged on the HTTP client: >= 10x moto's requests/s, p99 < 50 ms.
#
# Usage: scripts/bench-api.sh   (BENCH_IMAGES, BENCH_INSTANCES, BENCH_RUNS, BENCH_MOTO_RUNS,
#                                BENCH_MOTO_SECONDS override the sizes)
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

amivm=$(amivm_bin)
venv=$("$AMIVM_ROOT/scripts/python-env.sh")
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    "$amivm" --store "$work/store" --account 111111111111 ps --output json 2>/dev/null |
        grep -o '"InstanceId": "i-[0-9a-f]*"' | cut -d'"' -f4 |
        while read -r id; do "$amivm" --store "$work/store" --account 111111111111 terminate --force "$id" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The test guest (tests/guest) as the AMI's kernel: it boots and leaves at once.
build_test_guest "$work/guest.elf"
truncate -s 8M "$work/root.raw"
a=(--store "$work/store" --account 111111111111)
ami=$("$amivm" "${a[@]}" image create --name bench-ami --kernel "$work/guest.elf" --root "$work/root.raw")
read -r key secret < <("$amivm" "${a[@]}" account create-access-key 2>/dev/null)

# The 100 instances need no network (passt each): the API is what is measured.
"$amivm" "${a[@]}" serve --listen 127.0.0.1:0 --network none >"$work/serve.out" 2>"$work/serve.log" &
pids+=($!)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/serve.out" ] && (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done

AMIVM_ENDPOINT=$(head -1 "$work/serve.out") MOTO_ENDPOINT="http://127.0.0.1:$port" AMIVM_STORE="$work/store" \
    AMIVM_AMI="$ami" AMIVM_OWNER_KEY="$key" AMIVM_OWNER_SECRET="$secret" AWS_CONFIG_FILE=/nonexistent \
    AWS_SHARED_CREDENTIALS_FILE=/nonexistent \
    "$venv/bin/python" "$AMIVM_ROOT/tests/api/bench.py"
