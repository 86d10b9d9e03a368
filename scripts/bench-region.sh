#!/usr/bin/env bash
# Benchmark of regions (issue 11). Not a timed test: it prints figures, medians and ratios
# against baselines measured in the same run, on the same moto_server.
#
#   scripts/bench-region.sh [RUNS]          (default 5 runs; medians are reported)
#
# - `amivm image push` of an image whose root volume is SIZE_MIB of random data (every chunk
#   uploaded), against `aws s3 cp --recursive` (awscli v1) of the same chunk files;
# - `amivm image pull` of it into an empty store, against `aws s3 cp --recursive` back;
# - a second push of the unchanged image (chunks uploaded: must be 0);
# - lazy boot: `amivm run --region` of the test guest (it reads 8 sectors) from an empty
#   store, against `amivm run` of the same image already local (needs the test guest that
#   `cargo test --release` builds under target/tmp/amivm-guest; skipped without it).
#
# Environment: AMIVM_BIN (default: cargo build --release), SIZE_MIB (64), AMIVM_VENV (default:
# scripts/python-env.sh).
set -euo pipefail

RUNS=${1:-5}
SIZE_MIB=${SIZE_MIB:-64}
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${AMIVM_BIN:-}" ]]; then
    (cd "$REPO" && cargo build --release --quiet --bin amivm)
    AMIVM_BIN=$REPO/target/release/amivm
