#!/usr/bin/env bash
# An example launch script: builds amivm if needed, makes sure the AMI exists (the sample AMI is built
# and registered on first use), runs it on an instance type in the foreground with the console
# attached, and exits with amivm's exit code (the guest's status; see `amivm run --help`).
#
# Usage: scripts/launch.sh [AMI] [--instance-type T] [-- AMIVM_RUN_ARGS...]
#   AMI                  image id or name (default: amivm-sample, built by scripts/build-sample-image.sh)
#   --instance-type T    default t3.micro (see `amivm instance-types`)
#   after --              passed to `amivm run` as they are (--timeout, --expect, --append, --detach...)
#
# Environment: AMIVM (the amivm binary; default target/release/amivm, built with cargo if missing),
# AMIVM_HOME (the image store), AMIVM_LAUNCH_TIMEOUT (the --timeout used on a host without hardware
# virtualisation when none is given; default 180 seconds).
#
# On a host whose CPU has no VT-x/AMD-V (KVM here is PVM: ordinary guests run in KVM's instruction
# emulator), a Linux guest stops early in its boot. The script says so before it starts, adds a
# --timeout so it cannot hang, and explains the exit code afterwards; the console shows how far the
# guest got.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ami=""
itype="t3.micro"
extra=()
while [ $# -gt 0 ]; do
    case $1 in
    --instance-type | -t)
        [ $# -ge 2 ] || die "$1 needs a value"
        itype=$2
        shift
        ;;
    --instance-type=*) itype=${1#*=} ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    -*) die "unknown option '$1' (options for amivm run go after --)" ;;
    *)
        [ -z "$ami" ] || die "only one AMI, got '$ami' and '$1'"
        ami=$1
        ;;
    esac
    shift
done

# amivm: $AMIVM, else a release build (made now if missing or older than the sources).
amivm=$(amivm_bin)
[ -x "$amivm" ] || command -v "$amivm" >/dev/null 2>&1 || die "amivm not found at $amivm"

if [ -z "$ami" ]; then
    ami="amivm-sample"
    if ! "$amivm" image show "$ami" >/dev/null 2>&1; then
        log "the sample AMI is not registered yet: building it (first time: ~10 min for the kernel)"
        AMIVM=$amivm "$AMIVM_ROOT/scripts/build-sample-image.sh" >/dev/null ||
            die "scripts/build-sample-image.sh failed"
    fi
fi

hw_virt=true
grep -qwE 'vmx|svm' /proc/cpuinfo || hw_virt=false
if ! $hw_virt; then
    log "note: this CPU has no VT-x/AMD-V, so KVM here runs ordinary guests in its instruction emulator"
    log "      (~1M instructions/s, and it lacks some instructions): a Linux guest gets through its early"
    log "      boot and then stops. The console below shows how far it gets."
    has_timeout=false
    has_append=false
    for a in "${extra[@]+"${extra[@]}"}"; do
        case $a in
        --timeout | --timeout=*) has_timeout=true ;;
        --append | --append=*) has_append=true ;;
        esac
    done
    $has_timeout || extra+=(--timeout "${AMIVM_LAUNCH_TIMEOUT:-180}")
    # Linux prints nothing on ttyS0 until its console driver is up (~30 s under the emulator);
    # earlyprintk shows the boot from its first line.
    # PVM shows XSAVE to every guest whatever its CPUID says, and the emulator cannot run XRSTOR:
    # noxsave gets Linux further.
    $has_append || extra+=(--append "earlyprintk=ttyS0 noxsave")
fi

log "amivm run $ami --instance-type $itype ${extra[*]+"${extra[*]}"}"
set +e
"$amivm" run "$ami" --instance-type "$itype" "${extra[@]+"${extra[@]}"}"
rc=$?
set -e
case $rc in
0) log "the guest stopped normally (exit 0)" ;;
124) log "the --timeout expired (exit 124)" ;;
125) log "amivm could not run the instance (exit 125; the error is above)" ;;
126)
    if $hw_virt; then
        log "the guest crashed (exit 126)"
    else
        log "the guest stopped where KVM's emulator could not go on (exit 126): expected on this host,"
        log "which has no hardware virtualisation. On a machine with VT-x/AMD-V (or a CI runner with"
        log "nested virtualisation) the same command boots to the AMI's init."
    fi
    ;;
130) log "stopped from the host (exit 130)" ;;
*) log "the guest reported status $rc through the exit port" ;;
esac
exit "$rc"
