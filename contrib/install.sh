#!/bin/sh
# Install versionfs and everything it needs on a Debian machine (run as root):
# the FUSE 3 runtime and headers (pyfuse3 compiles against them), a Python
# virtual environment in ./.venv with versionfs and its test dependencies
# (SeaweedFS, the S3-compatible server the tests run, comes from PyPI).
set -eu
cd "$(dirname "$0")/.."

need=""
for pkg in fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
done
if [ -n "$need" ]; then
    echo "installing Debian packages:$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test]'
echo "versionfs installed: $(pwd)/.venv/bin/versionfs"
