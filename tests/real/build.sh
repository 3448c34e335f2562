#!/usr/bin/env bash
# Builds the real cluster tier from Go modules at pinned versions, into a cache outside the repo:
#   kube-apiserver, kube-controller-manager, kubemark (hollow kubelet and kube-proxy) from k8s.io/kubernetes,
#   etcd (go.etcd.io/etcd/server/v3), CoreDNS (github.com/coredns/coredns, cut-down plugin set), and
#   YurtHub (github.com/openyurtio/openyurt/cmd/yurthub), the peer the benchmarks compare against.
# Rebuilt only when a pinned version or a file under tests/real/go changes (a stamp per component).
#   EDGEPROXY_K8S_VERSION   k8s.io/kubernetes release (default v1.37.2; e.g. v1.32.x selects another)
#   EDGEPROXY_REAL_CACHE    where binaries go (default ~/.cache/edgeproxy/realk8s)
# Prints the binary directory on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
K8S_VERSION="${EDGEPROXY_K8S_VERSION:-v1.37.2}"
CACHE="${EDGEPROXY_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeproxy/realk8s}"
OUT="$CACHE/$K8S_VERSION/bin"
SRC="$CACHE/$K8S_VERSION/src"
only="${1:-all}"
mkdir -p "$OUT" "$SRC"
# one build at a time per cache (several checkouts share it): a second run waits, then finds the stamps fresh
exec 9>"$CACHE/.build.lock"
flock 9
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath" CGO_ENABLED=0
command -v go >/dev/null || { echo "build.sh: the Go toolchain (go) is not on PATH" >&2; exit 2; }

stamp_of() { # the inputs that decide a component's build
  { echo "$K8S_VERSION"; go version; cat "$here/build.sh"; [ ! -d "$here/go/$1" ] || find "$here/go/$1" -type f | sort | xargs cat; } | sha256sum | cut -c1-16
}
fresh() { [ -f "$OUT/.$1.stamp" ] && [ "$(cat "$OUT/.$1.stamp")" = "$(stamp_of "$1")" ]; }
done_() { stamp_of "$1" > "$OUT/.$1.stamp"; }
log() { echo "build.sh: $*" >&2; }

build_kube() {
  fresh kube && fresh kubemark && return 0
  local staging="v0.${K8S_VERSION#v1.}" t0=$SECONDS
  log "kube-apiserver, kube-controller-manager, kubemark from k8s.io/kubernetes@$K8S_VERSION (staging $staging)"
  local d="$SRC/kube"; rm -rf "$d"; mkdir -p "$d"
  ( cd "$d"
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local kdir; kdir="$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION"
    { echo "module edgeproxy.test/realkube"
      grep -E '^go [0-9.]+$' "$kdir/go.mod" | head -1
      echo "require k8s.io/kubernetes $K8S_VERSION"
      # every staging module at the release's v0.x, as k8s.io/kubernetes itself replaces them with ./staging
      grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging/' "$kdir/go.mod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
    } > go.mod
    local ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $p.gitTreeState=clean"
    done
    # kubemark: upstream's main plus a --feature-gates flag (tests/real/go/kubemark/main.go)
    mkdir -p kubemark && cp "$here/go/kubemark/main.go" kubemark/
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "$ld" -o "$OUT/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager ./kubemark )
  done_ kube; done_ kubemark; log "kube done in $((SECONDS - t0)) s"
}

build_mod() { # a small module of ours under go/<name> with its own go.mod and main
  local name="$1"; fresh "$name" && return 0
  local t0=$SECONDS; log "$name from tests/real/go/$name"
  ( cd "$here/go/$name" && go build -ldflags "-s -w" -o "$OUT/$name" . )
  done_ "$name"; log "$name done in $((SECONDS - t0)) s"
}

case "$only" in
  all) build_mod etcd; build_kube; build_mod coredns; build_mod yurthub ;;
  kube) build_kube ;;
  *) build_mod "$only" ;;
esac
echo "$OUT"
