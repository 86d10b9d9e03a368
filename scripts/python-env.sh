#!/usr/bin/env bash
# Prints the path of a Python virtual environment holding the pinned clients and servers of
# scripts/requirements.txt (boto3, awscli v1, moto[server]) that the API tests (tests/api_*.rs) use,
# creating it on first use under .cache/venv/<key>, where the key hashes the requirements file and
# the Python version: a changed pin or interpreter makes a new one, and the old ones are removed.
#
# Usage: scripts/python-env.sh          (progress on stderr, the venv's path on stdout)
#   .ci/run exports it as AMIVM_VENV; the tests use $AMIVM_VENV/bin/python and $AMIVM_VENV/bin/aws.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

REQUIREMENTS=$AMIVM_ROOT/scripts/requirements.txt
PYTHON=${AMIVM_PYTHON:-python3}

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (apt-get install python3 python3-venv)"
py_version=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
key=$( { sha256sum <"$REQUIREMENTS"; echo "$py_version"; } | sha256sum | cut -c1-16)
root=$AMIVM_CACHE/venv
venv=$root/$key
mkdir -p "$root"

# One builder at a time (test binaries may call this concurrently).
exec 9>"$root/.lock"
flock 9
if [ ! -e "$venv/.complete" ]; then
    rm -rf "$venv"
    start=$(now_ms)
    log "creating $venv (Python $py_version, $(grep -cv '^#' "$REQUIREMENTS") pinned packages)"
    "$PYTHON" -m venv "$venv" >&2 || die "python3 -m venv failed (apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS" >&2 ||
        die "pip install -r $REQUIREMENTS failed"
    touch "$venv/.complete"
    log "ready in $(since "$start")"
    for old in "$root"/*/; do
        [ "${old%/}" = "$venv" ] || rm -rf "${old%/}"
    done
fi
echo "$venv"
