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
# - lazy boot, as issue 11 states it: the time to the guest's first console line (and to its
#   exit) of `amivm run --region` of an image whose root volume is LAZY_GIB (8) GiB (1 MiB of
#   random data every 16 MiB: 512 MiB, 1,024 chunks, as a used root file system) with nothing
#   local, against `amivm run` of the same image pulled into a local store. The guest is the
#   tests' test guest (scripts/lib/common.sh build_test_guest); it prints its first line at
#   once and reads 8 sectors of chunk 0.
#
# Environment: AMIVM_BIN (default: cargo build --release), SIZE_MIB (64), LAZY_GIB (8),
# LAZY_RUNS (15: a boot takes a tenth of a second and its time varies run to run by +-30 % here),
# LAZY_DELAY_MS (15: the lazy boot is measured again with each request held that long, as a
# remote endpoint would; 0 skips it), CATALOGUE (200 image manifests listed with `image ls
# --region` against `aws s3 cp --recursive` of them; 0 skips it),
# AMIVM_VENV (default: scripts/python-env.sh).
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

RUNS=${1:-5}
SIZE_MIB=${SIZE_MIB:-64}
LAZY_GIB=${LAZY_GIB:-8}
LAZY_RUNS=${LAZY_RUNS:-15}
LAZY_DELAY_MS=${LAZY_DELAY_MS:-15}
CATALOGUE=${CATALOGUE:-200}
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${AMIVM_BIN:-}" ]]; then
    (cd "$REPO" && cargo build --release --quiet --bin amivm)
    AMIVM_BIN=$REPO/target/release/amivm
fi
VENV=${AMIVM_VENV:-$("$REPO/scripts/python-env.sh")}
WORK=$(mktemp -d)
MOTO_PID=
PROXY_PID=
cleanup() {
    [[ -n $MOTO_PID ]] && kill "$MOTO_PID" 2>/dev/null
    [[ -n $PROXY_PID ]] && kill "$PROXY_PID" 2>/dev/null
    rm -rf "$WORK"
}
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

KERNEL=$WORK/vmlinux
build_test_guest "$KERNEL"

echo "== setup: ${SIZE_MIB} MiB of random data, moto_server at $URL, runs: $RUNS"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/root.img"
A=$WORK/host-a
AMI=$(amivm --store "$A" image create --name bench --kernel "$KERNEL" --root "$WORK/root.img")
OWNER=$(amivm --store "$A" --output json image show "$AMI" | python3 -c 'import json,sys; print(json.load(sys.stdin)["OwnerId"])')
CHUNKS=$(find "$A/chunks" -type f | wc -l)
BYTES=$(find "$A/chunks" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "   image $AMI: $CHUNKS chunks, $BYTES bytes; kernel: $KERNEL"

push_t=(); aws_up_t=(); pull_t=(); aws_down_t=(); second=()
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

# Lazy boot: one 8 GiB image in the region, pulled once into a local store for the baseline.
echo "== lazy boot: ${LAZY_GIB} GiB root volume, 1 MiB of data every 16 MiB, runs: $LAZY_RUNS"
python3 - "$WORK/big.img" "$LAZY_GIB" <<'PY'
import os, sys
mib = 1 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(int(sys.argv[2]) << 30)
    for m in range(0, int(sys.argv[2]) << 10, 16):
        f.seek(m * mib)
        f.write(os.urandom(mib))
PY
BIG=$(amivm --store "$A" image create --name big --kernel "$KERNEL" --root "$WORK/big.img")
rm -f "$WORK/big.img"
amivm --store "$A" region add lazy "s3://bench/lazy" --endpoint "$URL" --path-style >/dev/null
amivm --store "$A" image push "$BIG" --region lazy >/dev/null
LOCAL=$WORK/host-local
amivm --store "$LOCAL" region add lazy "s3://bench/lazy" --endpoint "$URL" --path-style >/dev/null
amivm --store "$LOCAL" --account "$OWNER" image pull "$BIG" --region lazy >/dev/null
VOL_GIB=$(amivm --store "$A" --output json image show "$BIG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"])')
# first_line CMD...: "SECONDS_TO_FIRST_STDOUT_LINE SECONDS_TO_EXIT FETCHED_CHUNKS" of CMD (the clock
# starts in Python just before CMD does, so the interpreter's start is not counted).
first_line() {
    python3 - "$@" <<'PY'
import re, subprocess, sys, time
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
p.stdout.readline(); t1 = time.monotonic()
p.stdout.read(); err = p.stderr.read().decode(errors="replace"); p.wait(); t2 = time.monotonic()
m = re.search(r"fetched (\d+) chunks", err)
print(f"{t1 - t0:.4f} {t2 - t0:.4f} {m.group(1) if m else '-'}")
PY
}
# lazy_boots ENDPOINT WHAT: LAZY_RUNS alternating boots, of the image local and from the
# region at ENDPOINT with nothing local; prints per-run figures, medians and ratios.
lazy_boots() {
    local endpoint=$1 what=$2 run f e n L
    lz_first=(); lz_exit=(); lo_first=(); lo_exit=(); fetched=()
    for run in $(seq 1 "$LAZY_RUNS"); do
        read -r f e _ < <(first_line "$AMIVM_BIN" --store "$LOCAL" --account "$OWNER" run "$BIG" --rm --timeout 60 --append blk=read:0:8)
        lo_first+=("$f"); lo_exit+=("$e")
        L=$WORK/host-lazy-$run
        amivm --store "$L" region add lazy "s3://bench/lazy" --endpoint "$endpoint" --path-style >/dev/null
        read -r f e n < <(first_line "$AMIVM_BIN" --store "$L" --account "$OWNER" run "$BIG" --region lazy --rm --timeout 60 --append blk=read:0:8)
        lz_first+=("$f"); lz_exit+=("$e"); fetched+=("$n")
        rm -rf "$L"
        printf '   run %d: first line local %.3f s, lazy %.3f s; exit local %.3f s, lazy %.3f s; chunks fetched %s\n' \
            "$run" "${lo_first[-1]}" "$f" "${lo_exit[-1]}" "$e" "$n"
    done
    LF=$(m "${lz_first[@]}"); OF=$(m "${lo_first[@]}"); LE=$(m "${lz_exit[@]}"); OE=$(m "${lo_exit[@]}")
    echo "   lazy boot of a ${LAZY_GIB} GiB image (${VOL_GIB} GiB volume), $what: first console line, image local: ${OF} s   from the region, nothing local: ${LF} s   ratio: $(ratio "$LF" "$OF") (goal <= 1.10)"
    echo "   the same runs to the guest's exit: local ${OE} s   from the region ${LE} s   ratio: $(ratio "$LE" "$OE"); chunks fetched per run: ${fetched[*]}"
}
lazy_boots "$URL" "moto on this host"