fi
VENV=${AMIVM_VENV:-$("$REPO/scripts/python-env.sh")}
WORK=$(mktemp -d)
MOTO_PID=
cleanup() { [[ -n $MOTO_PID ]] && kill "$MOTO_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
unset AMIVM_HOME AMIVM_ACCOUNT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
aws() { "$VENV/bin/aws" --endpoint-url "$URL" "$@"; }
aws s3 mb s3://bench >/dev/null

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
amivm() { "$AMIVM_BIN" "$@"; }

GUEST=$(ls -t "$REPO"/target/tmp/amivm-guest/guest-*.elf 2>/dev/null | head -1 || true)
KERNEL=$GUEST
if [[ -z $KERNEL ]]; then
    # The smallest ELF `image create` accepts (as tests/store_common's kernel()).
    KERNEL=$WORK/vmlinux
    python3 - "$KERNEL" <<'PY'
import struct, sys
LEN, AT = 64 + 4096, 0x100000
h = bytearray(64); h[:4] = b"\x7fELF"; h[4] = 2; h[5] = 1; h[6] = 1
h[16:18] = struct.pack("<H", 2); h[18:20] = struct.pack("<H", 62)
h[24:32] = struct.pack("<Q", AT + 120); h[32:40] = struct.pack("<Q", 64)
h[52:54] = struct.pack("<H", 64); h[54:56] = struct.pack("<H", 56); h[56:58] = struct.pack("<H", 1)
ph = bytearray(56); ph[:4] = struct.pack("<I", 1)
ph[24:32] = struct.pack("<Q", AT); ph[32:40] = struct.pack("<Q", LEN); ph[40:48] = struct.pack("<Q", LEN)
open(sys.argv[1], "wb").write(bytes(h + ph + b"\x90" * (4096 - 56)))
PY
fi

echo "== setup: ${SIZE_MIB} MiB of random data, moto_server at $URL, runs: $RUNS"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/root.img"
A=$WORK/host-a
AMI=$(amivm --store "$A" image create --name bench --kernel "$KERNEL" --root "$WORK/root.img")
OWNER=$(amivm --store "$A" --output json image show "$AMI" | python3 -c 'import json,sys; print(json.load(sys.stdin)["OwnerId"])')
CHUNKS=$(find "$A/chunks" -type f | wc -l)
BYTES=$(find "$A/chunks" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "   image $AMI: $CHUNKS chunks, $BYTES bytes; kernel: $KERNEL"

push_t=(); aws_up_t=(); pull_t=(); aws_down_t=(); second=(); lazy_t=(); local_t=(); fetched=()
for run in $(seq 1 "$RUNS"); do
    # Baseline: the same chunk files, uploaded by the AWS CLI.
    t0=$(now); aws s3 cp --recursive --quiet "$A/chunks" "s3://bench/aws-$run/"; t1=$(now)
    aws_up_t+=("$(echo "$t1 - $t0" | bc)")
    amivm --store "$A" region add "p$run" "s3://bench/p$run" --endpoint "$URL" --path-style >/dev/null
    t0=$(now); amivm --store "$A" image push "$AMI" --region "p$run" >/dev/null; t1=$(now)
    push_t+=("$(echo "$t1 - $t0" | bc)")
    second+=("$(amivm --store "$A" --output json image push "$AMI" --region "p$run" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ChunksUploaded"])')")
    t0=$(now); aws s3 cp --recursive --quiet "s3://bench/aws-$run/" "$WORK/down-$run/"; t1=$(now)
    aws_down_t+=("$(echo "$t1 - $t0" | bc)")
    rm -rf "$WORK/down-$run"
    B=$WORK/host-b-$run
    amivm --store "$B" region add "p$run" "s3://bench/p$run" --endpoint "$URL" --path-style >/dev/null
    t0=$(now); amivm --store "$B" --account "$OWNER" image pull "$AMI" --region "p$run" >/dev/null; t1=$(now)
    pull_t+=("$(echo "$t1 - $t0" | bc)")
    if [[ -n $GUEST ]]; then
        t0=$(now); amivm --store "$B" --account "$OWNER" run "$AMI" --rm --timeout 60 --append blk=read:0:8 >/dev/null 2>&1; t1=$(now)
        local_t+=("$(echo "$t1 - $t0" | bc)")
        L=$WORK/host-l-$run
        amivm --store "$L" region add "p$run" "s3://bench/p$run" --endpoint "$URL" --path-style >/dev/null
        t0=$(now)
        n=$(amivm --store "$L" --account "$OWNER" run "$AMI" --region "p$run" --rm --timeout 60 --append blk=read:0:8 2>&1 >/dev/null | sed -n 's/.*fetched \([0-9]*\) chunks.*/\1/p')
        t1=$(now)
        lazy_t+=("$(echo "$t1 - $t0" | bc)")
        fetched+=("${n:-?}")
        rm -rf "$L"
    fi
    rm -rf "$B"
done

m() { printf '%s\n' "$@" | median; }
mib() { awk -v b="$BYTES" -v t="$1" 'BEGIN { printf "%.1f MiB/s", b / 1048576 / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
P=$(m "${push_t[@]}"); AU=$(m "${aws_up_t[@]}"); L=$(m "${pull_t[@]}"); AD=$(m "${aws_down_t[@]}")
echo "== results (medians of $RUNS)"
echo "   push  amivm: ${P} s ($(mib "$P"))   aws s3 cp: ${AU} s ($(mib "$AU"))   throughput ratio amivm/aws: $(ratio "$AU" "$P") (goal >= 0.8)"
echo "   pull  amivm: ${L} s ($(mib "$L"))   aws s3 cp: ${AD} s ($(mib "$AD"))   throughput ratio amivm/aws: $(ratio "$AD" "$L") (goal >= 0.8)"
echo "   second push: chunks uploaded per run: ${second[*]} (goal: 0)"
if [[ -n $GUEST ]]; then
    LZ=$(m "${lazy_t[@]}"); LO=$(m "${local_t[@]}")
    echo "   run to exit, image local: ${LO} s   from the region, nothing local: ${LZ} s   ratio: $(ratio "$LZ" "$LO") (goal <= 1.10); chunks fetched per run: ${fetched[*]} of $CHUNKS"
else
    echo "   lazy boot: skipped (no test guest under target/tmp/amivm-guest: run cargo test --release --test region_lazy first)"
fi
