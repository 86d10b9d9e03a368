#!/usr/bin/env bash
# Runs a test script inside the sample AMI and exits with its status: a CI smoke test.
#
# Usage: scripts/smoke.sh TEST_SCRIPT [--instance-type T] [--timeout SECS] [--keep-image]
#   TEST_SCRIPT        a shell script (or static binary) to run in the guest as /etc/amivm/smoke.d/50-NAME
#   --instance-type T  default t3.micro
#   --timeout SECS     stop the instance after SECS (exit 124); default 300
#   --keep-image       keep the baked image (default: deregistered, with its snapshots, at the end)
#
# What it does: takes the sample AMI's kernel and rootfs (scripts/build-sample-image.sh --no-register:
# cached builds, or AMIVM_SAMPLE_VMLINUX / AMIVM_SAMPLE_ROOTFS), copies the rootfs with the test script
# added, registers that as an image (`amivm image create`: only chunks that differ from images already
# in the store are stored), and runs it with `amivm run --rm`. The sample's init runs the script, then
# reports its status through the exit port, so this script's exit code is the test's:
#   0 pass, 1-123 the test's own failure status, 124 timeout, 125 amivm failed, 126 the guest crashed.
#
# Environment: AMIVM (default target/release/amivm, built if missing), AMIVM_HOME (the image store).
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

test_script=""
itype="t3.micro"
timeout=300
keep=false
while [ $# -gt 0 ]; do
    case $1 in
    --instance-type | -t)
        [ $# -ge 2 ] || die "$1 needs a value"
        itype=$2
        shift
        ;;
    --timeout)
        [ $# -ge 2 ] || die "--timeout needs a value"
        timeout=$2
        shift
        ;;
    --keep-image) keep=true ;;
    -h | --help)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    -*) die "unknown option '$1'" ;;
    *)
        [ -z "$test_script" ] || die "only one TEST_SCRIPT, got '$test_script' and '$1'"
        test_script=$1
        ;;
    esac
    shift
done
[ -n "$test_script" ] || die "usage: $0 TEST_SCRIPT [--instance-type T] [--timeout SECS] [--keep-image]"
if [ ! -f "$test_script" ] || [ ! -r "$test_script" ]; then
    die "$test_script is not a readable file"
fi

amivm=$(amivm_bin)

# The sample's kernel, rootfs and command line (built once, then cached).
sample_env=$("$AMIVM_ROOT/scripts/build-sample-image.sh" --no-register) ||
    die "scripts/build-sample-image.sh --no-register failed"
eval "$sample_env"
[ -f "${AMIVM_SAMPLE_VMLINUX:-}" ] || die "no sample kernel (AMIVM_SAMPLE_VMLINUX)"
[ -d "${AMIVM_SAMPLE_ROOTFS:-}" ] || die "no sample rootfs (AMIVM_SAMPLE_ROOTFS)"

work=$(mktemp -d "${TMPDIR:-/tmp}/amivm-smoke.XXXXXX")
name="amivm-smoke-$(date -u +%Y%m%dT%H%M%S)-$$"
registered=false
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if $registered && ! $keep; then
        "$amivm" image rm "$name" --delete-snapshots >/dev/null 2>&1 ||
            log "warning: could not deregister $name"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Bake the test into a copy of the rootfs.
mkdir "$work/rootfs"
cp -a "$AMIVM_SAMPLE_ROOTFS/." "$work/rootfs/"
base=$(basename "$test_script")
mkdir -p "$work/rootfs/etc/amivm/smoke.d"
install -m 0755 "$test_script" "$work/rootfs/etc/amivm/smoke.d/50-${base}"

t0=$(now_ms)
ami=$("$amivm" image create --name "$name" --kernel "$AMIVM_SAMPLE_VMLINUX" --root "$work/rootfs" \
    --cmdline "$AMIVM_SAMPLE_CMDLINE" --description "smoke test $base on the amivm sample AMI" \
    --tag "amivm-smoke=$base") || die "amivm image create failed"
registered=true
log "baked $base into $name ($ami) in $(since "$t0")"

if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    log "note: this CPU has no VT-x/AMD-V: KVM runs the guest in its instruction emulator, where Linux"
    log "      stops early in its boot (exit 126). A runner with hardware KVM runs the test itself."
fi

t0=$(now_ms)
set +e
"$amivm" run "$ami" --instance-type "$itype" --timeout "$timeout" --rm
rc=$?
set -e
case $rc in
0) log "PASS: $base (exit 0, $(since "$t0"))" ;;
124) log "FAIL: $base: timeout after ${timeout} s (exit 124)" ;;
125) log "FAIL: amivm could not run the instance (exit 125)" ;;
126) log "FAIL: the guest crashed before or while running $base (exit 126)" ;;
*) log "FAIL: $base exited with status $rc" ;;
esac
exit "$rc"