# The same through a proxy that holds each request LAZY_DELAY_MS before passing it on: a
# remote S3 endpoint's latency, where what a launch waits for in turn counts most.
if (( LAZY_DELAY_MS > 0 )); then
    DPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    python3 "$REPO/scripts/lib/delay-proxy.py" "$DPORT" "$PORT" "$LAZY_DELAY_MS" &
    PROXY_PID=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$DPORT") 2>/dev/null && break; sleep 0.1; done
    echo "== lazy boot again, each request to moto held ${LAZY_DELAY_MS} ms (scripts/lib/delay-proxy.py)"
    lazy_boots "http://127.0.0.1:$DPORT" "requests held ${LAZY_DELAY_MS} ms"
fi

# A catalogue: CATALOGUE copies of the big image's manifest (other ids and names) in their own
# prefix. `image ls --region` reads every manifest; the baseline is `aws s3 cp --recursive` of
# the same manifests (the AWS CLI, 10 requests at a time). Straight to moto, and through the
# proxy when there is one.
if (( CATALOGUE > 0 )); then
    echo "== catalogue: $CATALOGUE image manifests, runs: $RUNS"
    AWS_ENDPOINT=$URL "$VENV/bin/python" - "$CATALOGUE" "$BIG" <<'PY'
import json, os, sys
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
n, big = int(sys.argv[1]), sys.argv[2]
src = json.loads(s3.get_object(Bucket="bench", Key=f"lazy/images/{big}.json")["Body"].read())
for i in range(n):
    doc = dict(src, ImageId="ami-%017x" % (0x100 + i), Name="catalogue-%04d" % i)
    s3.put_object(Bucket="bench", Key=f"cat/images/{doc['ImageId']}.json", Body=json.dumps(doc).encode())
PY
    catalogue() {
        local endpoint=$1 what=$2 run t0 t1 H listed
        local ls_t=() cp_t=()
        for run in $(seq 1 "$RUNS"); do
            H=$WORK/host-cat-$run
            amivm --store "$H" region add cat "s3://bench/cat" --endpoint "$endpoint" --path-style >/dev/null
            t0=$(now); listed=$(amivm --store "$H" --account "$OWNER" image ls --region cat | tail -n +2 | wc -l); t1=$(now)
            ls_t+=("$(echo "$t1 - $t0" | bc)")
            [[ $listed == "$CATALOGUE" ]] || { echo "image ls --region listed $listed of $CATALOGUE" >&2; exit 1; }
            t0=$(now); "$VENV/bin/aws" --endpoint-url "$endpoint" s3 cp --recursive --quiet "s3://bench/cat/images/" "$H/aws/"; t1=$(now)
            cp_t+=("$(echo "$t1 - $t0" | bc)")
            rm -rf "$H"
        done
        local LS CP
        LS=$(m "${ls_t[@]}"); CP=$(m "${cp_t[@]}")
        echo "   $what: image ls --region: ${LS} s   aws s3 cp --recursive of the manifests: ${CP} s   ratio amivm/aws: $(ratio "$LS" "$CP")"
    }
    catalogue "$URL" "moto on this host"
    if [[ -n $PROXY_PID ]]; then
        catalogue "http://127.0.0.1:$DPORT" "requests held ${LAZY_DELAY_MS} ms"
    fi
fi
