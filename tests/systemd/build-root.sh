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
rm -rf "$tmp"
mkdir -p "$tmp"
echo "building the Debian 12 root for the systemd tests in $dest (a few minutes, once)" >&2
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-venv,procps,ca-certificates \
  bookworm "$tmp" http://deb.debian.org/debian >"$cache/debootstrap-$key.log" 2>&1 \
  || { echo "debootstrap failed: see $cache/debootstrap-$key.log" >&2; exit 1; }
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
mkdir -p "$tmp/tmp/wheel"
cp "$wheel" "$tmp/tmp/wheel/"
chroot "$tmp" /bin/sh -ec '
  python3 -m venv /opt/edgeproxy
  /opt/edgeproxy/bin/pip install --quiet --disable-pip-version-check /tmp/wheel/*.whl
  rm -rf /tmp/wheel /root/.cache
' >&2
: >"$tmp/etc/resolv.conf"
# A fixed machine id and hostname: the boot needs no first-boot setup.
echo edgehost >"$tmp/etc/hostname"
systemd-machine-id-setup --root="$tmp" >/dev/null 2>&1 || true
apt_clean=("$tmp"/var/cache/apt/archives/*.deb); rm -f "${apt_clean[@]}"
touch "$tmp/.edgeproxy-root-done"
mv "$tmp" "$dest"
echo "$dest"
