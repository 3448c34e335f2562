#!/usr/bin/env bash
# A Debian 12 (bookworm) root for the systemd tier (tests/systemd), built once and cached OUTSIDE the repo:
#   tests/systemd/build-root.sh WHEEL   -> prints the root's directory
# The root has systemd as PID 1 material (systemd, dbus), python3 and /opt/edgeproxy: a venv with WHEEL installed
# exactly as the README says (`python3 -m venv /opt/edgeproxy && /opt/edgeproxy/bin/pip install ./edgeproxy-*.whl`),
# which brings edgeproxy's dependencies from the package index. The tests reinstall the checkout's own wheel over it
# offline (--no-index --no-deps) on an overlay, so the cached root itself is never changed by a test.
# Cached by a key of this script and the dependency list of setup.cfg: changing either builds a new root.
# Needs root, debootstrap and network access to deb.debian.org and the package index (once per key).
set -euo pipefail
wheel=$(readlink -f "$1")
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${EDGEPROXY_SYSTEMD_ROOT_CACHE:-$HOME/.cache/edgeproxy/systemd-root}
deps=$(sed -n '/^install_requires =/,/^[^ ]/p' "$repo/setup.cfg" | grep '^ ' | tr -d ' ' | sort)
key=$( { cat "$0"; echo "$deps"; } | sha256sum | cut -c1-12)
dest=$cache/bookworm-$key
if [ -e "$dest/.edgeproxy-root-done" ]; then echo "$dest"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -e "$dest/.edgeproxy-root-done" ]; then echo "$dest"; exit 0; fi
tmp=$cache/.building-$key
echo "building the Debian 12 root for the systemd tests in $dest (a few minutes, once)" >&2
if [ ! -e "$tmp/.debootstrap-done" ]; then  # a build that failed later resumes from here
  rm -rf "$tmp"
  mkdir -p "$tmp"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-venv,procps,ca-certificates \
    bookworm "$tmp" http://deb.debian.org/debian >"$cache/debootstrap-$key.log" 2>&1 \
    || { echo "debootstrap failed: see $cache/debootstrap-$key.log" >&2; exit 1; }
  touch "$tmp/.debootstrap-done"
fi
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
rm -rf "$tmp/tmp/wheel" "$tmp/opt/edgeproxy"
mkdir -p "$tmp/tmp/wheel"
cp "$wheel" "$tmp/tmp/wheel/"
# The host's CA bundle for pip, for a host whose egress goes through a TLS-inspecting proxy.
cp /etc/ssl/certs/ca-certificates.crt "$tmp/tmp/wheel/host-ca.crt"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_CERT=/tmp/wheel/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    chroot "$tmp" /bin/sh -ec '
  python3 -m venv /opt/edgeproxy
  /opt/edgeproxy/bin/pip install --quiet /tmp/wheel/*.whl
  rm -rf /tmp/wheel /root/.cache
' >&2
: >"$tmp/etc/resolv.conf"
rm -f "$tmp/.debootstrap-done"
# A fixed machine id and hostname: the boot needs no first-boot setup.
echo edgehost >"$tmp/etc/hostname"
systemd-machine-id-setup --root="$tmp" >/dev/null 2>&1 || true
apt_clean=("$tmp"/var/cache/apt/archives/*.deb); rm -f "${apt_clean[@]}"
touch "$tmp/.edgeproxy-root-done"
mv "$tmp" "$dest"
echo "$dest"
