#!/usr/bin/env bash
# Debian packages the test suite and benchmarks use as real parts: the CNI plugins (bridge, ptp, host-local),
# iproute2 for network namespaces, systemd-analyze for unit checks, nginx as the benchmark baseline, debootstrap and
# systemd-nspawn (systemd-container) for the tier that boots the units under a real systemd (tests/systemd), dig
# (dnsutils) to ask the real tier's CoreDNS, iptables for the hollow kubelet and kube-proxy inside their namespaces.
set -euo pipefail
need=()
[ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v dig >/dev/null || need+=(dnsutils)
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "need root to apt-get install: ${need[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
